"""Evaluation stages, tables, external folders and the HTML report on the small demo."""

import base64
import csv
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation.evaluate import read_summary
from pipeline.evaluation.metrics import PSNR_MAX, sample_frames
from pipeline.evaluation.protocols import PROTOCOLS, metric_names
from pipeline.stores import open_store
from tests.conftest import SMALL_DEMO, snakemake

N_TEST_CLIPS = SMALL_DEMO["n_test_segments"] * SMALL_DEMO["segment_duration_s"] // 2
SYSTEMS = ("videos", "fused", "no_keyframe", "no_blurry")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("system", SYSTEMS)
def test_every_system_has_every_metric_per_clip(workspace, system):
    directory = workspace / "results/subject1/evaluation" / system
    store = open_store(directory / "metrics.zarr", stage="evaluate_videos")
    summary = read_summary(directory)
    # every protocol's column; an ablation's, the main protocol's (Table 2)
    scored = ["neuroclips"] if system.startswith("no_") else list(PROTOCOLS)
    assert list(summary) == metric_names(scored, [2, 50])
    assert len(_rows(directory / "clips.csv")) == N_TEST_CLIPS
    for metric, row in summary.items():
        values = store[metric][:]
        assert len(values) == N_TEST_CLIPS and np.isfinite(values).all()
        assert row["mean"] == pytest.approx(values.mean())
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
        if metric.endswith("way"):  # the peers' ±: the mean of the per-sample binomial sds
            assert row["field_pm"] == pytest.approx(store[f"binomial_sd_{metric}"][:].mean())
        else:
            assert row["field_pm"] == pytest.approx(row["std"])
    assert summary["neuroclips.video_50way"]["chance"] == pytest.approx(3 / 52)
    protocols = store.attrs["protocols"]
    assert list(protocols) == scored
    if system.startswith("no_"):
        return
    assert protocols["neurons"]["frame_indices"] == sample_frames(16, 6, "neurons").tolist()
    assert protocols["mindeye2"]["size"] == [425, 425]
    assert protocols["mind_animator"]["clip_gate"].startswith("skipped")


def test_matched_clips_beat_the_shuffled_pairing(workspace):
    """The videos follow the fMRI: scored against the clip's own ground truth they beat the
    same videos scored against other clips' (the control).

    The N-way controls sit above the protocol's chance 3/(n+2): the classifier favours a few
    classes for every clip, and the distractors are drawn uniformly. Hence the control.
    """
    summary = read_summary(workspace / "results/subject1/evaluation/videos")
    metrics = ("video_2way", "video_50way", "frame_2way", "frame_50way", "ssim_rgb_uniform")
    for metric in (*metrics, "ssim_gray_gaussian", "psnr"):
        row = summary[f"neuroclips.{metric}"]
        assert row["mean"] > row["control_mean"], metric
    for metric in ("neurons.ssim_gray_columns", "mindeye2.ssim_gray_gaussian"):
        assert summary[metric]["mean"] > summary[metric]["control_mean"], metric


def test_retrieval_beats_chance_and_its_control_does_not(workspace):
    summary = read_summary(workspace / "results/subject1/evaluation/retrieval")
    assert list(summary) == metric_names(list(PROTOCOLS), [], retrieval=True)
    for metric, row in summary.items():
        # the demo has fewer clips than 300: one part, and every subset holds them all
        assert row["chance"] == pytest.approx(1 / N_TEST_CLIPS), metric
        assert row["mean"] > 3 * row["chance"], row
        assert row["control_mean"] < 3 * row["chance"], row


def test_ablations_switch_their_guidance_off(workspace):
    full = open_store(workspace / "results/subject1/videos/frames.zarr")
    for name, switches in {
        "no_keyframe": {"use_keyframe": False, "use_caption": False},
        "no_blurry": {"use_blurry": False},
    }.items():
        store = open_store(workspace / f"results/subject1/ablations/{name}/videos/frames.zarr")
        settings = store.attrs["settings"]
        assert {k: settings[k] for k in switches} == switches
        assert {k: v for k, v in settings.items() if k not in switches} == {
            k: v for k, v in full.attrs["settings"].items() if k not in switches
        }
        assert not np.array_equal(store["videos"][0], full["videos"][0])
        if not settings["use_caption"]:  # γ off: the uncaptioned prompt, not the caption
            prompt = settings["uncaptioned_prompt"] + settings["prompt_suffix"]
            assert set(store["prompts"][:].tolist()) == {prompt}


