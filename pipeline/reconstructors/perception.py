"""Perception Reconstructor: fMRI → the VAE latents of a clip's N_f frames (a blurry video).

Paper §3.1 and the official architecture (github gongzix/NeuroClips): an
*Inception Extension* turns one fMRI vector into N_f vectors; each goes through a ridge layer and
residual MLP blocks to a small feature map; *Temporal Upsampling* grows it to
the VAE latent size in stages that each mix a spatial layer (convolution and
spatial self-attention) with temporal self-attention across the N_f frames of
the clip, ``eta * spatial + (1 - eta) * temporal`` with a learnable ``eta``
initialised to 1. Temporal attention spans exactly one clip's frames, in
training and in inference alike (the official code spans 40 clips in training
and 10 in inference).

Loss (eq. 1): MAE between predicted and true latents + bidirectional InfoNCE
between them (temperature ``tau``, weight ``contrastive_weight``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.reconstructors.layers import Attention, ResidualMLP, info_nce

__all__ = ["PerceptionConfig", "PerceptionReconstructor", "pr_loss"]


@dataclass(frozen=True)
class PerceptionConfig:
    """Architecture of a Perception Reconstructor.

    ``n_voxels``, ``n_frames`` and ``latent_shape`` come from the data (the
    aligned store and the VAE cache); the widths from the preset and config.

    Raises
    ------
    ValueError
        When the latent height or width is not divisible by ``2 ** upsamplings``.
    """

    n_voxels: int
    n_frames: int
    latent_shape: tuple[int, int, int]  # (channels, height, width) of one frame's latent
    extension_width: int = 256
    extension_blocks: int = 1
    hidden: int = 4096
    blocks: int = 4
    channels: int = 64
    upsamplings: int = 2
    heads: int = 4
    attention_max_size: int = 14
    dropout: float = 0.15

    def __post_init__(self):
        _, h, w = self.latent_shape
        factor = 2**self.upsamplings
        if h % factor or w % factor:
            raise ValueError(
                f"latent size {h}x{w} is not divisible by 2^upsamplings = {factor}; "
                "change the reconstructor's `upsamplings`"
            )
        object.__setattr__(self, "latent_shape", tuple(self.latent_shape))

    @property
    def base_size(self) -> tuple[int, int]:
        """tuple of int: (height, width) of the feature map before Temporal Upsampling,
        the latent's divided by ``2 ** upsamplings``."""
        _, h, w = self.latent_shape
        return h // 2**self.upsamplings, w // 2**self.upsamplings

    def to_dict(self) -> dict:
        """The configuration as JSON-ready fields (``latent_shape`` a list).

        Returns
        -------
        dict
        """
        return asdict(self) | {"latent_shape": list(self.latent_shape)}


