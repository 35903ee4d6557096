"""Multi-fMRI fusion (paper §3.4): which neighbouring test clips continue one another.

A shallow MLP reads the CLIP image embeddings of two neighbouring keyframes
and predicts whether they show the same class of object. It is trained on
pairs of neighbouring *training* clips, whose label says whether their
ground-truth keyframes share the frame classifier's top-1 class. On the test
clips, runs of neighbours it calls "same" become chains of at most
``max_chain`` clips (3 in the paper: 6 s); within a chain each later clip is
regenerated from the last frame of the video before it, and the chain is
written as one continuous video.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "FusionClassifier",
    "FusionSettings",
    "fusion_chains",
    "neighbour_pairs",
    "train_fusion",
]


class FusionClassifier(nn.Module):
    """``[a, b, |a - b|, a * b]`` of two L2-normalised embeddings → logit of "same class"."""

    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(4 * dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = nn.functional.normalize(a.float(), dim=-1)
        b = nn.functional.normalize(b.float(), dim=-1)
        return self.net(torch.cat([a, b, (a - b).abs(), a * b], dim=-1)).squeeze(-1)


def neighbour_pairs(segments, clips) -> np.ndarray:
    """Index pairs ``(i, j)`` of consecutive clips of the same segment, in the given order."""
    segments, clips = np.asarray(segments), np.asarray(clips)
    order = np.lexsort((clips, segments))
    pairs = [
        (i, j)
        for i, j in zip(order[:-1], order[1:], strict=True)
        if segments[i] == segments[j] and clips[j] == clips[i] + 1
    ]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


@dataclass(frozen=True)
class FusionSettings:
    hidden: int = 256
    dropout: float = 0.1
    epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    seed: int = 0


def train_fusion(
    a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, settings: FusionSettings
) -> tuple[FusionClassifier, list[float]]:
    """Fit the classifier with class-balanced BCE; returns it (eval mode) and the epoch losses."""
    torch.manual_seed(settings.seed)
    model = FusionClassifier(a.shape[1], settings.hidden, settings.dropout)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    labels = labels.float()
    positive = labels.mean().clamp(1e-3, 1 - 1e-3)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=(1 - positive) / positive)
    generator = torch.Generator().manual_seed(settings.seed)
    losses = []
    for _ in range(settings.epochs):
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        model.train()
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            loss = loss_fn(model(a[idx], b[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(order))
    return model.eval(), losses


def fusion_chains(
    same: np.ndarray, pairs: np.ndarray, n_clips: int, max_chain: int = 3
) -> list[list[int]]:
    """Chains of clip indices joined where ``same[k]`` holds for neighbour pair ``pairs[k]``.

    Walking each segment forward, a clip joins the chain of its predecessor
    when the pair is "same" and the chain has fewer than ``max_chain`` clips;
    otherwise it starts a new chain. Every clip is in exactly one chain.
    """
    if max_chain < 1:
        raise ValueError(f"max_chain must be at least 1, got {max_chain}")
    joins = {int(j): int(i) for (i, j), s in zip(pairs, same, strict=True) if s}
    chain_of: dict[int, list[int]] = {}
    chains: list[list[int]] = []
    successors = {int(i): int(j) for i, j in pairs}
    predecessors = set(successors.values())
    starts = [c for c in range(n_clips) if c not in predecessors]
    for start in starts:
        clip: int | None = start
        while clip is not None:
            previous = joins.get(clip)
            if previous is not None and len(chain_of[previous]) < max_chain:
                chain = chain_of[previous]
                chain.append(clip)
            else:
                chain = [clip]
                chains.append(chain)
            chain_of[clip] = chain
            clip = successors.get(clip)
    return chains
