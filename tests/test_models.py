"""The tiny preset: real classes, saved in hub layouts, loaded back by the shared loaders."""

import numpy as np
import pytest
import torch

from pipeline.models import (
    ModelNotFoundError,
    load_captioner,
    load_clip,
    load_vae,
    model_dir,
    preset_sources,
)
from pipeline.models.classifiers import FrameClassifier, VideoClassifier, share_class
from pipeline.models.tiny import write_tiny_captioner, write_tiny_clip, write_tiny_vae
from pipeline.models.tiny_classifiers import (
    write_tiny_frame_classifier,
    write_tiny_video_classifier,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_tiny_clip(root / "clip", seed=0)
    write_tiny_vae(root / "vae", seed=0)
    write_tiny_captioner(root / "captioner", seed=0)
    return root


def test_clip_round_trip_and_token_shapes(tiny_dir):
    a, tokenizer = load_clip(tiny_dir / "clip")
    b, _ = load_clip(tiny_dir / "clip")
    images = torch.rand(2, 3, 64, 64)
    pooled, tokens = a.visual(images)
    assert tokens.shape == (2, 64, 64) and pooled.shape == (2, 32)
    assert torch.equal(tokens, b.visual(images)[1])
    assert not torch.equal(tokens[0], tokens[1])  # different frames, different tokens
    text = a.encode_text(tokenizer(["a red disc", "two blue squares"]))
    assert text.shape == (2, 32)


def test_vae_round_trip_and_latent_shape(tiny_dir):
    a, b = load_vae(tiny_dir / "vae"), load_vae(tiny_dir / "vae")
    x = torch.rand(1, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        latent = a.encode(x).latent_dist.mode()
        assert latent.shape == (1, 4, 28, 28)
        assert torch.equal(latent, b.encode(x).latent_dist.mode())


def test_captioner_round_trip_gives_words(tiny_dir):
    processor, a = load_captioner(tiny_dir / "captioner")
    _, b = load_captioner(tiny_dir / "captioner")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(2)]
    inputs = processor(images=images, return_tensors="pt")
    out_a = a.generate(**inputs, max_new_tokens=6, min_new_tokens=2, do_sample=False)
    out_b = b.generate(**inputs, max_new_tokens=6, min_new_tokens=2, do_sample=False)
    assert torch.equal(out_a, out_b)
    captions = processor.batch_decode(out_a, skip_special_tokens=True)
    assert all(c.strip() for c in captions)


def test_missing_model_names_the_rules(tmp_path):
    with pytest.raises(ModelNotFoundError, match="download_models.*tiny_models"):
        load_vae(tmp_path / "nothing")


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        preset_sources("huge")
    path = model_dir("resources/models", "paper", "clip")
    assert path.as_posix() == "resources/models/paper/clip"


def test_share_class_compares_top_k_sets():
    a = np.array([[1, 4], [2, 5], [3, 6]])
    b = np.array([[1, 7], [5, 9], [8, 0]])
    assert share_class(a[:, :1], b[:, :1]).tolist() == [True, False, False]
    assert share_class(a, b).tolist() == [True, True, False]  # 5 is in both top-2 sets


def test_tiny_frame_classifier_learns_the_frame_clusters(tmp_path):
    """Frames of four colours: the fitted classifier's top-1 partitions them by colour."""
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    colours = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 210], [230, 220, 50]])
    groups = rng.integers(0, 4, 500)
    noise = rng.normal(0, 15, (500, 32, 32, 3))
    frames = (colours[groups][:, None, None] + noise).clip(0, 255).astype(np.uint8)
    metadata = write_tiny_frame_classifier(
        tmp_path / "frame_classifier", frames, classes=4, steps=150, held_out=100
    )
    assert metadata["held_out_accuracy"] > 0.9
    classifier = FrameClassifier(tmp_path / "frame_classifier")  # the paper preset's loader
    top = classifier.top_k(frames, 2)
    assert top.shape == (500, 2) and classifier.n_classes == 4
    assert adjusted_rand_score(groups, top[:, 0]) > 0.95
    assert abs(adjusted_rand_score(rng.permutation(groups), top[:, 0])) < 0.05  # control


def test_tiny_video_classifier_learns_the_clip_clusters(tmp_path):
    """Clips of four colours drifting over their 6 frames: top-1 partitions them by colour."""
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(1)
    colours = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 210], [230, 220, 50]])
    groups = rng.integers(0, 4, 300)
    drift = np.linspace(-20, 20, 6)[None, :, None, None, None]
    noise = rng.normal(0, 15, (300, 6, 32, 32, 3))
    clips = (colours[groups][:, None, None, None] + drift + noise).clip(0, 255).astype(np.uint8)
    metadata = write_tiny_video_classifier(
        tmp_path / "video_classifier", clips, classes=4, steps=150, held_out=60
    )
    assert metadata["held_out_accuracy"] > 0.9
    classifier = VideoClassifier(tmp_path / "video_classifier", num_frames=6)
    top = classifier.top_k(clips, 1)[:, 0]
    assert classifier.n_classes == 4
    assert adjusted_rand_score(groups, top) > 0.95
    assert abs(adjusted_rand_score(rng.permutation(groups), top)) < 0.05  # control


