"""Keyframes and video synthesis on the tiny generation models the workflow wrote."""

from __future__ import annotations

import importlib.util
import json
import sys

import av
import numpy as np
import pytest
import torch

from pipeline.generation.diffusion import partial_timesteps
from pipeline.generation.keyframes import KeyframeSettings, load_generator
from pipeline.generation.sdxl_unclip import MissingDependencyError
from pipeline.generation.video import (
    SynthesisTrace,
    VideoSettings,
    VideoSynthesizer,
    interpolate_frames,
)
from pipeline.stores import open_store
from tests.conftest import FRAME_SIZE, SMALL_OVERLAY

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def generation_dir(workspace):
    return workspace / "resources/models/tiny-generation"


def test_the_tiny_unets_are_fitted_and_the_motion_modules_start_at_identity(generation_dir):
    from diffusers import MotionAdapter

    manifest = json.loads((generation_dir / "manifest.json").read_text())
    steps = SMALL_OVERLAY["models"]["tiny_generation_steps"]
    for role in ("unclip", "video_base"):
        assert manifest["fit"][role]["steps"] == steps and manifest["fit"][role]["frames"] > 0
    adapter = MotionAdapter.from_pretrained(generation_dir / "motion_adapter")
    outputs = [m for name, m in adapter.named_modules() if name.endswith("proj_out")]
    assert outputs and all(float(m.weight.abs().sum()) == 0.0 for m in outputs)


@pytest.fixture(scope="module")
def synthesizer(generation_dir):
    return VideoSynthesizer.from_generation_dir(generation_dir, CPU, torch.float32)


@pytest.fixture(scope="module")
def clips(workspace):
    """Blurry videos and keyframes of two test clips, as the workflow made them."""
    blurry = open_store(workspace / "results/subject1/perception/blurry.zarr")["frames"][:2]
    keyframes = open_store(workspace / "results/subject1/keyframes/keyframes.zarr")
    return blurry, keyframes["keyframes"][:2]


def _settings(**overrides) -> VideoSettings:
    return VideoSettings(**({"steps": 10, "size": FRAME_SIZE, "n_frames": 16} | overrides))


def _unet_calls(synthesizer, run):
    calls = []
    handle = synthesizer.pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        out = run()
    finally:
        handle.remove()
    return out, len(calls)


@pytest.mark.parametrize("theta", [0.3, 0.5, 1.0])
def test_alpha_guidance_runs_round_theta_steps(synthesizer, clips, theta):
    blurry, keyframes = clips
    trace = SynthesisTrace()
    settings = _settings(theta=theta)
    out, calls = _unet_calls(
        synthesizer,
        lambda: synthesizer.synthesize(blurry, keyframes, ["a", "b"], [1, 2], settings, trace),
    )
    assert calls == len(trace.timesteps) == round(theta * settings.steps)
    schedule = partial_timesteps(synthesizer.pipe.scheduler, settings.steps, 1.0)
    assert trace.timesteps == schedule[-calls:].tolist()  # the tail of the schedule
    assert out.shape == (2, 16, FRAME_SIZE, FRAME_SIZE, 3) and out.dtype == np.uint8


