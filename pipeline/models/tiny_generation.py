"""The ``tiny`` preset's generation models: unCLIP keyframes and AnimateDiff + SparseCtrl video.

Real diffusers / transformers classes with small, seeded, random configurations,
saved with ``save_pretrained`` in the layouts of the hub repositories the paper
preset names (:data:`pipeline.models.presets.GENERATION`):

* ``unclip`` — a ``StableUnCLIPImg2ImgPipeline`` directory like
  ``stabilityai/stable-diffusion-2-1-unclip`` (model_index.json, ``unet``,
  ``vae``, ``text_encoder``, ``tokenizer``, ``image_encoder``,
  ``feature_extractor``, ``image_normalizer``, ``image_noising_scheduler``,
  ``scheduler``);
* ``video_base`` — a Stable Diffusion 1.5 directory (``unet``, ``vae``,
  ``text_encoder``, ``tokenizer``, ``scheduler``) like RealisticVision;
* ``motion_adapter`` — a ``MotionAdapter`` like ``guoyww/animatediff-motion-adapter-v1-5-3``;
* ``sparsectrl`` — a ``SparseControlNetModel`` like ``guoyww/animatediff-sparsectrl-rgb``.

Both pipelines decode with the tiny preset's fitted VAE (copied in). Their
UNets are then fitted to the training frames (:func:`fit_denoiser`), as the
tiny VAE is: the unCLIP UNet learns to denoise a frame's latents given the
frame's own image embedding (dropped to zeros for a tenth of the samples, the
unconditional input of classifier-free guidance), the video UNet to denoise
them whatever the prompt (random character strings, since the tiny captions
carry no meaning). So both generate images of the demo's world rather than
noise. The motion modules' output projections start at zero, as AnimateDiff's
training starts them, so that the untrained motion adapter leaves the image
model's frames unchanged instead of adding noise. The text tokenizer is a
real ``CLIPTokenizer`` over a byte-level vocabulary without merges (every
character a token, up to 256 per prompt), written as ``vocab.json`` + ``merges.txt``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

__all__ = ["fit_denoiser", "write_tiny_generation"]

_WIDTH = 32  # text/image embedding width of the tiny CLIP encoders
#: Prompt length in tokens: the character-level tokenizer needs more than CLIP's 77 BPE
#: tokens to hold a caption and the paper's prompt suffix
_CONTEXT = 256
_BLOCKS = (32, 64)  # UNet / ControlNet / motion adapter channels


def _byte_unicode() -> list[str]:
    """GPT-2's reversible byte → printable-character table (what CLIPTokenizer expects)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _write_tokenizer(path: Path) -> int:
    """A ``CLIPTokenizer`` directory without merges; returns the vocabulary size."""
    from transformers import CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    chars = _byte_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=_CONTEXT
    )
    tokenizer.save_pretrained(str(path))
    return len(tokens)


def _text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=_WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=_CONTEXT,
            projection_dim=_WIDTH,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )


def _unet(sample_size: int, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=_BLOCKS,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=_WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
        **extra,
    )


def _ddim():
    """DDIM as AnimateDiff configures it (``diffusion.ANIMATEDIFF_DDIM``)."""
    from diffusers import DDIMScheduler

    from pipeline.generation.diffusion import ANIMATEDIFF_DDIM

    return DDIMScheduler(**ANIMATEDIFF_DDIM)