def test_tables_in_the_papers_layout(workspace):
    tables = workspace / "results/evaluation"
    table1 = _rows(tables / "table1.csv")
    assert [(r["system"], r["subject"]) for r in table1] == [
        ("NeuroClips (this run)", "subject1"),
        ("NeuroClips + fusion (this run)", "subject1"),
    ]
    videos = read_summary(workspace / "results/subject1/evaluation/videos")
    ssim = "neuroclips.ssim_rgb_uniform"
    assert float(table1[0][ssim]) == pytest.approx(videos[ssim]["mean"])
    two_way = "neuroclips.video_2way"
    assert float(table1[0][f"{two_way}_pm"]) == pytest.approx(videos[two_way]["field_pm"])
    assert [r["system"] for r in _rows(tables / "table2.csv")] == [
        "full model",
        "no_blurry",
        "no_keyframe",
    ]
    markdown = (tables / "table1.md").read_text()
    heading = "| system | subject | video 2-way [neuroclips] | video 50-way [neuroclips] | "
    assert heading + "CLIP-pcc [neuroclips] | frame 2-way [neuroclips]" in markdown
    assert "NeuroClips (published) | average | 0.834" in markdown
    assert "binomial sd" in markdown  # which ± is which
    assert len(_rows(tables / "retrieval.csv")) == 1
    assert '"fwd" is fMRI retrieval' in (tables / "retrieval.md").read_text()
    # the ablations in the main protocol's columns only
    rows = {r["system"]: r for r in _rows(tables / "protocols.csv")}
    assert rows["no_blurry"]["neuroclips.psnr"] and not rows["no_blurry"]["mindvideo.psnr"]
    assert rows["NeuroClips (this run)"]["mindvideo.psnr"]
    protocols = (tables / "protocols.md").read_text()
    for name, protocol in PROTOCOLS.items():
        if protocol.video_metrics([2]):
            assert f"## {name}\n\nReproduces {protocol.reproduces}" in protocols
    # paired tests between the systems of one subject, on the same clips
    pairs = _rows(tables / "comparisons.csv")
    systems = {(r["system_a"], r["system_b"]) for r in pairs}
    assert ("NeuroClips (this run)", "no_keyframe") in systems
    assert {r["metric"] for r in pairs} == set(metric_names(list(PROTOCOLS), [2, 50]))
    for row in pairs:
        assert 0 < float(row["p_bootstrap"]) <= 1 and 0 <= float(row["p_wilcoxon"]) <= 1


def _side_by_side_gifs(folder, left, right):
    folder.mkdir(parents=True)
    for i, (a, b) in enumerate(zip(left, right, strict=True)):
        frames = [
            Image.fromarray(np.concatenate([x, y], axis=1)) for x, y in zip(a, b, strict=True)
        ]
        frames[0].save(folder / f"{i}.gif", save_all=True, append_images=frames[1:], loop=0)


