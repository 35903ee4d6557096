"""The methods text: written from the provenance of the stores and trained models that
exist, with their values, models and references, and nothing about stages that did not
run. Every expectation is derived from what the test writes into the stores."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import zarr

from pipeline import stores
from pipeline.evaluation.methods import (
    MODELS,
    PACKAGE_REFERENCES,
    REFERENCES,
    STAGES,
    methods_html,
    methods_text,
)
from pipeline.evaluation.protocols import PROTOCOLS
from pipeline.generation.registry import KEYFRAME_GENERATORS
from pipeline.models.presets import CLASSIFIERS, GENERATION, PRESETS
from tests.conftest import rule_blocks

SUBJECTS = ["subject1", "subject2"]
#: what the selection stores of the two subjects hold
SELECTED = {"subject1": (1234, 5000), "subject2": (2345, 5000)}
TRAIN = ["seg1", "seg2", "seg3"]
TEST = ["test1"]


def write_store(path, stage, params, inputs=(), attrs=None, arrays=None):
    """A store as a stage writes it: atomically, sealed, with its provenance record."""
    with stores.atomic_output(path) as tmp:
        group = zarr.open_group(tmp, mode="w")
        for name, data in (arrays or {"mask": np.ones(4, bool)}).items():
            dims = [f"dim{i}" for i in range(np.ndim(data))]
            stores.create_array(group, name, data=data, dims=dims)
        group.attrs.update((attrs or {}) | {"provenance": stores.provenance(stage, params, inputs)})
    return path


def write_model_folder(path, stage, settings, attrs):
    """A trained model's folder: its config.json with the provenance record, as
    pipeline.reconstructors.outputs.write_model_dir writes it."""
    with stores.atomic_output(path) as tmp:
        tmp.mkdir(parents=True)
        record = attrs | {"stage": stage, "settings": settings}
        record["provenance"] = stores.provenance(stage, settings)
        (tmp / "config.json").write_text(json.dumps(record))
    return path


def hub_model(folder, source):
    """A downloaded role folder with the ``source.json`` the download rules write
    (pipeline.models.download.layout_role)."""
    folder.mkdir(parents=True)
    record = {
        "repo": source.repo,
        "repo_type": source.repo_type,
        "revision": source.revision or "main",
        "commit": source.revision,
        "patterns": list(source.files),
        "files": list(source.files),
    }
    (folder / stores.MODEL_SOURCE).write_text(json.dumps(record))
    return folder


def selection(results, subject, alpha, counts=None):
    n_selected, n_tested = counts or SELECTED[subject]
    params = {"alpha": alpha, "alternative": "two-sided", "train_segments": TRAIN}
    attrs = {"n_selected": n_selected, "n_tested": n_tested, "segments": TRAIN, "alpha": alpha}
    return write_store(results / subject / "selection.zarr", "select_voxels", params, (), attrs)


def alignment(results, subject, shift_s, tr_s=2.0):
    params = {"shift_s": shift_s, "tr_s": tr_s, "train_segments": TRAIN, "test_segments": TEST}
    attrs = {"shift_s": shift_s, "shift_volumes": round(shift_s / tr_s), "tr_s": tr_s}
    return write_store(results / subject / "aligned.zarr", "align", params, (), attrs)


#: the perception settings the model folders record (a few of reconstructor_settings')
PERCEPTION = {
    "epochs": 7,
    "batch_size": 12,
    "lr": 0.002,
    "weight_decay": 0.01,
    "grad_clip": 1.0,
    "pct_start": 0.1,
    "seed": 3,
    "tau": 0.2,
    "contrastive_weight": 0.01,
    "mixup_fraction": 0.0,
    "mixup_beta": 0.4,
    "precision": "float32",
    "architecture": {"extension_width": 64, "extension_blocks": 0, "hidden": 256, "blocks": 0},
}


@pytest.fixture
def run(tmp_path):
    """Outputs of four stages: voxel selection and alignment of two subjects, VAE latents
    from a downloaded VAE, and one subject's trained Perception Reconstructor."""
    results = tmp_path / "results"
    for subject in SUBJECTS:
        selection(results, subject, alpha=0.01)
        alignment(results, subject, shift_s=6.0)
    vae = hub_model(tmp_path / "models/paper/vae", PRESETS["paper"]["vae"])
    write_store(
        results / "cache/vae_latents.zarr",
        "cache_vae",
        {"model": str(vae), "dtype": "torch.float32", "scaling_factor": 0.18215},
        [str(vae)],
        arrays={"latents": np.zeros((1, 6, 4, 8, 8), np.float16)},
    )
    architecture = PERCEPTION["architecture"] | {"n_frames": 6, "latent_shape": [4, 8, 8]}
    write_model_folder(
        results / "subject1/perception/model",
        "train_perception",
        PERCEPTION,
        {"architecture": architecture, "n_parameters": 54321},
    )
    return results


