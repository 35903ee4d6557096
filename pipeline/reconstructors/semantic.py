"""Semantic Reconstructor: fMRI → CLIP image tokens of the keyframe (paper §3.2).

* **Backbone**: a ridge layer (voxels → hidden), residual MLP blocks and a
  linear map to ``n_tokens × width`` CLIP tokens; a **projector head** (per
  token) gives the embedding the contrastive loss aligns with the keyframe's
  CLIP tokens (the "fMRI embedding").
* **BiMixCo** for the first ``mixup_fraction`` of the epochs (fMRI samples mixed
  with weights λ ~ Beta(β, β), bidirectional soft InfoNCE), **SoftCLIP** after.
* **Diffusion prior** (DALL·E 2 style): a transformer denoiser over the
  tokens, conditioned on the fMRI embedding (dropped with probability
  ``condition_drop`` for classifier-free guidance), predicting the clean CLIP
  tokens under a cosine DDPM schedule from diffusers; MSE objective.
* **Reftm**: a frozen linear projector from the mean over tokens to the CLIP
  text space; InfoNCE against the text embedding of the keyframe's caption.
  The official projector (``coco_tokens_avg_proj.pth``) was fitted on COCO; here
  the same linear map is fitted by ridge regression on the training clips'
  own (tokens, caption embedding) pairs before training, then frozen.

Training follows the official two phases: alignment (backbone + projector,
``L_contrastive + μ L_Reftm``), then the prior with everything else frozen
(``δ L_Prior + μ L_Reftm`` on the prior's output).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.reconstructors.layers import ResidualMLP, info_nce

__all__ = ["DiffusionPrior", "SemanticConfig", "SemanticReconstructor", "fit_text_projector"]


@dataclass(frozen=True)
class SemanticConfig:
    """Architecture of a Semantic Reconstructor (data shapes + preset widths)."""

    n_voxels: int
    n_tokens: int
    width: int
    text_dim: int
    hidden: int = 4096
    blocks: int = 4
    projector_hidden: int = 2048
    dropout: float = 0.15
    prior_depth: int = 6
    prior_heads: int = 32
    prior_timesteps: int = 100
    condition_drop: float = 0.2

    def to_dict(self) -> dict:
        """The configuration as JSON-ready fields.

        Returns
        -------
        dict
        """
        return asdict(self)


class SemanticBackbone(nn.Module):
    """fMRI → (backbone tokens, projected fMRI embedding), both (batch, tokens, width)."""

    def __init__(self, c: SemanticConfig):
        super().__init__()
        self.config = c
        self.ridge = nn.Linear(c.n_voxels, c.hidden)
        self.blocks = nn.Sequential(*(ResidualMLP(c.hidden, c.dropout) for _ in range(c.blocks)))
        self.to_tokens = nn.Linear(c.hidden, c.n_tokens * c.width)
        self.projector = nn.Sequential(
            nn.LayerNorm(c.width),
            nn.GELU(),
            nn.Linear(c.width, c.projector_hidden),
            nn.LayerNorm(c.projector_hidden),
            nn.GELU(),
            nn.Linear(c.projector_hidden, c.projector_hidden),
            nn.LayerNorm(c.projector_hidden),
            nn.GELU(),
            nn.Linear(c.projector_hidden, c.width),
        )

    def forward(self, fmri: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.blocks(self.ridge(fmri))
        tokens = self.to_tokens(x).view(len(fmri), self.config.n_tokens, self.config.width)
        return tokens, self.projector(tokens)


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return F.pad(emb, (0, dim % 2))


class DiffusionPrior(nn.Module):
    """Transformer denoiser: (noisy tokens, timestep, fMRI embedding) → clean CLIP tokens.

    The sequence is ``[condition tokens, timestep token, noisy tokens]`` with
    learned position embeddings; the output is read at the noisy tokens'
    positions (``prediction_type='sample'``, as DALL·E 2's prior).

    Parameters
    ----------
    c : SemanticConfig
        Its ``n_tokens``, ``width``, ``prior_heads``, ``prior_depth``.

    Raises
    ------
    ValueError
        When ``prior_heads`` does not divide ``width``.
    """

    def __init__(self, c: SemanticConfig):
        super().__init__()
        if c.width % c.prior_heads:
            raise ValueError(f"prior width {c.width} is not divisible by {c.prior_heads} heads")
        self.config = c
        self.time = nn.Sequential(
            nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width)
        )
        self.null_condition = nn.Parameter(torch.zeros(c.n_tokens, c.width))
        self.positions = nn.Parameter(torch.randn(2 * c.n_tokens + 1, c.width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            c.width,
            c.prior_heads,
            dim_feedforward=4 * c.width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, c.prior_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.width)

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``drop``: boolean (batch,) mask of samples given the null condition instead.

        Parameters
        ----------
        noisy : torch.Tensor of shape (batch, n_tokens, width)
            CLIP tokens noised to ``timesteps``.
        timesteps : torch.Tensor of shape (batch,), int
            DDPM timesteps, in [0, prior_timesteps).
        condition : torch.Tensor of shape (batch, n_tokens, width)
            The fMRI embeddings.
        drop : torch.Tensor of shape (batch,), bool, optional
            Samples given the null condition (classifier-free guidance).

        Returns
        -------
        torch.Tensor of shape (batch, n_tokens, width)
            The predicted clean tokens.
        """
        if drop is not None:
            condition = torch.where(
                drop[:, None, None], self.null_condition.to(condition), condition
            )
        t = self.time(_timestep_embedding(timesteps, self.config.width).to(noisy.dtype))
        x = torch.cat([condition, t[:, None], noisy], dim=1) + self.positions
        x = self.transformer(x)
        return self.out(self.norm(x[:, -self.config.n_tokens :]))


def make_scheduler(timesteps: int):
    """diffusers DDPM scheduler with DALL·E 2's cosine schedule, predicting the clean sample."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="sample",
        clip_sample=False,
    )


class SemanticReconstructor(nn.Module):
    """Backbone + projector, diffusion prior and the frozen Reftm text projector.

    Parameters
    ----------
    config : SemanticConfig
        The architecture.
    """

    def __init__(self, config: SemanticConfig):
        super().__init__()
        self.config = config
        self.backbone = SemanticBackbone(config)
        self.prior = DiffusionPrior(config)
        # frozen (a buffer, not a parameter): fitted by fit_text_projector before training
        self.register_buffer("text_projection", torch.zeros(config.width, config.text_dim))
        self.scheduler = make_scheduler(config.prior_timesteps)

    def to_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Reftm's frozen projector: mean over tokens, then the fitted linear map.

        Parameters
        ----------
        tokens : torch.Tensor of shape (n, n_tokens, width)
            CLIP tokens (predicted or the prior's output).

        Returns
        -------
        torch.Tensor of shape (n, text_dim), float32
        """
        return tokens.float().mean(1) @ self.text_projection

    def reftm_loss(
        self, tokens: torch.Tensor, text: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        """Eq. 10 (:math:`\\mathcal{L}_{Reftm}`): bidirectional InfoNCE between the projected
        tokens (n, tokens, width) and the caption embeddings (n, text_dim).

        Parameters
        ----------
        tokens : torch.Tensor of shape (n, n_tokens, width)
            The prior's reconstructed tokens (or the backbone's).
        text : torch.Tensor of shape (n, text_dim)
            CLIP text embeddings of the keyframes' captions.
        temperature : float
            τ of the logits.

        Returns
        -------
        torch.Tensor, scalar, float32
        """
        return info_nce(self.to_text(tokens), text, temperature)

    def prior_loss(
        self, embedding: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 9 (:math:`\\mathcal{L}_{Prior}`), DALL·E 2's objective at a random timestep:
        ``(MSE, predicted clean tokens)``.

        Parameters
        ----------
        embedding : torch.Tensor of shape (n, n_tokens, width)
            The fMRI embeddings (the condition).
        target : torch.Tensor of shape (n, n_tokens, width)
            The keyframes' CLIP image tokens.

        Returns
        -------
        loss : torch.Tensor, scalar, float32
            The MSE.
        pred : torch.Tensor of shape (n, n_tokens, width)
            The predicted clean tokens.
        """
        b = len(target)
        t = torch.randint(0, self.config.prior_timesteps, (b,), device=target.device)
        noise = torch.randn_like(target)
        noisy = self.scheduler.add_noise(target, noise, t)
        drop = torch.rand(b, device=target.device) < self.config.condition_drop
        pred = self.prior(noisy, t, embedding, drop)
        return F.mse_loss(pred.float(), target.float()), pred

    @torch.no_grad()
    def sample(
        self,
        embedding: torch.Tensor,
        steps: int = 20,
        guidance: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Reconstructed CLIP tokens from fMRI embeddings (``steps`` steps, CFG ``guidance``).

        The sampler's state stays float32 under autocast; only the prior's layers are cast.

        Parameters
        ----------
        embedding : torch.Tensor of shape (n, n_tokens, width)
            The fMRI embeddings (the backbone's projector output).
        steps : int
            DDPM sampling steps.
        guidance : float
            Classifier-free guidance scale; 1 for none.
        generator : torch.Generator, optional
            A CPU generator for the initial noise and the sampler.

        Returns
        -------
        torch.Tensor of shape (n, n_tokens, width), float32
            The reconstruction-embeddings e^re of the keyframes (section 3.2).
        """
        scheduler = make_scheduler(self.config.prior_timesteps)
        scheduler.set_timesteps(steps, device=embedding.device)
        shape = (len(embedding), self.config.n_tokens, self.config.width)
        x = torch.randn(shape, generator=generator, device="cpu").to(embedding.device)
        for t in scheduler.timesteps:
            ts = torch.full((len(x),), int(t), device=x.device)
            pred = self.prior(x, ts, embedding)
            if guidance != 1.0:
                drop = torch.ones(len(x), dtype=torch.bool, device=x.device)
                uncond = self.prior(x, ts, embedding, drop)
                pred = uncond + guidance * (pred - uncond)
            x = scheduler.step(pred.float(), t, x, generator=generator).prev_sample
        return x


def fit_text_projector(
    mean_tokens: torch.Tensor, text: torch.Tensor, ridge: float = 1e-2
) -> torch.Tensor:
    """Least-squares map from mean CLIP tokens (n, width) to text embeddings (n, text_dim).

    Ridge penalty ``ridge × mean eigenvalue`` of the input covariance; fitted in float64.

    Parameters
    ----------
    mean_tokens : torch.Tensor of shape (n, width)
        The mean over tokens of the training clips' CLIP image tokens.
    text : torch.Tensor of shape (n, text_dim)
        CLIP text embeddings of their captions.
    ridge : float
        Relative ridge penalty.

    Returns
    -------
    torch.Tensor of shape (width, text_dim), float32
        The projection matrix (``SemanticReconstructor.text_projection``).
    """
    x, y = mean_tokens.double(), text.double()
    gram = x.T @ x
    penalty = ridge * torch.trace(gram) / len(gram)
    eye = torch.eye(len(gram), dtype=gram.dtype)
    return torch.linalg.solve(gram + penalty * eye, x.T @ y).float()