def test_external_side_by_side_gifs_are_scored_with_our_code(workspace):
    """GIFs written here: ground truth | ground truth scores the maximum; ground truth | our
    video scores what the videos' own evaluation gave, up to the GIF's colour quantisation."""
    videos = open_store(workspace / "results/subject1/videos/frames.zarr")
    n = 12
    gt = np.stack(
        [
            open_store(workspace / f"results/frames/{s}.zarr")["frames"][int(c)]
            for s, c in zip(videos["segment"][:n], videos["clip"][:n], strict=True)
        ]
    )
    pred = videos["videos"][:n][:, sample_frames(16, 6, "neurons")]
    external = workspace / "external"
    shutil.rmtree(external, ignore_errors=True)
    _side_by_side_gifs(external / "self", gt, gt)
    _side_by_side_gifs(external / "ours", gt, pred)
    folders = {name: {"path": str(external / name)} for name in ("self", "ours")}
    targets = [f"results/external/{name}/evaluation" for name in folders]
    snakemake(workspace, *targets, overlay={"evaluation": {"external": folders}})

    self_scores = read_summary(workspace / "results/external/self/evaluation")
    assert self_scores["neuroclips.ssim_rgb_uniform"]["mean"] == pytest.approx(1.0)
    assert self_scores["neurons.ssim_gray_columns"]["mean"] == pytest.approx(1.0)
    assert self_scores["mindeye2.ssim_gray_gaussian"]["mean"] == pytest.approx(1.0)
    assert self_scores["mindvideo.psnr"]["mean"] == PSNR_MAX
    assert self_scores["mind_animator.epe"]["mean"] == 0.0
    for metric in ("video_2way", "video_50way", "frame_2way", "frame_50way"):
        assert self_scores[f"neuroclips.{metric}"]["mean"] == 1.0, metric

    ours = open_store(workspace / "results/external/ours/evaluation/metrics.zarr")
    reference = open_store(workspace / "results/subject1/evaluation/videos/metrics.zarr")
    # as many frames as the ground truth; no grid border in these files
    assert ours.attrs["protocols"]["neuroclips"]["frame_indices"] == list(range(6))
    assert ours.attrs["source"]["border"] == 0
    for metric in ("ssim_rgb_uniform", "ssim_gray_gaussian"):
        metric = f"neuroclips.{metric}"
        assert np.abs(ours[metric][:] - reference[metric][:n]).max() < 0.05, metric
    assert np.abs(ours["neuroclips.psnr"][:] - reference["neuroclips.psnr"][:n]).max() < 1.0


def test_a_bad_external_folder_fails_with_its_name_and_writes_nothing(workspace):
    folder = workspace / "external/odd"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    frame = np.zeros((2, 8, 9, 3), dtype=np.uint8)
    frames = [Image.fromarray(f) for f in frame]
    frames[0].save(folder / "x.gif", save_all=True, append_images=frames[1:])
    overlay = {"evaluation": {"external": {"odd": {"path": str(folder)}}}}
    result = snakemake(workspace, "results/external/odd/evaluation", overlay=overlay, check=False)
    assert result.returncode != 0
    log = (workspace / "logs/evaluate_external/odd.log").read_text()
    assert "x.gif: width 9 does not split into 2 equal panels" in log
    assert not (workspace / "results/external/odd/evaluation").exists()


def test_report_is_self_contained(workspace):
    report = workspace / "results/report/index.html"
    text = report.read_text()
    sources = re.findall(r'src="([^"]+)"', text)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert "<table" in text and "Table 2: ablations" in text and "use_blurry" in text
    gifs = [s for s in sources if s.startswith("data:image/gif")]
    assert len(gifs) >= 1
    with Image.open(io.BytesIO(base64.b64decode(gifs[0].split(",", 1)[1]))) as grid:
        assert grid.n_frames == 16  # the video's frames; ground truth and blurry in step
        assert grid.size == (4 * 128, 128)
    for name in ("selection.png", "training.png", "metrics.png", "grid.gif"):
        assert (workspace / "results/report/figures" / name).stat().st_size > 1000
    methods = (workspace / "results/report/methods.md").read_text()
    assert "**Voxel selection.**" in methods and "<strong>Voxel selection.</strong>" in text


PROBE = """<script>
for (const [name, selector] of [["table", "table.metrics"], ["grid", "img.grid"]]) {
  const r = document.querySelector(selector).getBoundingClientRect();
  console.log("PROBE " + JSON.stringify({name, x: r.x, y: r.y, w: r.width, h: r.height}));
}
</script>"""


