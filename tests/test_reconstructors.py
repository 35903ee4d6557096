"""Perception and Semantic Reconstructors: parts, losses, training, and decoding on the demo."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from skimage.metrics import structural_similarity

from pipeline.evaluation.metrics import retrieval_top1
from pipeline.models.presets import RECONSTRUCTORS, reconstructor_settings
from pipeline.reconstructors.layers import (
    bimixco_loss,
    info_nce,
    mix_like,
    mix_samples,
    soft_clip_loss,
)
from pipeline.reconstructors.perception import PerceptionConfig, PerceptionReconstructor
from pipeline.reconstructors.semantic import SemanticConfig, SemanticReconstructor
from pipeline.reconstructors.stages import predict_perception, train_perception, train_semantic
from pipeline.reconstructors.training import TrainSettings, one_cycle, train
from pipeline.stores import open_store
from tests.conftest import small_config

# ---------------------------------------------------------------- losses and metrics


def test_contrastive_losses_prefer_true_pairs():
    torch.manual_seed(0)
    target = torch.randn(16, 8, 4)
    noisy = target + 0.1 * torch.randn_like(target)
    shuffled = noisy[torch.randperm(16)]
    for loss in (lambda p, t: info_nce(p, t, 0.1), lambda p, t: soft_clip_loss(p, t, 0.1)):
        assert loss(noisy, target) < loss(shuffled, target)


def test_mixco_without_mixing_is_info_nce():
    torch.manual_seed(0)
    pred, target = torch.randn(8, 5), torch.randn(8, 5)
    none = torch.zeros(8, dtype=torch.bool)
    plain = bimixco_loss(pred, target, 0.1, torch.randperm(8), torch.rand(8), none)
    assert torch.allclose(plain, info_nce(pred, target, 0.1))
    mixed = bimixco_loss(pred, target, 0.1, torch.randperm(8), torch.rand(8), ~none)
    assert not torch.allclose(mixed, plain)


def test_mixup_mixes_inputs_and_targets_with_the_same_partners_and_weights():
    torch.manual_seed(0)
    x = torch.randn(10, 7)
    target = torch.randn(10, 3, 2)
    mixed, perm, betas, select = mix_samples(x, torch.distributions.Beta(0.4, 0.4), 0.5)
    assert select.any() and not select.all()
    assert torch.equal(mixed[~select], x[~select])
    i = int(torch.nonzero(select)[0])
    assert torch.allclose(mixed[i], betas[i] * x[i] + (1 - betas[i]) * x[perm[i]])
    mixed_target = mix_like(target, perm, betas, select)
    expected = betas[i] * target[i] + (1 - betas[i]) * target[perm[i]]
    assert torch.allclose(mixed_target[i], expected)
    assert torch.equal(mixed_target[~select], target[~select])


def test_training_retrieval_takes_tensors_and_sits_at_chance_for_noise():
    """The reconstructors score their test set with the evaluation's retrieval."""
    torch.manual_seed(0)
    x = torch.randn(400, 32, requires_grad=True)
    forward, backward, part = retrieval_top1(x, x.detach().to(torch.bfloat16))
    assert forward.all() and backward.all() and set(part) == {200}  # two parts of 200
    forward, backward, _ = retrieval_top1(torch.randn(400, 32), x)
    assert forward.mean() < 5 / 200 and backward.mean() < 5 / 200


# ---------------------------------------------------------------- architectures


def _perception(**overrides) -> PerceptionReconstructor:
    settings = reconstructor_settings(small_config(), "perception")["architecture"]
    config = PerceptionConfig(
        n_voxels=50, n_frames=6, latent_shape=(4, 8, 8), **(settings | overrides)
    )
    torch.manual_seed(0)
    return PerceptionReconstructor(config).eval()


def test_perception_shapes_and_one_clip_temporal_span():
    model = _perception(dropout=0.0)
    fmri = torch.randn(3, 50)
    out = model(fmri)
    assert out.shape == (3, 6, 4, 8, 8)
    # temporal attention spans the frames of one clip: other clips of the batch
    # (in training and in inference alike) do not change a clip's output
    changed = fmri.clone()
    changed[1:] = torch.randn(2, 50)
    with torch.no_grad():
        assert torch.allclose(model(changed)[0], out[0], atol=1e-5)
        assert torch.allclose(model(fmri[:1])[0], out[0], atol=1e-5)
    # ... while the frames within a clip see each other once eta leaves 1
    for stage in model.stages:
        stage.eta.data.fill_(0.5)
    assert not torch.allclose(model(fmri)[:, 0], model(fmri)[:, 1])


