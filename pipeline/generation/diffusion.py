"""Pieces shared by the keyframe and video samplers: partial schedules, seeded noise, VAE I/O."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ANIMATEDIFF_DDIM",
    "clip_generators",
    "decode_images",
    "encode_images",
    "partial_timesteps",
    "resize_images",
    "seeded_noise",
]


#: DDIM as AnimateDiff's inference configs set it (the official code uses the same:
#: linear betas 0.00085–0.012)
ANIMATEDIFF_DDIM = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def partial_timesteps(scheduler, steps: int, strength: float) -> torch.Tensor:
    """The last ``round(strength * steps)`` of a ``steps``-step schedule (img2img ``strength``).

    Starting from an image noised to the first of these timesteps and running
    only them is what the paper's α guidance describes with ϑ = ``strength``
    (and what diffusers' img2img pipelines do). ``strength`` 0 returns no
    timesteps (the input comes back unchanged), 1 the whole schedule.

    Parameters
    ----------
    scheduler : diffusers scheduler
        Its ``set_timesteps`` is called with ``steps``.
    steps : int
        Steps of the whole schedule.
    strength : float
        ϑ of the α guidance (section 3.3), in [0, 1].

    Returns
    -------
    torch.Tensor of shape (round(strength * steps),), int
        The timesteps to run, in decreasing order.

    Raises
    ------
    ValueError
        When ``strength`` lies outside [0, 1].
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must lie in [0, 1], got {strength}")
    scheduler.set_timesteps(steps)
    run = int(round(strength * steps))
    return scheduler.timesteps[steps - run :] if run else scheduler.timesteps[:0]


def clip_generators(seed: int, keys: list[int], device: torch.device) -> list[torch.Generator]:
    """One generator per clip, seeded by ``(seed, key)``: a clip's noise does not depend on
    which other clips share its batch.

    Parameters
    ----------
    seed : int
        The run's seed.
    keys : list of int
        One key per clip (e.g. :func:`~pipeline.generation.stages.clip_keys`).
    device : torch.device
        Unused: the generators are on the CPU, so noise is the same on any device.

    Returns
    -------
    list of torch.Generator
        One CPU generator per key.
    """
    generators = []
    for key in keys:
        state = int(np.random.SeedSequence([seed, int(key)]).generate_state(1)[0])
        generators.append(torch.Generator(device="cpu").manual_seed(state))
    return generators


def seeded_noise(
    shape: tuple[int, ...], generators: list[torch.Generator], device, dtype
) -> torch.Tensor:
    """Standard normal noise of ``(len(generators), *shape)``, one generator per row.

    Parameters
    ----------
    shape : tuple of int
        Shape of one row.
    generators : list of torch.Generator
        One per row (:func:`clip_generators`).
    device : torch.device
        Where the noise goes.
    dtype : torch.dtype
        Its precision (drawn in float32 first).

    Returns
    -------
    torch.Tensor of shape (len(generators), *shape)
    """
    rows = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=device, dtype=dtype)


#: Images per VAE call. The VAE works image by image; on a CPU, 64 frames of 112 px in
#: one call take 2.2x as long as in four calls of 16 (bench/bench_videos.py).
VAE_CHUNK = 16


@torch.no_grad()
def encode_images(vae, images: np.ndarray, device, dtype, chunk: int = VAE_CHUNK) -> torch.Tensor:
    """uint8 ``(n, h, w, 3)`` → scaled VAE latents ``(n, c, h/f, w/f)`` (the posterior mode).

    Parameters
    ----------
    vae : diffusers AutoencoderKL
        The VAE, with downsampling factor f.
    images : ndarray of shape (n, h, w, 3), uint8
        RGB images.
    device : torch.device
        The VAE's device.
    dtype : torch.dtype
        The VAE's precision.
    chunk : int
        Images per VAE call.

    Returns
    -------
    torch.Tensor of shape (n, c, h / f, w / f), dtype
        Latents times ``vae.config.scaling_factor``.
    """
    parts = []
    for i in range(0, len(images), chunk):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + chunk])).to(device)
        x = x.permute(0, 3, 1, 2).to(dtype).div(127.5).sub(1.0)
        parts.append(vae.encode(x).latent_dist.mode())
    return torch.cat(parts) * vae.config.scaling_factor


@torch.no_grad()
def decode_images(vae, latents: torch.Tensor, chunk: int = VAE_CHUNK) -> np.ndarray:
    """Scaled VAE latents ``(n, c, h, w)`` → uint8 images ``(n, H, W, 3)``.

    Parameters
    ----------
    vae : diffusers AutoencoderKL
        The VAE, with upsampling factor f.
    latents : torch.Tensor of shape (n, c, h, w)
        Latents times ``vae.config.scaling_factor``.
    chunk : int
        Latents per VAE call.

    Returns
    -------
    ndarray of shape (n, f h, f w, 3), uint8
        RGB images, on the CPU.
    """
    parts = []
    for z in latents.split(chunk):
        x = vae.decode(z.to(vae.dtype) / vae.config.scaling_factor).sample.float()
        x = x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
        parts.append(x.permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(parts)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, h, w, 3) → uint8 (n, size, size, 3), bilinear with antialiasing.

    Parameters
    ----------
    images : ndarray of shape (n, h, w, 3), uint8
        RGB images.
    size : int
        The target side, in pixels.

    Returns
    -------
    ndarray of shape (n, size, size, 3), uint8
        ``images`` itself when already of that size.
    """
    if images.shape[1:3] == (size, size):
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
