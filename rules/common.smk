"""Dataset discovery at DAG time, wildcard constraints and input functions."""

import json

from snakemake.logging import logger

from pipeline.datasets import discover
from pipeline.demo import DemoSettings, expected_dataset
from pipeline.errors import ConfigError
from pipeline.workflow import ConfigValues
from pipeline.models.presets import MODEL_THREADS as PRESET_THREADS, model_device

DATASET_CONFIG = config["dataset"]

if uses_demo(config):
    # the demo files do not exist before demo_dataset has run, so the layout comes from its settings
    DEMO = DemoSettings.from_config(config)
    DATASET = expected_dataset(DEMO, DATASET_CONFIG["root"])
    if DATASET_CONFIG["subjects"]:
        unknown = set(DATASET_CONFIG["subjects"]) - set(DATASET.subjects)
        if unknown:
            raise ConfigError(
                f"config key 'dataset.subjects': {sorted(unknown)} not in the demo "
                f"(demo.n_subjects = {DEMO.n_subjects})"
            )
        DATASET = DATASET.with_subjects(DATASET_CONFIG["subjects"])
else:
    from pipeline.frames import check_frame_rate

    DATASET = discover(DATASET_CONFIG, cache=".snakemake/neuroclips")
    # frames.fps against the stimuli's frame rate (the demo's is checked with the config);
    # one header read, so a bad rate stops the run here rather than in every frames job
    check_frame_rate(
        DATASET.stimulus_files()[0],
        config["frames"]["fps"],
        config["alignment"]["clip_s"],
    )

for message in DATASET.warnings:
    logger.warning(f"dataset: {message}")

SUBJECTS = DATASET.subjects
SEGMENTS = DATASET.segment_names


wildcard_constraints:
    subject="|".join(SUBJECTS),
    segment="|".join(SEGMENTS),


def config_values(section, *keys):
    """The config values a rule's stage depends on, as a ``{key: value}`` dict for ``params``.

    Snakemake compares a job's params with the recorded ones as a *set of values*, so
    two scalar params swapping equal values would go unnoticed; a dict per config
    section keeps the key names in the record and makes every change visible. The stores
    record them too, as ``section.key`` (pipeline.workflow.ConfigValues).
    """
    return ConfigValues(section, {key: config[section][key] for key in keys})


def fmri_runs(wildcards):
    """Every CIFTI run file of one subject."""
    return [str(p) for p in DATASET.run_files(wildcards.subject)]


def first_fmri_run(wildcards):
    """One CIFTI run of a subject: its brain model places the grayordinates."""
    return fmri_runs(wildcards)[0]


def stimulus_videos(wildcards):
    """Every stimulus video (the preprocessing reads their durations)."""
    return [str(p) for p in DATASET.stimulus_files()]


def stimulus_video(wildcards):
    """The stimulus video of one segment."""
    return str(DATASET.stimulus(wildcards.segment))


def segment_window(wildcards):
    """Where a segment lies in its stimulus (the rule's input), as JSON: the fields of
    pipeline.datasets.Segment.to_dict but the file."""
    window = DATASET.segments[wildcards.segment].to_dict()
    del window["stimulus"]
    return json.dumps(window, separators=(",", ":"))


def subject_plan(wildcards):
    """What the subject's runs present and when, as JSON (pipeline.datasets.Dataset.plan)."""
    return json.dumps(DATASET.plan(wildcards.subject), separators=(",", ":"))


def demo_files():
    """Every raw file the demo rule writes."""
    return [str(p) for p in DATASET.stimulus_files()] + [
        str(p) for subject in SUBJECTS for p in DATASET.run_files(subject)
    ]


def demo_settings_json():
    """The resolved demo settings, the demo rule's single parameter."""
    return DEMO.to_json()


#: selection keys each method reads (the shift and the TR too, for encoding)
SELECTION_KEYS = {
    "repetition_ttest": ("alpha", "alternative"),
    "roi": ("roi_areas",),
    "encoding": ("alpha", "permutations", "correction", "ridge_alpha", "folds", "seed"),
}