def test_perception_rejects_latent_size_not_divisible():
    with pytest.raises(ValueError, match="upsamplings"):
        PerceptionConfig(n_voxels=10, n_frames=6, latent_shape=(4, 6, 6), upsamplings=2)


def test_semantic_prior_samples_tokens():
    arch = reconstructor_settings(small_config(), "semantic")["architecture"]
    config = SemanticConfig(
        n_voxels=40, n_tokens=16, width=8, text_dim=4, **(arch | {"prior_heads": 2})
    )
    torch.manual_seed(0)
    model = SemanticReconstructor(config).eval()
    tokens, embedding = model.backbone(torch.randn(5, 40))
    assert tokens.shape == embedding.shape == (5, 16, 8)
    loss, pred = model.prior_loss(embedding, torch.randn(5, 16, 8))
    assert pred.shape == (5, 16, 8) and loss.ndim == 0
    a = model.sample(embedding, steps=4, generator=torch.Generator().manual_seed(1))
    b = model.sample(embedding, steps=4, generator=torch.Generator().manual_seed(1))
    assert a.shape == (5, 16, 8) and torch.equal(a, b)


# ---------------------------------------------------------------- training loop


def _toy_problem():
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    y = x @ torch.randn(6, 3)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Dropout(0.1), torch.nn.Linear(16, 3)
    )
    return model, x, y