class _Payload:
    """A pickle that runs a shell command when it is loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_before_it_runs(tmp_path):
    """Checkpoints are read with weights_only=True: a pickle that would run a command is
    refused with the file named, and the command never runs. A control pickle of tensors
    loads."""
    from safetensors.torch import load_file

    from pipeline.errors import DataError
    from pipeline.models.download import convert_checkpoint
    from pipeline.models.loading import load_tensors

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": _Payload(marker)}, evil)
    with pytest.raises(DataError, match="evil.ckpt: refused"):
        load_tensors(evil)
    with pytest.raises(DataError, match="evil.ckpt: refused"):
        convert_checkpoint(evil, tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()

    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.arange(3.0)}}, good)
    convert_checkpoint(good, tmp_path / "good.safetensors")
    assert torch.equal(load_file(tmp_path / "good.safetensors")["w"], torch.arange(3.0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible here")
def test_a_cuda_device_that_is_not_there_stops_the_stage_and_says_why():
    from pipeline.models.loading import EXECUTION, DeviceError, resolve_device

    with pytest.raises(DeviceError, match=r"sees no CUDA device .* R580 .*models.device: cpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")  # the tiny preset's fall back
    assert EXECUTION["device"] == "cpu" and EXECUTION["torch"] == torch.__version__


def test_stores_record_where_their_stage_ran(tmp_path):
    from pipeline.models.loading import resolve_device, resolve_dtype
    from pipeline.stores import provenance

    resolve_device("cpu"), resolve_dtype("bfloat16")
    execution = provenance("test", {})["execution"]
    assert execution["device"] == "cpu" and execution["dtype"] == "bfloat16"
    assert execution["torch"] == torch.__version__ and "cuda" in execution


def test_checkpoints_with_tied_or_viewed_tensors_convert(tmp_path):
    """safetensors refuses tensors that share memory; torch.save keeps the sharing."""
    from safetensors.torch import load_file

    from pipeline.models.download import convert_checkpoint

    weight, block = torch.arange(6.0), torch.arange(8.0)
    state = {
        "embed": weight,
        "lm_head": weight,
        "q": block[:4],
        "k": block[4:],
        "own": torch.ones(3),
    }
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "tied.ckpt")
    convert_checkpoint(tmp_path / "tied.ckpt", tmp_path / "tied.safetensors")
    out = load_file(tmp_path / "tied.safetensors")
    assert out.keys() == state.keys()
    assert all(torch.equal(out[k], v) for k, v in state.items())


def test_clip_weights_that_do_not_fit_the_model_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    from pipeline.errors import DataError
    from pipeline.models.loading import load_clip
    from pipeline.models.tiny import write_tiny_clip

    path = write_tiny_clip(tmp_path / "clip")
    weights = path / "open_clip_pytorch_model.safetensors"
    state = load_file(weights)
    name = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != name}, weights)
    with pytest.raises(DataError, match=rf"does not fit the model \(missing \['{name}'\]"):
        load_clip(path)


def _denoising_loss(unet, scheduler, latents, context, labels, seed=1):
    """MSE of the noise prediction on a fixed draw of noise and timesteps."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=g)
    with torch.no_grad():
        eps = unet(
            scheduler.add_noise(latents, noise, t),
            t,
            encoder_hidden_states=context.expand(len(latents), -1, -1),
            class_labels=labels,
        ).sample
    return torch.nn.functional.mse_loss(eps, noise).item()


def test_the_generation_unets_learn_to_denoise_the_frames_latents(rng):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from pipeline.generation.diffusion import ANIMATEDIFF_DDIM
    from pipeline.models.tiny_generation import fit_denoiser

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=4,
        norm_num_groups=8,
        class_embed_type="projection",  # as unCLIP's UNet: the image embedding enters here
        projection_class_embeddings_input_dim=6,
    )
    scheduler = DDIMScheduler(**ANIMATEDIFF_DDIM)
    # latents of two smooth patterns, each with its own "image embedding"
    base = torch.from_numpy(rng.normal(size=(2, 4, 8, 8)).astype(np.float32))
    which = torch.from_numpy(rng.integers(0, 2, 64))
    latents = base[which] + 0.05 * torch.randn(64, 4, 8, 8)
    labels = torch.nn.functional.one_hot(which, 6).float()
    context = torch.zeros(1, 3, 8)
    before = _denoising_loss(unet, scheduler, latents, context, labels)
    losses = fit_denoiser(
        unet,
        scheduler,
        latents,
        context,
        80,
        class_labels=labels,
        uncond_fraction=0.1,
        batch_size=16,
        lr=3e-3,
    )
    after = _denoising_loss(unet, scheduler, latents, context, labels)
    assert len(losses) == 80 and not unet.training
    assert after < 0.7 * before