def write_tiny_unclip(path: Path, vae_dir: Path, seed: int, image_size: int) -> Path:
    """A tiny ``StableUnCLIPImg2ImgPipeline`` directory (see the module docstring)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(seed)
    vocab = _write_tokenizer(path / "tokenizer")
    vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True, local_files_only=True)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=_WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=_WIDTH,
        )
    )
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        image_encoder=image_encoder,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=_WIDTH),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=CLIPTokenizer.from_pretrained(path / "tokenizer"),
        text_encoder=_text_encoder(vocab),
        # unCLIP: the noised image embedding and its noise-level embedding, concatenated,
        # enter the UNet as a class embedding
        unet=_unet(
            image_size // factor,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=2 * _WIDTH,
        ),
        scheduler=_ddim(),
        vae=vae,
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def write_tiny_video(root: Path, vae_dir: Path, seed: int, image_size: int) -> dict[str, Path]:
    """Tiny ``video_base``, ``motion_adapter`` and ``sparsectrl`` directories under ``root``."""
    from diffusers import (
        AutoencoderKL,
        MotionAdapter,
        SparseControlNetModel,
        StableDiffusionPipeline,
    )
    from transformers import CLIPTokenizer

    torch.manual_seed(seed + 1)
    base = root / "video_base"
    vocab = _write_tokenizer(base / "tokenizer")
    vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True, local_files_only=True)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    StableDiffusionPipeline(
        vae=vae,
        text_encoder=_text_encoder(vocab),
        tokenizer=CLIPTokenizer.from_pretrained(base / "tokenizer"),
        unet=_unet(image_size // factor),
        scheduler=_ddim(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(str(base), safe_serialization=True)
    adapter = MotionAdapter(
        block_out_channels=_BLOCKS,
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=8,
        motion_max_seq_length=32,
        use_motion_mid_block=False,  # AnimateDiff v3 has no mid-block motion module
    )
    # AnimateDiff trains its motion modules from zero output projections (the temporal
    # transformer is then an identity on the image model's features)
    with torch.no_grad():
        for name, module in adapter.named_modules():
            if name.endswith("proj_out") and isinstance(module, torch.nn.Linear):
                module.weight.zero_()
                module.bias.zero_()
    adapter.save_pretrained(str(root / "motion_adapter"), safe_serialization=True)
    sparsectrl = SparseControlNetModel(
        in_channels=4,
        conditioning_channels=4,  # the VAE-encoded RGB condition (SparseCtrl RGB)
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        block_out_channels=_BLOCKS,
        layers_per_block=1,
        cross_attention_dim=_WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
        conditioning_embedding_out_channels=(16, 32),
        motion_num_attention_heads=2,
        concat_conditioning_mask=True,
        use_simplified_condition_embedding=True,
    )
    # ControlNet's zero convolutions (condition in, residuals out) start at zero so that
    # training begins from the frozen base model; untrained, they would make the keyframe
    # (beta guidance) inert. A trained SparseCtrl has moved them away from zero: here they
    # take PyTorch's default initialisation, seeded like everything else.
    for conv in (
        sparsectrl.controlnet_cond_embedding,
        *sparsectrl.controlnet_down_blocks,
        sparsectrl.controlnet_mid_block,
    ):
        conv.reset_parameters()
    sparsectrl.save_pretrained(str(root / "sparsectrl"), safe_serialization=True)
    return {role: root / role for role in ("video_base", "motion_adapter", "sparsectrl")}


def fit_denoiser(
    unet,
    scheduler,
    latents: torch.Tensor,
    contexts: torch.Tensor,
    steps: int,
    *,
    class_labels: torch.Tensor | None = None,
    uncond_fraction: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 1e-3,
    desc: str = "fit tiny UNet",
) -> list[float]:
    """Fit a diffusers UNet to denoise ``latents`` (ε-prediction, the DDPM objective).

    Each step draws a batch of latents, a timestep per sample uniformly over the
    scheduler's training timesteps and Gaussian noise, and regresses the noise
    from ``scheduler.add_noise``'s mix.

    Parameters
    ----------
    unet : diffusers.UNet2DConditionModel
        Trained in place, on the CPU, in float32; left in eval mode without gradients.
    scheduler : diffusers scheduler
        Its ``alphas_cumprod`` define the noising (the pipeline's own scheduler).
    latents : torch.Tensor of shape (n, channels, height, width)
        Scaled VAE latents of the training images.
    contexts : torch.Tensor of shape (m, tokens, width)
        Text-encoder states; each sample gets one drawn at random.
    steps : int
        Optimisation steps (AdamW, cosine learning-rate decay).
    class_labels : torch.Tensor of shape (n, dim), optional
        Per-latent class input (unCLIP: the noise-augmented image embedding).
    uncond_fraction : float
        Share of samples whose class label is replaced by zeros (the
        unconditional input of classifier-free guidance).
    seed : int
        Seeds the batches, timesteps and noise.
    batch_size : int
        Samples per step.
    lr : float
        Initial learning rate.
    desc : str
        Progress-bar label.

    Returns
    -------
    list of float
        The loss of every step.
    """
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    n, n_timesteps = len(latents), scheduler.config.num_train_timesteps
    unet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    losses = []
    for _ in tqdm(range(steps), desc=desc, unit="step"):
        idx = torch.randint(0, n, (batch_size,), generator=generator)
        z = latents[idx]
        noise = torch.randn(z.shape, generator=generator)
        t = torch.randint(0, n_timesteps, (batch_size,), generator=generator)
        context = contexts[torch.randint(0, len(contexts), (batch_size,), generator=generator)]
        labels = None
        if class_labels is not None:
            keep = torch.rand(batch_size, generator=generator) >= uncond_fraction
            labels = class_labels[idx] * keep[:, None]
        eps = unet(
            scheduler.add_noise(z, noise, t), t, encoder_hidden_states=context, class_labels=labels
        ).sample
        loss = torch.nn.functional.mse_loss(eps, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    unet.eval().requires_grad_(False)
    return losses


def _training_frames(frame_stores, limit: int, seed: int) -> np.ndarray:
    """Up to ``limit`` frames drawn without replacement from the stores, uint8 (n, h, w, 3)."""
    from pipeline.frames import read_clips

    clips = read_clips(frame_stores)
    frames = clips.reshape(-1, *clips.shape[2:])
    rng = np.random.default_rng(seed)
    return frames[np.sort(rng.permutation(len(frames))[:limit])]


def _random_prompts(n: int, seed: int) -> list[str]:
    """``n`` prompts of random printable characters, of random length, the first empty."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz ,.0123456789"))
    lengths = rng.integers(0, 2 * _CONTEXT, n)
    return ["", *("".join(rng.choice(letters, k)) for k in lengths[1:])]