class InceptionExtension(nn.Module):
    """One fMRI vector → ``n_frames`` fMRI-sized vectors (a shallow MLP)."""

    def __init__(self, n_voxels: int, n_frames: int, width: int, blocks: int, dropout: float):
        super().__init__()
        self.n_frames = n_frames
        self.inp = nn.Sequential(nn.Linear(n_voxels, width), nn.GELU(), nn.Dropout(dropout))
        self.blocks = nn.Sequential(*(ResidualMLP(width, dropout) for _ in range(blocks)))
        self.out = nn.Linear(width, n_frames * n_voxels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.out(self.blocks(self.inp(x)))
        return y.view(len(x), self.n_frames, -1)


class _ConvBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        groups = math.gcd(32, channels)
        self.net = nn.Sequential(
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class TemporalStage(nn.Module):
    """Spatial layer (conv + spatial attention) mixed with temporal attention by ``eta``."""

    def __init__(self, channels: int, heads: int, n_frames: int, spatial_attention: bool):
        super().__init__()
        self.n_frames = n_frames
        self.conv = _ConvBlock(channels)
        self.spatial = Attention(channels, heads) if spatial_attention else None
        self.temporal = Attention(channels, heads)
        self.eta = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (clips * frames, channels, h, w), the frames of a clip adjacent."""
        bf, c, h, w = x.shape
        x = self.conv(x)
        if self.spatial is not None:
            tokens = self.spatial(x.flatten(2).transpose(1, 2))  # (bf, h*w, c)
            x = tokens.transpose(1, 2).reshape(bf, c, h, w)
        # temporal attention: one sequence of n_frames per clip and position
        seq = x.view(bf // self.n_frames, self.n_frames, c, h * w).permute(0, 3, 1, 2)
        seq = self.temporal(seq.reshape(-1, self.n_frames, c))
        temporal = seq.view(-1, h * w, self.n_frames, c).permute(0, 2, 3, 1).reshape(bf, c, h, w)
        return self.eta * x + (1 - self.eta) * temporal


class PerceptionReconstructor(nn.Module):
    """fMRI (batch, voxels) → latents (batch, frames, channels, height, width).

    Parameters
    ----------
    config : PerceptionConfig
        The architecture.
    """

    def __init__(self, config: PerceptionConfig):
        super().__init__()
        self.config = config
        c = config
        self.extension = InceptionExtension(
            c.n_voxels, c.n_frames, c.extension_width, c.extension_blocks, c.dropout
        )
        self.ridge = nn.Linear(c.n_voxels, c.hidden)
        self.backbone = nn.Sequential(*(ResidualMLP(c.hidden, c.dropout) for _ in range(c.blocks)))
        bh, bw = c.base_size
        self.to_map = nn.Sequential(
            nn.LayerNorm(c.hidden), nn.Linear(c.hidden, c.channels * bh * bw), nn.Dropout(c.dropout)
        )
        self.stages = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for stage in range(c.upsamplings + 1):
            size = max(bh, bw) * 2**stage
            self.stages.append(
                TemporalStage(c.channels, c.heads, c.n_frames, size <= c.attention_max_size)
            )
            if stage < c.upsamplings:
                self.upsample.append(nn.Conv2d(c.channels, c.channels, 3, padding=1))
        self.out = nn.Sequential(
            nn.GroupNorm(math.gcd(32, c.channels), c.channels),
            nn.SiLU(),
            nn.Conv2d(c.channels, c.latent_shape[0], 3, padding=1),
        )

    def forward(self, fmri: torch.Tensor) -> torch.Tensor:
        """The blurry video's VAE latents predicted from fMRI (section 3.1).

        Parameters
        ----------
        fmri : torch.Tensor of shape (batch, n_voxels)
            Aligned fMRI samples.

        Returns
        -------
        torch.Tensor of shape (batch, n_frames, channels, height, width)
            One VAE latent per frame (``config.latent_shape``), scaled like the VAE cache.
        """
        c = self.config
        b = len(fmri)
        x = self.backbone(self.ridge(self.extension(fmri)))  # (b, frames, hidden)
        x = self.to_map(x).view(b * c.n_frames, c.channels, *c.base_size)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.upsample):
                x = self.upsample[i](F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.out(x).view(b, c.n_frames, *c.latent_shape)


def pr_loss(
    pred: torch.Tensor, target: torch.Tensor, temperature: float, contrastive_weight: float
) -> dict[str, torch.Tensor]:
    """Eq. 1: MAE + ``contrastive_weight`` × bidirectional InfoNCE over the clips of the batch.

    Parameters
    ----------
    pred, target : torch.Tensor of shape (batch, n_frames, channels, height, width)
        Predicted and cached VAE latents of the clips' frames.
    temperature : float
        τ of the InfoNCE logits.
    contrastive_weight : float
        Weight of the InfoNCE term.

    Returns
    -------
    dict of str to torch.Tensor
        Scalars ``loss`` (what is minimised), ``mae`` and ``nce``.
    """
    mae = F.l1_loss(pred.float(), target.float())
    nce = info_nce(pred, target, temperature)
    return {"loss": mae + contrastive_weight * nce, "mae": mae, "nce": nce}