def selection_settings():
    """The configured selection method and the keys it reads, as JSON: changing a key
    another method reads reruns nothing."""
    method = config["selection"]["method"]
    settings = {"method": method}
    settings |= {k: config["selection"][k] for k in SELECTION_KEYS[method]}
    if method == "encoding":
        settings |= {
            "shift_s": config["alignment"]["shift_s"],
            "tr_s": DATASET_CONFIG["tr_s"],
        }
    return json.dumps(settings, sort_keys=True)


def selection_inputs(wildcards):
    """The preprocessed store, and what the selection method reads beside it."""
    from pipeline.selection import SELECTION_METHODS

    inputs = {"preprocessed": f"results/{wildcards.subject}/preprocessed.zarr"}
    needs = SELECTION_METHODS[config["selection"]["method"]].inputs
    if "frames" in needs:
        inputs["frames"] = training_frame_stores(wildcards)
    if "run" in needs:
        inputs["run"] = first_fmri_run(wildcards)
    return inputs


def selection_arguments(wildcards, input):
    """The select options naming the inputs of :func:`selection_inputs`."""
    import shlex

    args = []
    if "frames" in input.keys():
        args += ["--frames", *map(shlex.quote, input.frames)]
    if "run" in input.keys():
        args += ["--run", shlex.quote(str(input.run))]
    return " ".join(args)


def aligned_stores(wildcards):
    return expand("results/{subject}/aligned.zarr", subject=SUBJECTS)


def frame_stores(wildcards):
    """Frame stores of every segment, training then test: the sample order of the caches."""
    return expand("results/frames/{segment}.zarr", segment=SEGMENTS)


MODELS_CONFIG = config["models"]
MODEL_DEVICE = model_device(MODELS_CONFIG)
MODEL_THREADS = PRESET_THREADS[MODELS_CONFIG["preset"]]


def precision(family):
    """``{family: dtype}`` of one stage family (``precision`` section, nulls from the preset)."""
    from pipeline.models.presets import precision_settings

    return {family: precision_settings(config)[family]}


def preset_dir():
    """Directory of the configured model preset (written by tiny_models or download_models)."""
    return f"{MODELS_CONFIG['root']}/{MODELS_CONFIG['preset']}"


def training_frame_stores(wildcards):
    """Frame stores of the training segments (what the tiny VAE is fitted on)."""
    return expand("results/frames/{segment}.zarr", segment=DATASET.train_segments)


def cache_stores(wildcards):
    return [
        "results/cache/vae_latents.zarr",
        "results/cache/clip_images.zarr",
        "results/cache/captions.zarr",
        "results/cache/clip_text.zarr",
    ]


def reconstructor_json(name):
    """Effective training settings of a reconstructor (preset sizes + config) as JSON.

    Inference-only keys (the prior's sampling) are left out, so changing them
    reruns the prediction rule only; so is the checkpoint interval, a resource, as it
    never changes the trained model.
    """
    import json

    from pipeline.models.presets import INFERENCE_KEYS, RUN_KEYS, reconstructor_settings

    settings = reconstructor_settings(config, name)
    training = {k: v for k, v in settings.items() if k not in INFERENCE_KEYS + RUN_KEYS}
    return json.dumps(training, sort_keys=True)


def embedding_stores(wildcards):
    return expand("results/{subject}/semantic/embeddings.zarr", subject=SUBJECTS)


def blurry_stores(wildcards):
    return expand("results/{subject}/perception/blurry.zarr", subject=SUBJECTS)


def generation_dir():
    """The preset's generation models (tiny_generation_models or download_generation_models)."""
    return f"{MODELS_CONFIG['root']}/{MODELS_CONFIG['preset']}-generation"


def generation_json(section, *keys):
    """Effective ``keyframes`` / ``video`` settings (nulls resolved from the preset) as JSON,
    restricted to ``keys`` when given: a rule's params hold exactly what its stage reads.
    """
    import json

    from pipeline.models.presets import generation_settings

    settings = generation_settings(config, section)
    settings = {k: v for k, v in settings.items() if k in keys} if keys else settings
    settings.pop("batch_size", None)  # how clips are batched never changes a result
    return json.dumps(settings, sort_keys=True)


#: keyframes settings each stage reads (the candidates belong to the caches)
EMBEDDER_KEYS = ("generator", "frame", "embedder_alphas")
KEYFRAME_KEYS = (
    "generator",
    "steps",
    "guidance_scale",
    "strength",
    "noise_level",
    "seed",
)