def _toy_train(tmp_path, stop=None, every=1, crash_in=None, precision="float32", seen=None):
    model, x, y = _toy_problem()

    def load(batch, epoch):
        return x[batch], y[batch]

    def step(data, epoch):
        if seen is not None:
            seen.add((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return {"loss": torch.nn.functional.mse_loss(model(data[0]).float(), data[1])}

    def evaluate(epoch):
        if epoch + 1 == crash_in:
            raise KeyboardInterrupt  # the job is killed during this epoch
        return {"test_mse": float(torch.nn.functional.mse_loss(model(x), y))}

    settings = TrainSettings(epochs=6, batch_size=8, lr=1e-2, seed=3, precision=precision)
    rows = train(
        model,
        load,
        step,
        len(x),
        settings,
        checkpoint_dir=tmp_path,
        identity={"toy": 1},
        evaluate=evaluate,
        stop_after_epoch=stop,
        checkpoint_every=every,
    )
    return rows, model


def test_resumed_training_equals_uninterrupted(tmp_path):
    full, model_full = _toy_train(tmp_path / "full")
    assert full[-1]["test_mse"] < full[0]["test_mse"]
    partial, _ = _toy_train(tmp_path / "resumed", stop=2)
    assert len(partial) == 2
    resumed, model_resumed = _toy_train(tmp_path / "resumed")
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in full]
    for a, b in zip(model_full.parameters(), model_resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_job_killed_between_sparse_checkpoints_resumes_from_the_last_one(tmp_path, monkeypatch):
    from pipeline.reconstructors import training

    saved = []
    save = training._save
    monkeypatch.setattr(
        training, "_save", lambda d, *a: saved.append(a[-1][-1]["epoch"]) or save(d, *a)
    )
    full, model_full = _toy_train(tmp_path / "full", every=4)
    assert saved == [4, 6]  # every 4th epoch and the last
    saved.clear()
    with pytest.raises(KeyboardInterrupt):
        _toy_train(tmp_path / "killed", every=2, crash_in=5)
    assert (
        saved == [2, 4] and json.loads((tmp_path / "killed/state.json").read_text())["epoch"] == 4
    )
    saved.clear()
    resumed, model_resumed = _toy_train(tmp_path / "killed", every=2)
    assert saved == [6]  # epochs 5 and 6 rerun from the epoch-4 checkpoint
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in full]
    for a, b in zip(model_full.parameters(), model_resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == [
        "epoch-0006.optim.pt",
        "epoch-0006.safetensors",
        "state.json",
    ]


@pytest.mark.parametrize(
    ("precision", "autocast"),
    [
        ("float32", (False, None)),
        ("bfloat16", (True, torch.bfloat16)),
        ("float16", (False, None)),  # the CPU computes float16 as float32
    ],
)
def test_training_runs_under_the_configured_autocast(tmp_path, precision, autocast):
    seen = set()
    rows, model = _toy_train(tmp_path, precision=precision, seen=seen)
    enabled, dtype = autocast
    assert {s[0] for s in seen} == {enabled}
    if enabled:
        assert {s[1] for s in seen} == {dtype}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32
    assert rows[-1]["test_mse"] < rows[0]["test_mse"]


def test_checkpoint_of_another_configuration_is_not_reused(tmp_path):
    _toy_train(tmp_path, stop=2)
    model, x, y = _toy_problem()
    rows = train(
        model,
        lambda batch, epoch: (x[batch], y[batch]),
        lambda data, epoch: {"loss": torch.nn.functional.mse_loss(model(data[0]), data[1])},
        len(x),
        TrainSettings(epochs=3, batch_size=8, lr=1e-2, seed=3),
        checkpoint_dir=tmp_path,
        identity={"toy": 2},
    )
    assert [r["epoch"] for r in rows] == [1, 2, 3]


# ---------------------------------------------------------------- on the demo


def _test_frames(workspace, store):
    segments, clips = store["segment"][:].tolist(), store["clip"][:]
    frames = {
        s: open_store(workspace / f"results/frames/{s}.zarr")["frames"][:] for s in set(segments)
    }
    return np.stack([frames[s][c] for s, c in zip(segments, clips, strict=True)])


def _mean_ssim(a, b):
    return np.mean(
        [
            structural_similarity(x, y, channel_axis=-1)
            for clip_a, clip_b in zip(a, b, strict=True)
            for x, y in zip(clip_a, clip_b, strict=True)
        ]
    )


def _mean_frame_ssim(workspace, truth):
    """SSIM of the baseline that always shows the mean training frame."""
    train = [
        open_store(p)["frames"][:] for p in sorted((workspace / "results/frames").glob("seg*.zarr"))
    ]
    mean = np.concatenate(train).reshape(-1, *truth.shape[2:]).mean(0).round().astype(np.uint8)
    return _mean_ssim(np.broadcast_to(mean, truth.shape), truth)


def test_model_directories(workspace):
    for name in ("perception", "semantic"):
        directory = workspace / f"results/subject1/{name}/model"
        config = json.loads((directory / "config.json").read_text())
        assert config["stage"] == f"train_{name}" and config["n_parameters"] > 0
        header = (directory / "metrics.csv").read_text().splitlines()
        assert "train_loss" in header[0] and len(header) > 2
        assert (directory / "loss.png").read_bytes()[:4] == b"\x89PNG"
        # the checkpoints live outside the output, for resuming, until the model is written
        assert not (workspace / f"results/subject1/checkpoints/{name}").exists()


def test_blurry_video_beats_mean_training_frame(workspace):
    store = open_store(
        workspace / "results/subject1/perception/blurry.zarr", stage="predict_perception"
    )
    pred = store["frames"][:]
    truth = _test_frames(workspace, store)
    assert pred.shape == truth.shape
    assert _mean_ssim(pred, truth) > _mean_frame_ssim(workspace, truth)


def test_semantic_retrieval_beats_chance(workspace):
    store = open_store(
        workspace / "results/subject1/semantic/embeddings.zarr", stage="predict_semantic"
    )
    chance = store.attrs["chance"]
    retrieval = store.attrs["retrieval"]
    assert retrieval["fmri_embeds_keyframe_top1"] >= 5 * chance
    assert retrieval["fmri_embeds_fmri_top1"] >= 5 * chance
    assert store["prior_embeds"].shape == store["fmri_embeds"].shape


def test_shuffled_pairs_stay_at_chance(early_stores, tmp_path):
    """The control that makes the checks above able to fail: the same thresholds fail."""
    config = small_config(perception={"shuffle_control": True}, semantic={"shuffle_control": True})
    aligned = early_stores / "results/subject1/aligned.zarr"
    cache = early_stores / "results/cache"
    rows = train_semantic(
        aligned,
        cache / "clip_images.zarr",
        cache / "clip_text.zarr",
        tmp_path / "sr",
        settings=reconstructor_settings(config, "semantic") | {"prior_epochs": 1},
        checkpoint_dir=tmp_path / "ckpt_sr",
        device="cpu",
    )
    chance = 1 / min(300, open_store(aligned)["test/fmri"].shape[0])
    last_align = [r for r in rows if r["phase"] == "align"][-1]
    assert last_align["test_keyframe_top1"] < 5 * chance
    assert last_align["test_fmri_top1"] < 5 * chance

    train_perception(
        aligned,
        cache / "vae_latents.zarr",
        tmp_path / "pr",
        settings=reconstructor_settings(config, "perception"),
        checkpoint_dir=tmp_path / "ckpt_pr",
        device="cpu",
    )
    predict_perception(
        tmp_path / "pr",
        aligned,
        early_stores / "resources/models/tiny/vae",
        tmp_path / "blurry.zarr",
        device="cpu",
    )
    store = open_store(tmp_path / "blurry.zarr")
    truth = _test_frames(early_stores, store)
    assert _mean_ssim(store["frames"][:], truth) <= _mean_frame_ssim(early_stores, truth)


def test_interrupted_perception_training_resumes_to_the_same_result(early_stores, tmp_path):
    """Stopped after 2 of 4 epochs and rerun: the final metrics of an uninterrupted run;
    and a second uninterrupted run is identical to the first.

    Four epochs with mixup in the first three, so the resumed run replays the
    mixing draws of epoch 3 and the change to plain epochs.
    """
    settings = reconstructor_settings(small_config(), "perception")
    settings |= {"epochs": 4, "mixup_fraction": 0.75}
    aligned = early_stores / "results/subject1/aligned.zarr"
    latents = early_stores / "results/cache/vae_latents.zarr"

    def run(name: str, stop: int | None = None):
        return train_perception(
            aligned,
            latents,
            tmp_path / name,
            settings=settings,
            checkpoint_dir=tmp_path / f"ckpt_{name}",
            device="cpu",
            stop_after_epoch=stop,
        )

    uninterrupted = run("whole")
    # training is deterministic given the seed on the CPU: a second run, bit for bit
    timing = ("seconds", "samples_per_s", "data_fraction")
    again = run("again")
    assert [{k: v for k, v in e.items() if k not in timing} for e in again] == [
        {k: v for k, v in e.items() if k not in timing} for e in uninterrupted
    ]
    weights = [load_file(tmp_path / name / "model.safetensors") for name in ("whole", "again")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert run("resumed", stop=2) is None
    assert not (tmp_path / "resumed").exists()
    resumed = run("resumed")
    assert len(resumed) == len(uninterrupted) == settings["epochs"]
    for key in ("train_loss", "test_mae", "test_latent_top1"):
        assert uninterrupted[-1][key] == pytest.approx(resumed[-1][key], rel=1e-4, abs=1e-6)


def test_cli_stop_after_epoch_exits_3_without_output(early_stores, tmp_path):
    import subprocess
    import sys

    settings = reconstructor_settings(small_config(), "perception") | {"epochs": 3}
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "train-perception",
        "--aligned",
        str(early_stores / "results/subject1/aligned.zarr"),
        "--vae-cache",
        str(early_stores / "results/cache/vae_latents.zarr"),
        "--output",
        str(tmp_path / "model"),
        "--settings",
        json.dumps(settings),
        "--checkpoints",
        str(tmp_path / "ckpt"),
        "--device",
        "cpu",
    ]
    stopped = subprocess.run([*cmd, "--stop-after-epoch", "1"], capture_output=True, text=True)
    assert stopped.returncode == 3, stopped.stderr[-2000:]
    assert not (tmp_path / "model").exists()
    assert json.loads((tmp_path / "ckpt/state.json").read_text())["epoch"] == 1
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from the checkpoint of epoch 1" in resumed.stderr
    assert (tmp_path / "model/model.safetensors").exists()
    assert "removed the checkpoints" in resumed.stderr and not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("loss", ["info_nce", "bimixco_loss", "soft_clip_loss"])
def test_contrastive_logits_stay_float32_under_autocast(loss):
    """Training runs under autocast (bf16 / fp16); at the SR's τ = 0.006 a half-precision
    similarity matmul would move the loss (control below), so the logits are float32."""
    from pipeline.reconstructors import layers

    torch.manual_seed(0)
    pred, target = torch.randn(32, 1664), torch.randn(32, 1664)
    target = target + 0.05 * pred * 1664**0.5 / 40  # weakly similar pairs: no saturation
    perm, betas = torch.randperm(32), torch.rand(32)
    extra = (perm, betas, torch.rand(32) < 0.5) if loss == "bimixco_loss" else ()
    fn = getattr(layers, loss)
    exact = fn(pred, target, 0.006, *extra)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fn(pred, target, 0.006, *extra)
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, exact, rtol=1e-5)
    # the control: the same loss from bf16 logits is off by far more
    p, t = layers._normalised(pred), layers._normalised(target)
    half = (p.bfloat16() @ t.bfloat16().T).float() / 0.006
    labels = torch.arange(32)
    rough = (
        torch.nn.functional.cross_entropy(half, labels)
        + torch.nn.functional.cross_entropy(half.T, labels)
    ) / 2
    if loss == "info_nce":
        assert not torch.allclose(rough, exact, rtol=1e-4)


def test_phase_settings_take_the_alignment_learning_rate():
    from pipeline.reconstructors.stages import _phase_settings

    settings = reconstructor_settings(small_config(semantic={"align_lr": 1e-4}), "semantic")
    align, prior, joint = (_phase_settings(settings, p) for p in ("align", "prior", "joint"))
    assert align.lr == joint.lr == 1e-4 and prior.lr == settings["lr"] != 1e-4
    assert (joint.epochs, joint.batch_size) == (
        settings["align_epochs"],
        settings["align_batch_size"],
    )
    assert (prior.epochs, prior.batch_size) == (
        settings["prior_epochs"],
        settings["prior_batch_size"],
    )
    tiny = reconstructor_settings(small_config(), "semantic")
    assert _phase_settings(tiny, "align").lr == RECONSTRUCTORS["tiny"]["semantic"]["align_lr"]
    paper = small_config()
    paper["models"]["preset"] = "paper"
    paper = reconstructor_settings(paper, "semantic")
    assert "align_lr" not in paper and _phase_settings(paper, "align").lr == paper["lr"]


def test_joint_schedule_trains_backbone_and_prior_together(early_stores, tmp_path):
    """eq. 4 read literally: one phase whose loss holds the contrastive, prior and Reftm terms,
    moving the backbone and the prior; the Reftm projector stays frozen."""
    from pipeline.reconstructors.semantic import SemanticConfig, SemanticReconstructor

    config = small_config(semantic={"schedule": "joint", "align_epochs": 1})
    settings = reconstructor_settings(config, "semantic")
    cache = early_stores / "results/cache"
    rows = train_semantic(
        early_stores / "results/subject1/aligned.zarr",
        cache / "clip_images.zarr",
        cache / "clip_text.zarr",
        tmp_path / "sr",
        settings=settings,
        checkpoint_dir=tmp_path / "ckpt",
        device="cpu",
    )
    assert [r["phase"] for r in rows] == ["joint"]
    assert {"train_contrastive", "train_prior", "train_reftm", "test_keyframe_top1"} <= set(rows[0])
    trained = load_file(tmp_path / "sr" / "model.safetensors")
    record = json.loads((tmp_path / "sr" / "config.json").read_text())
    torch.manual_seed(settings["seed"])
    initial = SemanticReconstructor(SemanticConfig(**record["architecture"])).state_dict()
    for prefix in ("backbone.", "prior."):
        names = [k for k in trained if k.startswith(prefix)]
        assert any(not torch.equal(trained[k], initial[k]) for k in names), prefix


@pytest.mark.parametrize(
    ("total", "pct_start"), [(10, 0.1), (20, 0.05), (2, 0.5), (1, 0.1), (7, 0.3)]
)
def test_the_learning_rate_schedule_takes_any_number_of_steps(total, pct_start):
    """A one-step warm-up (pct_start x steps = 1: 10 steps at 0.1, a short epoch of the
    prior) divides by zero in torch's OneCycleLR; ours runs, highest at step 1."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    if pct_start * total == 1:
        with pytest.raises(ZeroDivisionError):
            torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=1.0, total_steps=total, pct_start=pct_start
            )
    schedule = one_cycle(optimizer, 1.0, total, pct_start)
    rates = []
    for _ in range(total):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert max(rates) <= 1.0 and rates[-1] < max(rates) or total == 1
    if pct_start * total == 1 and total > 2:  # two steps: the second is the last, annealed
        assert rates[0] < rates[1] == max(rates)