def paragraph(text: str, title: str) -> str:
    """The paragraph led by ``**title.**`` (empty: none)."""
    found = [p for p in text.split("\n\n") if p.startswith(f"**{title}.**")]
    assert len(found) <= 1
    return found[0] if found else ""


def test_each_stage_that_ran_is_described_with_its_values(run):
    text = methods_text(run, SUBJECTS)
    voxels = paragraph(text, STAGES["select_voxels"].title)
    assert "α = 0.01" in voxels and f"{len(TRAIN)} training segments" in voxels
    for subject, (n_selected, n_tested) in SELECTED.items():
        assert f"{n_selected:,} of {n_tested:,} tested vertices for {subject}" in voxels
    shift = paragraph(text, STAGES["align"].title)
    assert "6 s later (3 volumes)" in shift and "clip of 2 s" in shift
    assert f"({len(TRAIN)} segments)" in shift and f"({len(TEST)} segment)" in shift
    latents = paragraph(text, STAGES["cache_vae"].title)
    source = PRESETS["paper"]["vae"]
    assert source.repo in latents and f"commit {source.revision}" in latents
    assert MODELS[source.repo].name in latents and "scaling factor 0.18215" in latents
    assert "4 × 8 × 8 per frame" in latents
    training = paragraph(text, STAGES["train_perception"].title)
    for value in ("7 epochs", "batch size 12", "learning rate 0.002", "seed 3", "54,321"):
        assert value in training
    assert "0 residual blocks" in training
    # the pipeline's order, each part under its heading
    order = [text.index(f"**{STAGES[s].title}.**") for s in ("select_voxels", "align")]
    assert order == sorted(order)
    assert text.index("### fMRI data") < order[0] < text.index("### Stimuli")
    assert text.index("### Stimuli") < text.index("### Perception Reconstructor")


def test_a_stage_without_a_store_is_not_mentioned(run):
    text = methods_text(run, SUBJECTS)
    for stage in ("preprocess", "extract_frames", "cache_captions", "synthesize_videos"):
        assert f"**{STAGES[stage].title}.**" not in text, stage
    for section in ("### Semantic Reconstructor", "### Video reconstruction", "### Evaluation"):
        assert section not in text
    for key in ("blip2", "animatediff", "sparsectrl", "mindeye2", "ssim"):
        assert REFERENCES[key] not in text, key
    # the control: once its store exists, the stage is there
    write_store(
        run / "subject1/preprocessed.zarr",
        "preprocess",
        {"tr_s": 2.0, "trailing_volumes": 4, "max_leading_volumes": 3, "detrend_order": 4},
    )
    assert "**Preprocessing.**" in methods_text(run, SUBJECTS)


def test_a_changed_param_changes_the_text(run):
    before = methods_text(run, SUBJECTS)
    for subject in SUBJECTS:
        selection(run, subject, alpha=0.002, counts=(77, 5000))
    alignment(run, "subject2", shift_s=8.0)
    after = methods_text(run, SUBJECTS)
    assert after != before
    voxels = paragraph(after, STAGES["select_voxels"].title)
    assert "α = 0.002" in voxels and "α = 0.01" not in voxels
    assert "77 of 5,000 tested vertices for subject1" in voxels
    shift = paragraph(after, STAGES["align"].title)
    # the subjects now differ: each value with its subject
    assert "6 s (subject1) and 8 s (subject2) later" in shift
    assert "(3 volumes (subject1) and 4 volumes (subject2))" in shift