def keyframe_generator():
    from pipeline.models.presets import generation_settings

    return generation_settings(config, "keyframes")["generator"]


#: every input a keyframe generator can be conditioned on (registry's CONDITIONING_INPUTS)
CONDITION_PATHS = {
    "embedder": "results/{subject}/keyframes/embedder",
    "aligned": "results/{subject}/aligned.zarr",
    "semantic": "results/{subject}/semantic/embeddings.zarr",
}


def keyframe_conditions(wildcards):
    """What the configured generator is conditioned on, by its registry entry: the
    fitted embedder + the aligned fMRI, or the SR's prior output."""
    from pipeline.generation.registry import keyframe_generator as generator_entry

    inputs = generator_entry(keyframe_generator()).inputs
    return {k: CONDITION_PATHS[k].format(subject=wildcards.subject) for k in inputs}


def condition_arguments(wildcards, input):
    """The generate-keyframes options naming the inputs of :func:`keyframe_conditions`."""
    import shlex

    keys = [k for k in CONDITION_PATHS if k in input.keys()]
    return " ".join(f"--{k} {shlex.quote(str(input[k]))}" for k in keys)


def captions_json():
    """The BLIP-2 generation settings (``captions`` section) as JSON."""
    import json

    return json.dumps(config["captions"], sort_keys=True)


def video_dirs(wildcards):
    return expand("results/{subject}/videos", subject=SUBJECTS)


def classifier_dir():
    """The preset's classifiers (tiny_classifiers or download_classifiers)."""
    return f"{MODELS_CONFIG['root']}/{MODELS_CONFIG['preset']}-classifiers"


#: fusion settings each stage reads
FUSION_TRAINING_KEYS = (
    "label_top_k",
    "validation_fraction",
    "hidden",
    "dropout",
    "epochs",
    "lr",
    "weight_decay",
    "batch_size",
    "seed",
)


def fusion_json():
    """The fusion classifier's training settings as JSON."""
    import json

    return json.dumps(
        {k: config["fusion"][k] for k in FUSION_TRAINING_KEYS}, sort_keys=True
    )


def fused_dirs(wildcards):
    return expand("results/{subject}/fused", subject=SUBJECTS)


def interpretation_dirs(wildcards):
    return expand("results/{subject}/interpretation", subject=SUBJECTS)


EVALUATION_CONFIG = config["evaluation"]
#: evaluation settings the metric stages read (batch size is passed outside params)
EVALUATION_KEYS = (
    "protocols",
    "vifi_clip",
    "n_way",
    "trials",
    "frame_sampling",
    "size",
    "bootstrap_resamples",
    "seed",
)
RETRIEVAL_KEYS = ("protocols", "retrieval_pool", "bootstrap_resamples", "seed")
# an entry set to null is switched off (a --configfile overlay cannot delete a key)
ABLATIONS = sorted(
    k for k, v in EVALUATION_CONFIG["ablations"].items() if v is not None
)
ABLATION_SUBJECTS = EVALUATION_CONFIG["ablation_subjects"] or SUBJECTS[:1]
unknown = set(ABLATION_SUBJECTS) - set(SUBJECTS)
if unknown:
    raise ConfigError(
        f"config key 'evaluation.ablation_subjects': {sorted(unknown)} not among the "
        f"subjects {SUBJECTS}"
    )
EXTERNAL = EVALUATION_CONFIG["external"]


def output_parent(wildcards, output):
    """The folder holding the rule's first output: a prefix derived from the output, not
    written twice (and so right without a shared filesystem)."""
    return os.path.dirname(output[0])


def dataset_root_of(wildcards, output):
    """The dataset root: the folder holding the demo's ground_truth.zarr output."""
    return os.path.dirname(output.ground_truth)


def external_folder(wildcards):
    """The ``evaluation.external`` entry (path, layout, panels) of a named folder."""
    return EXTERNAL[wildcards.name]


def evaluation_json(*keys):
    """The ``evaluation`` settings a stage reads, as JSON."""
    import json

    return json.dumps({k: EVALUATION_CONFIG[k] for k in keys}, sort_keys=True)


