"""Inference: keyframes (beta), their captions (gamma) and the videos (alpha + beta + gamma)."""


localrules:
    download_generation_models,


rule tiny_generation_models:
    """Tiny unCLIP and AnimateDiff/SparseCtrl models in hub layouts, decoding with the tiny VAE;
    their UNets fitted to the training frames."""
    input:
        encoders=f"{MODELS_CONFIG['root']}/tiny",
        frames=training_frame_stores,
    output:
        directory(f"{MODELS_CONFIG['root']}/tiny-generation"),
    log:
        "logs/tiny_generation_models/tiny_generation_models.log",
    benchmark:
        "benchmarks/tiny_generation_models/tiny_generation_models.tsv"
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    params:
        models=config_values("models", "tiny_seed", "tiny_generation_steps"),
    shell:
        "python -m pipeline tiny-generation-models --output {output:q}"
        " --encoders {input.encoders:q} --frames {input.frames:q}"
        " --seed {params.models[tiny_seed]} --steps {params.models[tiny_generation_steps]}"
        " > {log:q} 2>&1"


rule download_generation_models:
    """Fetch the paper preset's video models and the configured keyframe generator's (network)."""
    output:
        directory(f"{MODELS_CONFIG['root']}/paper-generation"),
    log:
        "logs/download_generation_models/download_generation_models.log",
    conda:
        "../envs/models.yaml"
    params:
        root=output_parent,
        generator=keyframe_generator(),
    shell:
        "python -m pipeline download-models --set generation --preset paper"
        " --generator {params.generator} --root {params.root:q} > {log:q} 2>&1"


rule fit_keyframe_embedder:
    """Ridge fMRI -> the unCLIP generator's image embedding, fitted on the training clips."""
    input:
        aligned="results/{subject}/aligned.zarr",
        frames=training_frame_stores,
        models=generation_dir(),
    output:
        directory("results/{subject}/keyframes/embedder"),
    log:
        "logs/fit_keyframe_embedder/{subject}.log",
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
    params:
        settings=generation_json("keyframes", *EMBEDDER_KEYS),
        frames_dir="results/frames",
        precision=precision("keyframes"),
    shell:
        "python -m pipeline fit-keyframe-embedder --aligned {input.aligned:q}"
        " --frames-dir {params.frames_dir:q} --generation {input.models:q} --output {output:q}"
        " --settings {params.settings:q} --device {resources.device}"
        " --dtype {params.precision[keyframes]} > {log:q} 2>&1"


rule generate_keyframes:
    """One keyframe per test clip from its fMRI, started from the first blurry frame."""
    input:
        unpack(keyframe_conditions),
        blurry="results/{subject}/perception/blurry.zarr",
        models=generation_dir(),
    output:
        directory("results/{subject}/keyframes/keyframes.zarr"),
    log:
        "logs/generate_keyframes/{subject}.log",
    benchmark:
        "benchmarks/generate_keyframes/{subject}.tsv"
    conda:
        "../envs/keyframes.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
        batch_size=config["keyframes"]["batch_size"],
    params:
        settings=generation_json("keyframes", *KEYFRAME_KEYS),
        conditions=condition_arguments,
        precision=precision("keyframes"),
    shell:
        "python -m pipeline generate-keyframes --blurry {input.blurry:q}"
        " --generation {input.models:q} --output {output:q} {params.conditions}"
        " --settings {params.settings:q} --batch-size {resources.batch_size}"
        " --device {resources.device}"
        " --dtype {params.precision[keyframes]} > {log:q} 2>&1"


rule caption_keyframes:
    """BLIP-2 caption of every generated keyframe (the prompt of the video model)."""
    input:
        keyframes="results/{subject}/keyframes/keyframes.zarr",
        models=preset_dir(),
    output:
        directory("results/{subject}/keyframes/captions.zarr"),
    log:
        "logs/caption_keyframes/{subject}.log",
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
        batch_size=config["models"]["batch_size"],
    params:
        captions=captions_json(),
        precision=precision("keyframes"),
    shell:
        "python -m pipeline caption-keyframes --keyframes {input.keyframes:q}"
        " --captioner {input.models:q}/captioner --output {output:q}"
        " --settings {params.captions:q} --batch-size {resources.batch_size}"
        " --device {resources.device} --dtype {params.precision[keyframes]} > {log:q} 2>&1"


rule synthesize_videos:
    """AnimateDiff + SparseCtrl: one mp4 per test clip and frames.zarr (the main target)."""
    input:
        blurry="results/{subject}/perception/blurry.zarr",
        keyframes="results/{subject}/keyframes/keyframes.zarr",
        captions="results/{subject}/keyframes/captions.zarr",
        models=generation_dir(),
    output:
        directory("results/{subject}/videos"),
    log:
        "logs/synthesize_videos/{subject}.log",
    benchmark:
        "benchmarks/synthesize_videos/{subject}.tsv"
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
        batch_size=config["video"]["batch_size"],
    params:
        settings=generation_json("video"),
        precision=precision("videos"),
    shell:
        "python -m pipeline synthesize-videos --blurry {input.blurry:q}"
        " --keyframes {input.keyframes:q} --captions {input.captions:q}"
        " --generation {input.models:q} --output {output:q} --settings {params.settings:q}"
        " --batch-size {resources.batch_size} --device {resources.device}"
        " --dtype {params.precision[videos]} > {log:q} 2>&1"
