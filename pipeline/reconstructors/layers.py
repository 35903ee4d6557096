"""Building blocks and losses shared by the Perception and Semantic Reconstructors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Attention",
    "ResidualMLP",
    "info_nce",
    "mix_like",
    "mix_samples",
    "bimixco_loss",
    "soft_clip_loss",
]


class ResidualMLP(nn.Module):
    """``x + Dropout(Linear(GELU(Linear(LayerNorm(x)))))``: the MLP block of the backbones.

    Parameters
    ----------
    width : int
        Width of the input and output.
    dropout : float
        Dropout probability before the second linear layer.
    """

    def __init__(self, width: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block applied to the last axis.

        Parameters
        ----------
        x : torch.Tensor of shape (..., width)

        Returns
        -------
        torch.Tensor of shape (..., width)
        """
        return x + self.net(x)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention over the second-to-last axis, with a residual.

    Input ``(batch, sequence, width)``; ``torch``'s fused scaled-dot-product
    kernel does the attention.

    Parameters
    ----------
    width : int
        Width of the tokens.
    heads : int
        Attention heads; must divide ``width``.

    Raises
    ------
    ValueError
        When ``heads`` does not divide ``width``.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention over the sequence, added to the input.

        Parameters
        ----------
        x : torch.Tensor of shape (batch, sequence, width)

        Returns
        -------
        torch.Tensor of shape (batch, sequence, width)
        """
        b, n, w = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, 3, self.heads, w // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.out(y.transpose(1, 2).reshape(b, n, w))


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(1).float(), dim=-1)


def _logits(p: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine logits ``p tᵀ / temperature`` in float32, also inside an autocast region.

    Autocast would run the matmul in bfloat16 / float16, whose 8-bit (bf16) mantissa
    puts errors of about 0.4 % on cosines that 1 / temperature (167 at τ = 0.006)
    then magnifies into the logits.
    """
    with torch.autocast(p.device.type, enabled=False):
        return p.float() @ t.float().T / temperature


def info_nce(pred: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Bidirectional InfoNCE: sample ``i`` of ``pred`` against all of ``target`` and back.

    Both inputs are flattened per sample and L2-normalised; the positive of
    row ``i`` is row ``i``.

    Parameters
    ----------
    pred, target : torch.Tensor of shape (n, ...)
        Paired embeddings, flattened to (n, d).
    temperature : float
        τ of the logits.

    Returns
    -------
    torch.Tensor, scalar, float32
        The mean of the two directions' cross-entropies.
    """
    p, t = _normalised(pred), _normalised(target)
    logits = _logits(p, t, temperature)
    labels = torch.arange(len(p), device=p.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def mix_samples(
    x: torch.Tensor, beta: torch.distributions.Beta, probability: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MixCo's input mixing: ``beta x + (1 - beta) x[perm]`` for a random ``select`` of samples.

    Returns ``(mixed, perm, betas, select)``; each sample is selected with
    ``probability`` and mixed with a random partner at a weight drawn from
    ``beta`` (global torch RNG, so a seeded epoch replays the same draws).

    Parameters
    ----------
    x : torch.Tensor of shape (b, ...)
        A batch of fMRI inputs.
    beta : torch.distributions.Beta
        Distribution of the mixing weights λ (eq. 7).
    probability : float
        Chance, in [0, 1], that a sample is mixed.

    Returns
    -------
    mixed : torch.Tensor of shape (b, ...)
        The batch after mixing (eq. 7); unselected samples unchanged.
    perm : torch.Tensor of shape (b,), int64
        Each sample's partner.
    betas : torch.Tensor of shape (b,)
        Each sample's weight on itself.
    select : torch.Tensor of shape (b,), bool
        Which samples were mixed.
    """
    b = len(x)
    perm = torch.randperm(b, device=x.device)
    betas = beta.sample((b,)).to(x.device)
    select = torch.rand(b, device=x.device) < probability
    return mix_like(x, perm, betas, select), perm, betas, select


def mix_like(
    x: torch.Tensor, perm: torch.Tensor, betas: torch.Tensor, select: torch.Tensor
) -> torch.Tensor:
    """``x`` mixed with the partners and weights of :func:`mix_samples` (e.g. the targets).

    Parameters
    ----------
    x : torch.Tensor of shape (b, ...)
        A batch to mix.
    perm, betas, select : torch.Tensor of shape (b,)
        As returned by :func:`mix_samples`.

    Returns
    -------
    torch.Tensor of shape (b, ...)
    """
    shape = (-1,) + (1,) * (x.dim() - 1)
    mixed = x * betas.view(shape) + x[perm] * (1 - betas.view(shape))
    return torch.where(select.view(shape), mixed, x)


def bimixco_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    perm: torch.Tensor,
    betas: torch.Tensor,
    select: torch.Tensor,
) -> torch.Tensor:
    """Appendix eq. 8 (:math:`\\mathcal{L}_{BiMixCo}`): bidirectional MixCo InfoNCE.

    ``pred`` was computed from inputs mixed as ``beta x + (1 - beta) x[perm]``
    where ``select``; its target distribution puts ``beta`` on its own target
    and ``1 - beta`` on the partner's. The backward direction (targets to
    predictions) uses the same soft labels, transposed.

    Parameters
    ----------
    pred : torch.Tensor of shape (n, ...)
        Embeddings of the mixed inputs; flattened to (n, d).
    target : torch.Tensor of shape (n, ...)
        The unmixed targets (e.g. CLIP image tokens (n, 256, 1664)).
    temperature : float
        τ of the logits.
    perm, betas, select : torch.Tensor of shape (n,)
        The mixing of :func:`mix_samples`.

    Returns
    -------
    torch.Tensor, scalar, float32
        The mean of the two directions' soft cross-entropies.
    """
    p, t = _normalised(pred), _normalised(target)
    logits = _logits(p, t, temperature)
    n = len(p)
    eye = torch.eye(n, device=p.device)
    weight = torch.where(select, betas, torch.ones_like(betas))[:, None]
    soft = eye * weight + eye[perm] * (1 - weight)
    forward = -(soft * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    backward = -(soft.T * F.log_softmax(logits.T, dim=-1)).sum(-1).mean()
    return (forward + backward) / 2


def soft_clip_loss(pred: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """SoftCLIP: the targets' own similarity distribution as soft labels, both directions.

    Parameters
    ----------
    pred, target : torch.Tensor of shape (n, ...)
        Paired embeddings, flattened to (n, d).
    temperature : float
        τ of the logits.

    Returns
    -------
    torch.Tensor, scalar, float32
        The mean of the two directions' soft cross-entropies.
    """
    p, t = _normalised(pred), _normalised(target)
    target_probs = F.softmax(_logits(t, t, temperature), dim=-1)
    logits = _logits(p, t, temperature)
    forward = -(target_probs * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    backward = -(target_probs * F.log_softmax(logits.T, dim=-1)).sum(-1).mean()
    return (forward + backward) / 2