@torch.no_grad()
def _fit_unclip(path: Path, frames, steps: int, seed: int) -> dict:
    from diffusers import StableUnCLIPImg2ImgPipeline

    from pipeline.generation.diffusion import encode_images

    pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(
        path, use_safetensors=True, local_files_only=True
    )
    latents = encode_images(pipe.vae, frames, "cpu", torch.float32)
    pixels = pipe.feature_extractor(images=list(frames), return_tensors="pt").pixel_values
    embeds = pipe.image_encoder(pixels).image_embeds
    generator = torch.Generator().manual_seed(seed)
    labels = pipe.noise_image_embeddings(embeds, 0, generator=generator)
    # the keyframe stage's prompt is empty (KeyframeSettings.prompt), unguided and guided
    context, _ = pipe.encode_prompt([""], "cpu", 1, False)
    with torch.enable_grad():
        losses = fit_denoiser(
            pipe.unet,
            pipe.scheduler,
            latents,
            context,
            steps,
            class_labels=labels,
            uncond_fraction=0.1,
            seed=seed,
            desc="fit tiny unCLIP UNet",
        )
    pipe.unet.save_pretrained(str(path / "unet"), safe_serialization=True)
    return {"steps": steps, "frames": len(frames), "final_loss": _tail_mean(losses)}


@torch.no_grad()
def _fit_video_base(path: Path, frames, steps: int, seed: int) -> dict:
    from diffusers import StableDiffusionPipeline

    from pipeline.generation.diffusion import encode_images

    pipe = StableDiffusionPipeline.from_pretrained(
        path, use_safetensors=True, local_files_only=True, safety_checker=None
    )
    latents = encode_images(pipe.vae, frames, "cpu", torch.float32)
    prompts = _random_prompts(64, seed)
    contexts = torch.cat([pipe.encode_prompt([p], "cpu", 1, False)[0] for p in prompts])
    with torch.enable_grad():
        losses = fit_denoiser(
            pipe.unet,
            pipe.scheduler,
            latents,
            contexts,
            steps,
            seed=seed,
            desc="fit tiny video UNet",
        )
    pipe.unet.save_pretrained(str(path / "unet"), safe_serialization=True)
    return {
        "steps": steps,
        "frames": len(frames),
        "prompts": f"{len(prompts)} random character strings",
        "final_loss": _tail_mean(losses),
    }


def _tail_mean(losses: list[float], n: int = 20) -> float | None:
    return float(sum(losses[-n:]) / len(losses[-n:])) if losses else None


def write_tiny_generation(
    output: str | os.PathLike,
    encoders: str | os.PathLike,
    *,
    seed: int = 0,
    frame_stores: list[str | os.PathLike] | None = None,
    steps: int = 0,
    max_frames: int = 4096,
) -> dict:
    """Write the tiny generation models to ``output/{unclip,video_base,motion_adapter,sparsectrl}``.

    ``encoders`` is the tiny preset's directory (its fitted ``vae`` is reused);
    the generated image size is the VAE's ``sample_size`` (the frames' size).
    The directory appears only once complete. Returns a small manifest.

    Parameters
    ----------
    output : path
        The tiny preset's generation folder (``{models.root}/tiny-generation``).
    encoders : path
        The tiny preset's folder, with a fitted ``vae`` and its ``metadata.json``.
    seed : int
        Seeds the random weights and the fits.
    frame_stores : list of path, optional
        ``extract_frames`` stores of the training stimuli, to fit the UNets on.
    steps : int
        Optimisation steps of each UNet's fit (:func:`fit_denoiser`); 0 leaves them random.
    max_frames : int
        At most this many training frames (a seeded draw) are encoded for the fits.

    Returns
    -------
    dict
        ``seed``, ``image_size`` (pixels), ``vae`` (the VAE folder read) and ``fit``
        (per model: steps, frames and the final loss), also written to
        ``output/manifest.json``.
    """
    from pipeline.stores import atomic_output

    vae_dir = Path(encoders) / "vae"
    image_size = int(json.loads((vae_dir / "config.json").read_text())["sample_size"])
    with atomic_output(output) as tmp:
        write_tiny_unclip(tmp / "unclip", vae_dir, seed, image_size)
        write_tiny_video(tmp, vae_dir, seed, image_size)
        fit = {}
        if steps > 0 and frame_stores:
            frames = _training_frames(frame_stores, max_frames, seed)
            fit["unclip"] = _fit_unclip(tmp / "unclip", frames, steps, seed)
            fit["video_base"] = _fit_video_base(tmp / "video_base", frames, steps, seed)
        shutil.copy(vae_dir / "metadata.json", tmp / "vae_metadata.json")
        manifest = {"seed": seed, "image_size": image_size, "vae": str(vae_dir), "fit": fit}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