def _chromium(url, screenshot, width=1400, height=2600):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make test installs it with apt-get)")
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        f"--window-size={width},{height}",
        f"--screenshot={screenshot}",
        url,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert screenshot.exists(), result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def test_report_opens_in_headless_chromium(workspace, tmp_path):
    report = workspace / "results/report/index.html"
    # the page with a probe that reports where the first table and grid are drawn
    probe = report.with_name("probe.html")
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    try:
        lines = _chromium(probe.as_uri(), tmp_path / "probe.png")
    finally:
        probe.unlink()
    boxes = {}
    for line in lines:
        match = re.search(r'PROBE (\{.*?\})"', line)
        if match:
            box = json.loads(match[1].replace('\\"', '"'))
            boxes[box["name"]] = box
    assert set(boxes) == {"table", "grid"}, lines
    # the results come before the long sections, on the first screens of the page
    assert max(b["y"] + b["h"] for b in boxes.values()) < 2600, boxes
    console = _chromium(report.as_uri(), tmp_path / "report.png")
    assert console == [], console
    shot = np.asarray(Image.open(tmp_path / "report.png").convert("RGB")).astype(int)
    for name, box in boxes.items():
        assert box["w"] > 50 and box["h"] > 20 and box["y"] + box["h"] <= shot.shape[0], box
        x, y = int(box["x"]), int(box["y"])
        region = shot[y : y + int(box["h"]), x : x + int(box["w"])]
        non_white = (region.min(axis=-1) < 200).mean()
        assert non_white > (0.02 if name == "table" else 0.3), (name, non_white)
        assert region.std() > 10, name


def test_snakemake_report_registers_the_figures(workspace, tmp_path):
    out = tmp_path / "snakemake-report.zip"
    result = snakemake(workspace, "--report", str(out), check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    import zipfile

    names = zipfile.ZipFile(out).namelist()
    for figure in ("selection.png", "training.png", "metrics.png", "grid.gif"):
        assert any(n.endswith(figure) for n in names), (figure, names[:20])


def test_models_are_loaded_once_per_stage(workspace, monkeypatch, tmp_path):
    """Eight clips in batches of two: each classifier and CLIP is loaded once, the
    protocols' two openai CLIPs once each."""
    import torch

    from pipeline.config import default_config
    from pipeline.evaluation import evaluate as evaluation
    from pipeline.models import classifiers, loading

    calls = []
    for module, name in (
        (classifiers, "load_image_classifier"),
        (classifiers, "load_video_classifier"),
        (classifiers, "load_clip_vision"),
        (loading, "load_clip"),
    ):
        original = getattr(module, name)
        monkeypatch.setattr(
            module,
            name,
            lambda *a, _f=original, _n=name, **k: calls.append((_n, str(a[0]))) or _f(*a, **k),
        )
    data = evaluation.pipeline_reconstructions(
        workspace / "results/subject1/videos", workspace / "results/frames"
    )
    subset = evaluation.Reconstructions(
        data.names[:8], data.predictions[:8], data.ground_truth[:8], data.source
    )
    settings = default_config()["evaluation"] | {"batch_size": 2}
    evaluation.evaluate(
        subset,
        tmp_path / "evaluation",
        classifiers=workspace / "resources/models/tiny-classifiers",
        clip=workspace / "resources/models/tiny/clip",
        settings=settings,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    assert len(calls) == len(set(calls))  # no model twice
    assert sorted(n for n, _ in calls) == [
        "load_clip",
        "load_clip_vision",
        "load_clip_vision",
        "load_image_classifier",
        "load_video_classifier",
    ]
    rows = _rows(tmp_path / "evaluation/clips.csv")
    assert [r["clip"] for r in rows] == data.names[:8]


def test_separate_files_are_matched_to_our_ground_truth(workspace, tmp_path):
    from pipeline.errors import DataError
    from pipeline.evaluation.evaluate import external_reconstructions

    frames = open_store(workspace / "results/frames/test2.zarr")["frames"]
    for clip in (3, 11):
        video = [Image.fromarray(f) for f in frames[clip][::-1]]
        video[0].save(
            tmp_path / f"test2_clip{clip:03d}.gif", save_all=True, append_images=video[1:]
        )
    data = external_reconstructions(
        tmp_path, layout="separate", frames_dir=workspace / "results/frames"
    )
    assert data.names == ["test2_clip003", "test2_clip011"]
    assert np.array_equal(data.ground_truth[1], frames[11])
    assert np.abs(data.predictions[1].astype(int) - frames[11][::-1]).mean() < 3
    (tmp_path / "test2_clip999.gif").write_bytes((tmp_path / "test2_clip003.gif").read_bytes())
    with pytest.raises(DataError, match="clip 999 of 'test2' does not exist"):
        external_reconstructions(
            tmp_path, layout="separate", frames_dir=workspace / "results/frames"
        )