def test_theta_zero_returns_the_encoded_blurry_video(synthesizer, clips):
    blurry, keyframes = clips
    out, calls = _unet_calls(
        synthesizer,
        lambda: synthesizer.synthesize(blurry, keyframes, ["a", "b"], [1, 2], _settings(theta=0)),
    )
    assert calls == 0
    # the same frames through the VAE directly: encode (mode) and decode
    video = interpolate_frames(blurry, 16, FRAME_SIZE).reshape(-1, FRAME_SIZE, FRAME_SIZE, 3)
    vae = synthesizer.pipe.vae
    with torch.no_grad():
        x = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
    expected = ((y.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    assert np.abs(out.reshape(expected.shape).astype(float) - expected).max() <= 1


def test_official_alpha_mode_starts_at_the_first_timestep(synthesizer, clips):
    blurry, keyframes = clips
    trace = SynthesisTrace()
    settings = _settings(alpha_mode="official")
    synthesizer.synthesize(blurry, keyframes, ["a", "b"], [1, 2], settings, trace)
    full = partial_timesteps(synthesizer.pipe.scheduler, settings.steps, 1.0).tolist()
    assert trace.start_timestep == full[0] and trace.timesteps == full


def test_sparsectrl_gets_the_keyframe_at_frame_zero_only(synthesizer, clips):
    blurry, keyframes = clips
    seen = {}

    def capture(module, args, kwargs):
        seen["mask"] = kwargs["conditioning_mask"].clone()
        seen["cond"] = kwargs["controlnet_cond"].clone()

    handle = synthesizer.pipe.controlnet.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        synthesizer.synthesize(blurry, keyframes, ["a", "b"], [1, 2], _settings())
    finally:
        handle.remove()
    mask, cond = seen["mask"], seen["cond"]  # (batch, 1 | c, frames, h, w)
    assert (mask[:, :, 0] == 1).all() and (mask[:, :, 1:] == 0).all()
    assert cond[:, :, 0].abs().sum() > 0 and (cond[:, :, 1:] == 0).all()


def test_the_keyframe_steers_the_video(synthesizer, clips):
    """beta guidance has an effect: another keyframe, same everything else, another video."""
    blurry, keyframes = clips
    settings = _settings()
    same = synthesizer.synthesize(blurry, keyframes, ["a", "b"], [1, 2], settings)
    swapped = synthesizer.synthesize(blurry, keyframes[::-1], ["a", "b"], [1, 2], settings)
    off = synthesizer.synthesize(
        blurry, keyframes, ["a", "b"], [1, 2], _settings(use_keyframe=False)
    )
    # SparseCtrl conditions frame 0: that is where the swap shows, the others follow weakly
    by_frame = np.abs(same.astype(float) - swapped).mean(axis=(0, 2, 3, 4))
    assert by_frame[0] > 0.5 and by_frame[0] > 5 * by_frame[1:].mean()
    assert np.abs(same.astype(float) - off).mean() > 0.05


def test_a_clip_does_not_depend_on_its_batch(synthesizer, clips):
    blurry, keyframes = clips
    both = synthesizer.synthesize(blurry, keyframes, ["a", "b"], [1, 2], _settings())
    alone = synthesizer.synthesize(blurry[1:], keyframes[1:], ["b"], [2], _settings())
    assert np.abs(both[1].astype(int) - alone[0]).max() <= 2
    other_seed = synthesizer.synthesize(blurry[1:], keyframes[1:], ["b"], [3], _settings())
    assert np.abs(other_seed[0].astype(int) - alone[0]).max() > 2


def test_the_same_seed_gives_the_same_video_bit_for_bit(synthesizer, clips):
    blurry, keyframes = clips
    runs = [
        synthesizer.synthesize(blurry, keyframes, ["a", "b"], [1, 2], _settings()) for _ in "ab"
    ]
    assert runs[0].dtype == np.uint8 and np.array_equal(runs[0], runs[1])


def test_keyframe_strength_zero_keeps_the_start_image_and_seeds_are_per_clip(generation_dir, clips):
    blurry, _ = clips
    generator = load_generator("tiny", generation_dir / "unclip", CPU, torch.float32)
    embeds = torch.randn(2, generator.embedding_dim)
    first = blurry[:, 0]
    run = KeyframeSettings(steps=10, guidance_scale=5.0, strength=0.8, seed=0)
    both = generator.generate(embeds, first, [7, 8], run)
    alone = generator.generate(embeds[1:], first[1:], [8], run)
    assert np.abs(both[1].astype(int) - alone[0]).max() <= 2
    kept = generator.generate(embeds, first, [7, 8], KeyframeSettings(10, 5.0, 0.0))
    roundtrip_error = np.abs(kept.astype(float) - first).mean()
    assert roundtrip_error < np.abs(both.astype(float) - first).mean()


def test_sd21_unclip_generator_runs_on_a_hub_layout(generation_dir, clips):
    """``sd21_unclip`` is diffusers' StableUnCLIPImg2ImgPipeline: the tiny one has its layout."""
    generator = load_generator("sd21_unclip", generation_dir / "unclip", CPU, torch.float32)
    out = generator.generate(
        torch.zeros(1, generator.embedding_dim),
        clips[0][:1, 0],
        [1],
        KeyframeSettings(steps=4, guidance_scale=3.0, strength=1.0),
    )
    assert out.shape == (1, generator.size, generator.size, 3)


@pytest.mark.skipif(importlib.util.find_spec("sgm") is not None, reason="sgm is installed")
def test_sdxl_unclip_without_sgm_says_what_to_install(tmp_path):
    with pytest.raises(MissingDependencyError, match="pip install .*generative-models"):
        load_generator("mindeye2_sdxl_unclip", tmp_path, CPU, torch.float32)


@pytest.mark.skipif(importlib.util.find_spec("sgm") is None, reason="sgm is not installed")
def test_sdxl_unclip_generates_keyframes_with_sgm(tmp_path, monkeypatch):
    """MindEye2's unclip6 configuration at a tiny width, through the real sgm: the engine
    builds, takes a checkpoint with the conditioner's unused image embedder, and samples."""
    import copy

    from safetensors.torch import save_file
    from sgm.models.diffusion import DiffusionEngine

    import pipeline.generation.sdxl_unclip as sdxl

    full = sdxl.unclip6_configs

    def tiny(steps, guidance_scale):
        config = copy.deepcopy(full(steps, guidance_scale))
        unet = config["network_config"]["params"]
        unet.update(model_channels=32, transformer_depth=[1, 1, 1], num_head_channels=16)
        config["first_stage_config"]["params"]["ddconfig"].update(ch=32, num_res_blocks=1)
        return config

    monkeypatch.setattr(sdxl, "unclip6_configs", tiny)
    torch.manual_seed(0)
    state = DiffusionEngine(**tiny(2, 5.0)).state_dict()
    state[sdxl.UNUSED + "model.proj"] = torch.randn(4, 4)  # the checkpoint's ViT-bigG embedder
    (tmp_path / "sdxl").mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "sdxl" / sdxl.WEIGHTS)
    settings = KeyframeSettings(steps=2, guidance_scale=5.0, strength=1.0)
    condition = torch.randn(2, sdxl.TOKENS * sdxl.WIDTH)
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    for dtype in (torch.float32, torch.bfloat16):
        generator = load_generator("mindeye2_sdxl_unclip", tmp_path / "sdxl", CPU, dtype)
        engine = generator._engine(settings.steps, settings.guidance_scale)
        seen = {}

        def unet_hook(module, args, seen=seen):
            seen["unet"] = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")

        def vae_hook(module, args, seen=seen):
            seen["vae"] = torch.is_autocast_enabled("cpu")

        engine.model.register_forward_pre_hook(unet_hook)
        engine.first_stage_model.decoder.register_forward_pre_hook(vae_hook)
        first = generator.generate(condition, frames, [1, 2], settings)
        again = generator.generate(condition, frames, [1, 2], settings)
        assert first.shape == (2, sdxl.SIZE, sdxl.SIZE, 3) and first.dtype == np.uint8
        assert np.array_equal(first, again)  # seeded per clip
        # the keyframes precision: the UNet under autocast, as the official code runs it;
        # the weights stay float32, and the VAE never autocasts
        assert seen == {"unet": dtype if dtype != torch.float32 else False, "vae": False}
        assert all(p.dtype == torch.float32 for p in engine.parameters())


def test_sgm_without_its_undeclared_dependencies_names_the_missing_module(tmp_path, monkeypatch):
    """sgm's __init__ imports its engine, which imports pytorch_lightning; sgm declares none
    of its dependencies, so a plain install of it stops there."""
    from pipeline.generation.sdxl_unclip import require_sgm

    (tmp_path / "sgm").mkdir()
    (tmp_path / "sgm/__init__.py").write_text("import pytorch_lightning_absent_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sgm", raising=False)
    with pytest.raises(MissingDependencyError) as info:
        require_sgm()
    message = str(info.value)
    assert "the module 'pytorch_lightning_absent_here' that it imports is not" in message
    assert "requirements.lock pytorch-lightning omegaconf kornia einops fsspec" in message
    assert "generative-models.git" not in message  # sgm itself is there


def test_the_main_job_writes_one_playable_video_per_test_clip(workspace):
    videos = workspace / "results/subject1/videos"
    store = open_store(videos / "frames.zarr", stage="synthesize_videos")
    aligned = open_store(workspace / "results/subject1/aligned.zarr")
    assert store["segment"][:].tolist() == aligned["test/segment"][:].tolist()
    files = store["file"][:].tolist()
    assert sorted(files) == sorted(p.name for p in videos.glob("*.mp4"))
    frames = store["videos"]
    assert frames.shape == (len(files), 16, FRAME_SIZE, FRAME_SIZE, 3)
    for i in (0, len(files) - 1):
        with av.open(str(videos / files[i])) as container:
            decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            assert container.streams.video[0].codec_context.name == "h264"
        assert decoded.shape == frames.shape[1:]
        # H.264 (crf 18, 4:2:0 chroma) against the stored frames
        assert np.abs(decoded.astype(float) - frames[i]).mean() < 6
    keyframes = open_store(workspace / "results/subject1/keyframes/keyframes.zarr")
    assert np.array_equal(store["keyframes"][:], keyframes["keyframes"][:])
    assert all(p.endswith(store.attrs["settings"]["prompt_suffix"]) for p in store["prompts"][:])


def _count_calls(monkeypatch, owner, name: str) -> list:
    """Count the calls of ``owner.name`` (still calling it)."""
    calls, original = [], getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_stages_load_their_models_once_not_per_clip(workspace, tmp_path, monkeypatch):
    """Every clip in its own batch: the models are still loaded once per stage."""
    import diffusers

    from pipeline.generation import stages

    subject = workspace / "results/subject1"
    n_clips = open_store(subject / "videos/frames.zarr")["segment"].shape[0]
    # the sampler calls are replaced by blanks: only the loading is under test here
    monkeypatch.setattr(
        VideoSynthesizer,
        "synthesize",
        lambda self, blurry, key, prompts, keys, run, trace=None: np.zeros(
            (len(keys), run.n_frames, run.size, run.size, 3), np.uint8
        ),
    )
    adapters = _count_calls(monkeypatch, diffusers.MotionAdapter, "from_pretrained")
    synthesizers = _count_calls(monkeypatch, VideoSynthesizer, "from_generation_dir")
    settings = dict(open_store(subject / "videos/frames.zarr").attrs["settings"])
    stages.synthesize_videos(
        subject / "perception/blurry.zarr",
        subject / "keyframes/keyframes.zarr",
        subject / "keyframes/captions.zarr",
        workspace / "resources/models/tiny-generation",
        tmp_path / "videos",
        settings=settings,
        device=CPU,
        dtype=torch.float32,
        batch_size=1,
    )
    assert len(adapters) == len(synthesizers) == 1
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == n_clips

    generators = _count_calls(monkeypatch, stages, "load_generator")
    keyframes = open_store(subject / "keyframes/keyframes.zarr")
    stages.generate_keyframes(
        subject / "perception/blurry.zarr",
        workspace / "resources/models/tiny-generation",
        tmp_path / "keyframes.zarr",
        settings=keyframes.attrs["provenance"]["params"] | {"steps": 1},
        aligned=subject / "aligned.zarr",
        embedder=subject / "keyframes/embedder",
        device=CPU,
        dtype=torch.float32,
        batch_size=16,
    )
    assert len(generators) == 1


def test_the_prompt_without_the_caption():
    """γ switched off: the caption gives way to uncaptioned_prompt (the paper's no-keyframe
    ablation prompts "a smooth video"); the suffix stays."""
    from pipeline.generation.video import VideoSettings

    captioned = VideoSettings(prompt_suffix=", 8k uhd")
    assert captioned.prompt("a dog") == "a dog, 8k uhd"
    off = VideoSettings(prompt_suffix=", 8k uhd", use_caption=False)
    assert off.prompt("a dog") == ", 8k uhd"
    smooth = VideoSettings(prompt_suffix="", use_caption=False, uncaptioned_prompt="a smooth video")
    assert smooth.prompt("a dog") == "a smooth video"