def video_evaluation_json(wildcards):
    """The ``evaluation`` settings of one system's video evaluation, as JSON: an ablation
    variant is scored under evaluation.ablation_protocols (null: the main protocol)."""
    from pipeline.evaluation.protocols import ablation_protocols

    settings = {k: EVALUATION_CONFIG[k] for k in EVALUATION_KEYS}
    if wildcards.system in ABLATIONS:
        settings["protocols"] = ablation_protocols(EVALUATION_CONFIG)
    return json.dumps(settings, sort_keys=True)


def ablation_json(wildcards):
    """The effective video settings of one ablation: the full model's with its overrides."""
    import json

    from pipeline.models.presets import generation_settings

    settings = generation_settings(config, "video")
    settings.pop("batch_size", None)
    settings |= EVALUATION_CONFIG["ablations"][wildcards.ablation]
    return json.dumps(settings, sort_keys=True)


def test_frame_stores(wildcards):
    """Frame stores of the test segments (the ground truth of the evaluation)."""
    return expand("results/frames/{segment}.zarr", segment=DATASET.test_segments)


def evaluated_videos(wildcards):
    """The videos directory an evaluation system name stands for."""
    if wildcards.system in ("videos", "fused"):
        return f"results/{wildcards.subject}/{wildcards.system}"
    return f"results/{wildcards.subject}/ablations/{wildcards.system}/videos"


def external_inputs(wildcards):
    """The external folder, plus our test frames when its files are scored against them."""
    folder = EXTERNAL[wildcards.name]
    inputs = {"folder": folder["path"]}
    if folder["layout"] == "separate":
        inputs["frames"] = test_frame_stores(wildcards)
    return inputs


def _protocol_kinds():
    """Whether the chosen protocols score videos, and whether any has retrieval."""
    from pipeline.evaluation.protocols import protocols

    chosen = protocols(EVALUATION_CONFIG["protocols"])
    videos = any(p.video_metrics(EVALUATION_CONFIG["n_way"]) for p in chosen)
    return videos, any(p.retrieval for p in chosen)


SCORES_VIDEOS, SCORES_RETRIEVAL = _protocol_kinds()


def vifi_clip_input(wildcards):
    """ViFi-CLIP's weights, where evaluation.vifi_clip names them (the CLIP-pcc gate)."""
    return EVALUATION_CONFIG["vifi_clip"] or []


def evaluation_dirs(wildcards=None):
    """Every evaluation of the tables: per subject videos, fused and retrieval; ablations
    (what the chosen protocols score)."""
    systems = ["videos", "fused"] if SCORES_VIDEOS else []
    systems += ["retrieval"] if SCORES_RETRIEVAL else []
    dirs = expand(
        "results/{subject}/evaluation/{system}", subject=SUBJECTS, system=systems
    )
    if SCORES_VIDEOS:
        dirs += expand(
            "results/{subject}/evaluation/{system}",
            subject=ABLATION_SUBJECTS,
            system=ABLATIONS,
        )
    return dirs


def report_inputs(wildcards):
    """What the HTML report shows, per subject."""
    per_subject = {
        "selection": "results/{subject}/selection.zarr",
        "perception": "results/{subject}/perception/model",
        "semantic": "results/{subject}/semantic/model",
        "blurry": "results/{subject}/perception/blurry.zarr",
        "keyframes": "results/{subject}/keyframes/keyframes.zarr",
        "videos": "results/{subject}/videos",
        "interpretation": "results/{subject}/interpretation",
    }
    inputs = {k: expand(v, subject=SUBJECTS) for k, v in per_subject.items()}
    return inputs | {
        "tables": "results/evaluation",
        "evaluations": evaluation_dirs(),
        "fusion": "results/fusion/classifier",
        "frames": test_frame_stores(wildcards),
    }


#: keys that never change a result (how work is batched, where it runs): left out of the
#: configuration the report shows, so that changing them reruns nothing
NO_RESULT_KEYS = (
    ("models", "batch_size"),
    ("models", "device"),
    ("keyframes", "batch_size"),
    ("video", "batch_size"),
    ("evaluation", "batch_size"),
)


def report_config_json(wildcards):
    """The configuration shown in the report, without :data:`NO_RESULT_KEYS`."""
    shown = {section: dict(values) for section, values in config.items()}
    for section, key in NO_RESULT_KEYS:
        shown[section].pop(key, None)
    return json.dumps(shown, sort_keys=True)
