"""Fitting the tiny preset's VAE to the stimulus frames, so its latents decode to images.

The Stable Diffusion VAE of the paper preset was trained on natural images; the
tiny preset's VAE starts random, so the ``tiny_models`` rule fits it to the
training stimuli's frames (random crops, L1 reconstruction + a small KL term,
as in the LDM autoencoder without its adversarial part) and records how well it
reconstructs held-out frames.

A third term asks the decoder to map a mix of latents to the same mix of the
images, ``decode(Σ w_i z_i) ≈ Σ w_i x_i`` with weights ``w`` drawn from a
Dirichlet distribution over the frames of the batch. A regression from fMRI
predicts something like an average of the latents it cannot tell apart;
without the term such averages decode to artefacts. On the demo the decoded
mean training latent scored SSIM 0.556 against the test frames where the mean
training frame scores 0.640; mixing pairs of latents raised it to 0.636. On the
small demo at 64 px (bench/bench_blurry.py; 300 steps), mixing the whole batch
with concentration 0.2 — from near-single frames to broad averages — instead
of pairs raised the decoded mean latent from 0.257 to 0.267 and a ridge
read-out of the fMRI in latent space from 0.278 to 0.288, for a held-out round
trip of 0.495 instead of 0.504.

Crops are 32 pixels a side, a quarter of the cost of 64, so that twice the
steps cost half as much. On the small demo (64 px, 80 test clips;
bench/bench_blurry.py, and pipeline/evaluation/showcase.py's clip
identification), 600 steps of 32-pixel crops
gave blurry frames of SSIM 0.279 against 0.270 for the mean training frame,
and told 58 % of the clips apart by colour histogram, where 300 steps of
64-pixel crops had told 51 % (chance). A mixing weight of 0.2 kept more
colour (66 %) but lost to the mean frame (0.260): the term is what keeps the
decoded averages clean.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity
from tqdm.auto import tqdm

__all__ = ["MIX_CONCENTRATION", "encode_frames", "fit_vae", "reconstruction_ssim"]

#: Dirichlet concentration of the latent-mixing term's weights (module docstring).
MIX_CONCENTRATION = 0.2


def _to_model(frames: np.ndarray) -> torch.Tensor:
    """uint8 (n, h, w, 3) → float (n, 3, h, w) in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _to_image(x: torch.Tensor) -> np.ndarray:
    return x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()


def fit_vae(
    vae,
    frames: np.ndarray,
    steps: int,
    seed: int = 0,
    crop: int = 32,
    batch_size: int = 16,
    lr: float = 2e-3,
    kl_weight: float = 1e-6,
    mix_weight: float = 1.0,
    mix_concentration: float = MIX_CONCENTRATION,
):
    """Fit ``vae`` (a diffusers ``AutoencoderKL``) to random crops of ``frames``.

    Parameters
    ----------
    vae : diffusers.AutoencoderKL
        Trained in place, on the CPU, in float32; left in eval mode without gradients.
    frames : ndarray of shape (n_frames, height, width, 3), uint8
    steps : int
        Optimisation steps (AdamW, cosine learning-rate decay).
    seed : int
        Seeds the crops, the mixing weights and the posterior samples.
    crop : int
        Side of the square training crops, pixels (the VAE is fully convolutional).
    batch_size : int
        Crops per step.
    lr : float
        Initial learning rate.
    kl_weight : float
        Weight of the KL term.
    mix_weight : float
        Weight of the latent-mixing consistency term (see the module docstring).
    mix_concentration : float
        Dirichlet concentration of the mixing weights: small values mix few
        frames, large ones give near-uniform averages of the batch.

    Returns
    -------
    list of float
        The loss of every step.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n, h, w, _ = frames.shape
    crop = min(crop, h, w)
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    losses = []
    for _ in tqdm(range(steps), desc="fit tiny VAE", unit="step"):
        idx = rng.integers(0, n, batch_size)
        ys = rng.integers(0, h - crop + 1, batch_size)
        xs = rng.integers(0, w - crop + 1, batch_size)
        batch = np.stack(
            [frames[i, y : y + crop, x : x + crop] for i, y, x in zip(idx, ys, xs, strict=True)]
        )
        x = _to_model(batch)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample()
        recon = vae.decode(z).sample
        loss = (recon - x).abs().mean() + kl_weight * posterior.kl().mean()
        if mix_weight > 0:
            weights = torch.from_numpy(
                rng.dirichlet(np.full(len(x), mix_concentration), len(x)).astype(np.float32)
            )
            mixed = vae.decode(torch.einsum("ij,jchw->ichw", weights, z)).sample
            target = torch.einsum("ij,jchw->ichw", weights, x)
            loss = loss + mix_weight * (mixed - target).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    vae.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def encode_frames(vae, frames: np.ndarray, batch_size: int = 32) -> torch.Tensor:
    """Latent means (``latent_dist.mode()``, unscaled) of uint8 frames, in batches.

    Parameters
    ----------
    vae : diffusers.AutoencoderKL
        On the CPU, float32.
    frames : ndarray of shape (n_frames, height, width, 3), uint8
    batch_size : int
        Frames per encoder call.

    Returns
    -------
    torch.Tensor of shape (n_frames, latent_channels, height / f, width / f), float32
        ``f`` is the VAE's downsampling factor.
    """
    return torch.cat(
        [
            vae.encode(_to_model(frames[i : i + batch_size])).latent_dist.mode()
            for i in range(0, len(frames), batch_size)
        ]
    )


@torch.no_grad()
def reconstruction_ssim(vae, frames: np.ndarray, batch_size: int = 32) -> float:
    """Mean SSIM (skimage, RGB, data range 255) of frames against their VAE round trip.

    Parameters
    ----------
    vae : diffusers.AutoencoderKL
        On the CPU, float32.
    frames : ndarray of shape (n_frames, height, width, 3), uint8
    batch_size : int
        Frames per encoder call.

    Returns
    -------
    float
        SSIM averaged over the frames, in [-1, 1].
    """
    scores = []
    for i in range(0, len(frames), batch_size):
        batch = frames[i : i + batch_size]
        recon = _to_image(vae.decode(vae.encode(_to_model(batch)).latent_dist.mode()).sample)
        scores += [
            structural_similarity(a, b, channel_axis=-1, data_range=255)
            for a, b in zip(batch, recon, strict=True)
        ]
    return float(np.mean(scores))
