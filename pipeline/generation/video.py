"""Video synthesis: AnimateDiff + SparseCtrl RGB under NeuroClips' three guidances (paper §3.3).

* **α** — the blurry video: its 6 frames are linearly interpolated in time to
  the output length, VAE-encoded and noised; then the frozen text-to-video
  model denoises. ``alpha_mode: paper`` does what the paper's eq. 5 says: noise
  to the timestep of ϑ·T and run only the last round(ϑ·steps) DDIM steps
  (img2img ``strength`` ϑ). ``alpha_mode: official`` reproduces the official
  code: noise to the *first* timestep of the schedule and run all steps
  (github gongzix/NeuroClips), so both can be compared. Without the blurry
  video (the Table 2 ablation) the latents start from pure noise.
* **β** — the keyframe, VAE-encoded, is SparseCtrl's condition at frame 0
  only (mask 1 there, 0 elsewhere).
* **γ** — the keyframe's caption + the paper's suffix is the prompt;
  classifier-free guidance against the configured negative prompt.

The diffusers ``AnimateDiffSparseControlNetPipeline`` supplies the components
and the prompt/condition preparation; the denoising loop is ours because the
pipeline has no ``strength``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.generation.diffusion import (
    ANIMATEDIFF_DDIM,
    clip_generators,
    decode_images,
    encode_images,
    partial_timesteps,
    resize_images,
    seeded_noise,
)

__all__ = ["ALPHA_MODES", "VideoSettings", "VideoSynthesizer", "interpolate_frames"]

log = logging.getLogger(__name__)

ALPHA_MODES = ("paper", "official")


@dataclass(frozen=True)
class VideoSettings:
    steps: int = 25
    theta: float = 0.3
    alpha_mode: str = "paper"
    guidance_scale: float = 8.5
    n_frames: int = 16
    size: int = 256
    negative_prompt: str = ""
    prompt_suffix: str = ""
    controlnet_scale: float = 1.0
    seed: int = 0
    use_blurry: bool = True
    use_keyframe: bool = True
    use_caption: bool = True
    uncaptioned_prompt: str = ""

    def prompt(self, caption: str) -> str:
        """γ: the keyframe's caption (or, without it, ``uncaptioned_prompt``) and the suffix.

        Parameters
        ----------
        caption : str
            The keyframe's caption.

        Returns
        -------
        str
        """
        return (caption if self.use_caption else self.uncaptioned_prompt) + self.prompt_suffix


@dataclass
class SynthesisTrace:
    """What one call did: the timesteps run and the SparseCtrl mask (for tests and logs)."""

    timesteps: list[int] = field(default_factory=list)
    start_timestep: int | None = None
    mask: torch.Tensor | None = None
    denoise_seconds: float = 0.0  # wall time in the denoising loop (UNet + SparseCtrl steps)


def interpolate_frames(frames: np.ndarray, n_frames: int, size: int) -> np.ndarray:
    """uint8 (n, f, h, w, 3) → (n, n_frames, size, size, 3): linear in time, first and last kept.

    Parameters
    ----------
    frames : ndarray of shape (n, f, h, w, 3), uint8
        Videos of f frames (the blurry videos: 6 frames at 3 fps for cc2017).
    n_frames : int
        Output frames.
    size : int
        Output side, in pixels (resized trilinearly with the time axis).

    Returns
    -------
    ndarray of shape (n, n_frames, size, size, 3), uint8
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().permute(0, 4, 1, 2, 3)
    x = F.interpolate(x, size=(n_frames, size, size), mode="trilinear", align_corners=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()


#: Key endings of a LoRA's down (A) matrices: peft / diffusers, diffusers' older format, kohya.
_LORA_DOWN = ("lora_A.weight", "lora.down.weight", "lora_down.weight")


def load_lora(pipe, folder: str | Path, name: str) -> int:
    """Load the LoRA in ``folder`` (one safetensors file) into ``pipe`` as adapter ``name``;
    returns the number of layers it adapts.

    diffusers only warns when a LoRA's keys match no layer (the AnimateDiff-format
    ``v3_sd15_adapter.ckpt``, whose keys lack the ``unet.`` prefix, loads none): here a
    LoRA that does not adapt exactly the layers it holds weights for is an error naming
    the file.
    """
    from safetensors import safe_open

    from pipeline.errors import DataError

    weights = sorted(Path(folder).glob("*.safetensors"))
    if len(weights) != 1:
        raise DataError(f"{folder}: expected one LoRA .safetensors file, found {len(weights)}")
    with safe_open(str(weights[0]), framework="pt") as f:
        held = sum(1 for key in f.keys() if key.endswith(_LORA_DOWN))
    try:
        pipe.load_lora_weights(str(folder), weight_name=weights[0].name, adapter_name=name)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise DataError(f"{weights[0]}: not a LoRA of this model ({exc})") from exc
    adapted = sum(
        1
        for model in (pipe.unet, pipe.text_encoder)
        for module in model.modules()
        if name in getattr(module, "lora_A", {})
    )
    if adapted == 0 or adapted != held:
        raise DataError(
            f"{weights[0]}: the LoRA adapts {adapted} layers but holds weights for {held}; "
            "its keys do not name this model's layers (diffusers expects them prefixed "
            "`unet.`, as in guoyww/animatediff-motion-lora-v1-5-3)"
        )
    return adapted


class VideoSynthesizer:
    """Loads AnimateDiff (base model + motion adapter), SparseCtrl and the DDIM scheduler once.

    Parameters
    ----------
    base : str or Path
        The text-to-image base model (diffusers layout) the motion adapter extends.
    motion_adapter : str or Path
        AnimateDiff's motion adapter.
    sparsectrl : str or Path
        The SparseCtrl RGB model.
    device : torch.device
        Where they run.
    dtype : torch.dtype
        Their precision.
    vae : str or Path, optional
        A VAE for a base model distributed without one.
    domain_adapter : str or Path, optional
        A folder with AnimateDiff v3's domain-adapter LoRA (one safetensors file).

    Raises
    ------
    DataError
        When the domain adapter is not one LoRA file whose keys name this model's layers.
    """

    def __init__(
        self,
        base: str | Path,
        motion_adapter: str | Path,
        sparsectrl: str | Path,
        device: torch.device,
        dtype: torch.dtype,
        vae: str | Path | None = None,
        domain_adapter: str | Path | None = None,
    ):
        from diffusers import (
            AnimateDiffSparseControlNetPipeline,
            AutoencoderKL,
            MotionAdapter,
            SparseControlNetModel,
        )

        from pipeline.models.loading import require_model

        kwargs = {"use_safetensors": True, "local_files_only": True, "dtype": dtype}
        components = {
            "motion_adapter": MotionAdapter.from_pretrained(
                require_model(motion_adapter, "config.json"), **kwargs
            ),
            "controlnet": SparseControlNetModel.from_pretrained(
                require_model(sparsectrl, "config.json"), **kwargs
            ),
        }
        if vae is not None:  # a base model distributed without its VAE (RealisticVision noVAE)
            components["vae"] = AutoencoderKL.from_pretrained(
                require_model(vae, "config.json"), **kwargs
            )
        pipe = AnimateDiffSparseControlNetPipeline.from_pretrained(
            require_model(base, "model_index.json"), **components, **kwargs
        ).to(device)
        if domain_adapter is not None:
            # AnimateDiff v3's domain adapter: a LoRA on the base model's attention
            load_lora(pipe, domain_adapter, "domain_adapter")
        self._attach(pipe, device, dtype)

    def _attach(self, pipe, device: torch.device, dtype: torch.dtype) -> None:
        from diffusers import DDIMScheduler

        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **ANIMATEDIFF_DDIM)
        pipe.set_progress_bar_config(disable=True)
        self.pipe, self.device, self.dtype = pipe, device, dtype

    @classmethod
    def from_pipeline(cls, pipe, device: torch.device, dtype: torch.dtype) -> VideoSynthesizer:
        """Around an ``AnimateDiffSparseControlNetPipeline`` already built and on ``device``
        (the GPU check's paper-size models with random weights).

        Parameters
        ----------
        pipe : AnimateDiffSparseControlNetPipeline
            The pipeline; its scheduler is replaced by DDIM (:data:`ANIMATEDIFF_DDIM`).
        device : torch.device
            Where it runs.
        dtype : torch.dtype
            Its precision.

        Returns
        -------
        VideoSynthesizer
        """
        synthesizer = cls.__new__(cls)
        synthesizer._attach(pipe, device, dtype)
        return synthesizer

    @classmethod
    def from_generation_dir(
        cls, root: str | Path, device, dtype, domain_adapter: bool = True
    ) -> VideoSynthesizer:
        """Load from a preset's generation directory (roles as in ``presets.GENERATION``).

        Parameters
        ----------
        root : str or Path
            The generation directory: ``video_base``, ``motion_adapter``, ``sparsectrl`` and,
            where present, ``video_vae`` and ``domain_adapter``.
        device : torch.device
            Where the models run.
        dtype : torch.dtype
            Their precision.
        domain_adapter : bool
            Load the domain adapter where the directory has one.

        Returns
        -------
        VideoSynthesizer
        """
        root = Path(root)
        adapter = root / "domain_adapter"
        return cls(
            root / "video_base",
            root / "motion_adapter",
            root / "sparsectrl",
            device,
            dtype,
            vae=root / "video_vae" if (root / "video_vae").is_dir() else None,
            domain_adapter=adapter if domain_adapter and adapter.is_dir() else None,
        )

    def _timesteps(self, settings: VideoSettings) -> torch.Tensor:
        scheduler = self.pipe.scheduler
        if not settings.use_blurry or settings.alpha_mode == "official":
            scheduler.set_timesteps(settings.steps)
            return scheduler.timesteps
        if settings.alpha_mode != "paper":
            mode = settings.alpha_mode
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {mode!r}")
        return partial_timesteps(scheduler, settings.steps, settings.theta)

    @torch.no_grad()
    def synthesize(
        self,
        blurry: np.ndarray,
        keyframes: np.ndarray,
        prompts: list[str],
        keys: list[int],
        settings: VideoSettings,
        trace: SynthesisTrace | None = None,
    ) -> np.ndarray:
        """uint8 blurry (n, f, h, w, 3) and keyframes (n, H, W, 3) → uint8 (n, frames, s, s, 3).

        Parameters
        ----------
        blurry : ndarray of shape (n, f, h, w, 3), uint8
            The blurry videos (α guidance, eq. 5); interpolated to ``settings.n_frames``.
        keyframes : ndarray of shape (n, H, W, 3), uint8
            The keyframes (β guidance), SparseCtrl's condition at frame 0.
        prompts : list of str
            The keyframes' captions (γ guidance).
        keys : list of int
            One seed key per clip.
        settings : VideoSettings
            Steps, ϑ (``theta``), α mode, guidance, size, frames and the ablation switches.
        trace : SynthesisTrace, optional
            Filled with the timesteps run, the mask and the denoising time.

        Returns
        -------
        ndarray of shape (n, settings.n_frames, settings.size, settings.size, 3), uint8

        Raises
        ------
        ValueError
            For an ``alpha_mode`` not in :data:`ALPHA_MODES`.
        """
        pipe, n, s, t_len = self.pipe, len(keys), settings.size, settings.n_frames
        device, dtype = self.device, self.dtype
        trace = trace if trace is not None else SynthesisTrace()
        guided = settings.guidance_scale > 1.0
        generators = clip_generators(settings.seed, keys, device)

        # γ: the caption prompt (or uncaptioned_prompt in the no-caption ablation)
        texts = [settings.prompt(p) for p in prompts]
        prompt_embeds, negative = pipe.encode_prompt(
            texts, device, 1, guided, negative_prompt=[settings.negative_prompt] * n
        )
        if guided:
            prompt_embeds = torch.cat([negative, prompt_embeds])
        # the motion UNet and SparseCtrl take one text embedding per frame
        prompt_embeds = prompt_embeds.repeat_interleave(t_len, dim=0)

        # α: the blurry video, interpolated to the output length and encoded frame by frame
        timesteps = self._timesteps(settings)
        factor = pipe.vae_scale_factor
        shape = (pipe.unet.config.in_channels, t_len, s // factor, s // factor)
        noise = seeded_noise(shape, generators, device, dtype)
        if settings.use_blurry:
            video = interpolate_frames(blurry, t_len, s).reshape(n * t_len, s, s, 3)
            z = encode_images(pipe.vae, video, device, dtype)
            z = z.view(n, t_len, *z.shape[1:]).permute(0, 2, 1, 3, 4)  # (n, c, f, h, w)
            if len(timesteps) == 0:
                trace.timesteps = []
                return _decode_video(pipe.vae, z)
            start = timesteps[:1].repeat(n)
            latents = pipe.scheduler.add_noise(z, noise, start)
            trace.start_timestep = int(timesteps[0])
        else:
            latents = noise * pipe.scheduler.init_noise_sigma

        # β: the keyframe at frame 0 through SparseCtrl
        if settings.use_keyframe:
            frames = resize_images(keyframes, s)
            cond = encode_images(pipe.vae, frames, device, dtype)[:, :, None]  # (n, c, 1, h, w)
        else:
            cond = torch.zeros((n, shape[0], 1, *shape[2:]), device=device, dtype=dtype)
        cond, mask = pipe.prepare_sparse_control_conditioning(cond, t_len, [0], device, dtype)
        if not settings.use_keyframe:
            mask = torch.zeros_like(mask)
        trace.mask = mask.detach().cpu()
        if guided:
            cond, mask = torch.cat([cond] * 2), torch.cat([mask] * 2)

        started = time.perf_counter()
        for t in timesteps:
            model_in = torch.cat([latents] * 2) if guided else latents
            model_in = pipe.scheduler.scale_model_input(model_in, t)
            down, mid = pipe.controlnet(
                model_in,
                t,
                encoder_hidden_states=prompt_embeds,
                controlnet_cond=cond,
                conditioning_mask=mask,
                conditioning_scale=settings.controlnet_scale,
                guess_mode=False,
                return_dict=False,
            )
            eps = pipe.unet(
                model_in,
                t,
                encoder_hidden_states=prompt_embeds,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
            ).sample
            if guided:
                uncond, text = eps.chunk(2)
                eps = uncond + settings.guidance_scale * (text - uncond)
            latents = pipe.scheduler.step(eps, t, latents).prev_sample
            trace.timesteps.append(int(t))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        trace.denoise_seconds += time.perf_counter() - started
        return _decode_video(pipe.vae, latents)


def _decode_video(vae, latents: torch.Tensor) -> np.ndarray:
    """(n, c, f, h, w) latents → uint8 (n, f, H, W, 3), decoded frame by frame."""
    n, c, f, h, w = latents.shape
    frames = decode_images(vae, latents.permute(0, 2, 1, 3, 4).reshape(n * f, c, h, w))
    return frames.reshape(n, f, *frames.shape[1:])