def test_outputs_of_other_subjects_and_foreign_folders_are_ignored(run):
    selection(run, "subject9", alpha=0.3, counts=(999, 5000))
    (run / "subject1/notes").mkdir()
    (run / "subject1/notes/config.json").write_text(json.dumps({"stage": "train_semantic"}))
    text = methods_text(run, SUBJECTS)
    assert "subject9" not in text and "999 of" not in text and "0.3" not in text
    assert "### Semantic Reconstructor" not in text


def test_references_are_listed_once_each_and_numbered_by_first_citation(run):
    text = methods_text(run, SUBJECTS)
    body, references = text.split("### References")
    entries = re.findall(r"^(\d+)\. (.+)$", references, re.M)
    assert [int(n) for n, _ in entries] == list(range(1, len(entries) + 1))
    listed = [citation for _, citation in entries]
    assert len(set(listed)) == len(listed) and set(listed) <= set(REFERENCES.values())
    for citation in REFERENCES.values():
        assert text.count(citation) == (citation in listed)
    cited = [int(n) for group in re.findall(r"\[([\d, ]+)\]", body) for n in group.split(",")]
    assert set(cited) == set(range(1, len(entries) + 1))
    first = list(dict.fromkeys(cited))
    assert first == sorted(first)
    # the papers of what ran: the method, the selection's, the VAE's, the workflow's
    for key in ("neuroclips", "wen2018", "ldm", "snakemake", "adamw", "infonce"):
        assert REFERENCES[key] in listed, key


def test_a_model_without_a_hub_source_is_named_as_the_pipelines(tmp_path):
    results = tmp_path / "results"
    vae = tmp_path / "models/tiny/vae"
    vae.mkdir(parents=True)
    write_store(
        results / "cache/vae_latents.zarr",
        "cache_vae",
        {"model": str(vae), "dtype": "torch.float32", "scaling_factor": 0.5},
        [str(vae)],
    )
    latents = paragraph(methods_text(results, SUBJECTS), STAGES["cache_vae"].title)
    assert str(vae) in latents and "no hub source recorded" in latents
    assert "Hugging Face" not in latents and "[" in latents  # the family's paper is cited


def test_no_outputs_give_an_empty_section(tmp_path):
    text = methods_text(tmp_path / "results", SUBJECTS)
    assert text.startswith("## Methods") and "No stage" in text and "**" not in text
    assert re.search(r"^\d+\. ", text, re.M) is None


def test_the_registries_agree_with_the_workflow_the_presets_and_the_protocols():
    rules = set(rule_blocks())
    assert set(STAGES) <= rules, set(STAGES) - rules
    repos = {
        source.repo
        for registry in (PRESETS, GENERATION, CLASSIFIERS)
        for preset in registry.values()
        for source in preset.values()
        if source.repo is not None
    }
    assert repos <= set(MODELS), repos - set(MODELS)
    keys = [k for m in MODELS.values() for k in m.references]
    keys += list(PROTOCOLS)  # each protocol cites its system's paper under its own name
    keys += [*PACKAGE_REFERENCES.values()]
    keys += [k for g in KEYFRAME_GENERATORS.values() for k in g.references]
    keys += [k for g in KEYFRAME_GENERATORS.values() if g.sampler for k in g.sampler[1]]
    assert set(keys) <= set(REFERENCES), set(keys) - set(REFERENCES)


def test_methods_html_renders_what_the_text_uses():
    markdown = (
        "## Methods\n\n**Voxels.** Kept at p < α, *not* \\*starred\\*; a <b>tag</b>.\n"
        "Second line.\n\n### References\n\n1. *Nature* 1.\n2. Two."
    )
    rendered = methods_html(markdown)
    assert rendered.splitlines() == [
        "<h2>Methods</h2>",
        "<p><strong>Voxels.</strong> Kept at p &lt; α, <em>not</em> *starred*; a "
        "&lt;b&gt;tag&lt;/b&gt;. Second line.</p>",
        "<h3>References</h3>",
        '<ol><li value="1"><em>Nature</em> 1.</li><li value="2">Two.</li></ol>',
    ]
