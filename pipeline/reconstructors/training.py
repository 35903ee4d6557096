"""The training loop of both reconstructors: in-memory data, checkpoints, resume, metrics.

Every epoch is reproducible on its own: the sample order comes from a
generator seeded with ``(seed, epoch)`` and the global torch seed (dropout)
is reset to ``seed + epoch`` at its start. A checkpoint holds the model
(safetensors), the optimizer and one-cycle schedule (``torch.save``, read
back with ``weights_only=True``) and the metrics so far, so a run resumed
after an interruption continues exactly where the last checkpoint left it.

Checkpoints live outside the rule's declared output (``checkpoint_dir``):
Snakemake removes an incomplete output before rerunning a job, and the
checkpoints must survive that. They are only reused when their identity —
the exact training configuration and inputs — matches.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from pipeline.models.loading import autocast, load_tensors, resolve_dtype

__all__ = [
    "TrainSettings",
    "one_cycle",
    "plot_losses",
    "remove_checkpoints",
    "train",
    "write_metrics",
]

log = logging.getLogger(__name__)

_STATE = "state.json"


@dataclass(frozen=True)
class TrainSettings:
    """AdamW + one-cycle schedule settings of one training phase."""

    epochs: int
    batch_size: int
    lr: float = 3e-4
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    pct_start: float = 0.1
    seed: int = 0
    #: autocast precision on the device (``float32``: none; ``float16`` adds a gradient
    #: scaler, as Accelerate's fp16 mixed precision does)
    precision: str = "float32"


#: ``load(batch_indices, epoch) -> batch``: gathers one batch (timed as data loading)
LoadFn = Callable[[torch.Tensor, int], Any]
#: ``step(batch, epoch) -> {"loss": tensor, other parts...}``
StepFn = Callable[[Any, int], dict[str, torch.Tensor]]
#: ``evaluate(epoch) -> {metric: float}``, run after every epoch in eval mode
EvalFn = Callable[[int], dict[str, float]]


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)


def one_cycle(optimizer, max_lr: float, total_steps: int, pct_start: float):
    """torch's ``OneCycleLR`` over ``total_steps``, warming up for ``pct_start`` of them.

    A warm-up of exactly one step (``pct_start * total_steps == 1``, e.g. 10 steps at
    0.1) makes ``OneCycleLR`` divide by zero at the first step, since its warm-up phase
    then ends at step 0. It is given one and a half steps instead: the warm-up still ends
    before step 1, which runs at the highest rate of the schedule.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    max_lr : float
        The peak learning rate.
    total_steps : int
        Optimiser steps of the whole training.
    pct_start : float
        Fraction of the steps spent warming up.

    Returns
    -------
    torch.optim.lr_scheduler.OneCycleLR
    """
    if pct_start * total_steps == 1:
        pct_start = 1.5 / total_steps
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start
    )


def train(
    model: nn.Module,
    load: LoadFn,
    step: StepFn,
    n_samples: int,
    settings: TrainSettings,
    *,
    checkpoint_dir: str | os.PathLike,
    identity: dict,
    evaluate: EvalFn | None = None,
    device: torch.device | str = "cpu",
    desc: str = "training",
    stop_after_epoch: int | None = None,
    checkpoint_every: int = 1,
) -> list[dict]:
    """Train the parameters of ``model`` that require gradients; return per-epoch metrics.

    Parameters
    ----------
    model : torch.nn.Module
        The model, on ``device``; only its parameters that require gradients train.
    load : callable
        ``load(batch_indices, epoch) -> batch``: gathers the batch of the given
        sample indices, int64 (batch_size,) (from memory, onto the device); its time
        is the ``data_fraction`` of the metrics.
    step : callable
        ``step(batch, epoch) -> {"loss": tensor, ...}``: computes the losses of one
        loaded batch in train mode; this function does the backward pass and the
        optimizer step.
    n_samples : int
        Training samples; an epoch is ``n_samples // batch_size`` steps (at least one).
    settings : TrainSettings
        AdamW and one-cycle schedule settings, epochs, batch size, seed, precision.
    checkpoint_dir : str or PathLike
        Where the checkpoint goes and is resumed from.
    identity : dict
        JSON-serialisable description of the run (configuration, input
        provenance); a checkpoint with a different identity is discarded.
    evaluate : callable, optional
        ``evaluate(epoch) -> {metric: float}``, run after every epoch in eval mode.
    device : torch.device or str
        Where the model is.
    desc : str
        Label of the progress bar and the log lines.
    stop_after_epoch : int, optional
        Return after this epoch (with its checkpoint written), as if the job
        had been interrupted there; for tests and for time-limited jobs.
    checkpoint_every : int
        Epochs between checkpoints; the last epoch (and ``stop_after_epoch``)
        always writes one. Only the newest is kept. It is not part of the
        identity: a run may resume with another interval.

    Returns
    -------
    list of dict
        One row per epoch run so far, resumed ones included: the epoch, learning
        rate, the mean of every loss part (``train_*``), the evaluation metrics, the
        epoch's wall time (``seconds``), ``samples_per_s`` and the fraction of step
        time spent assembling batches (``data_fraction``).

    Raises
    ------
    FloatingPointError
        When an epoch's mean loss is not finite.
    """
    device = torch.device(device)
    checkpoint_dir = Path(checkpoint_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = max(1, n_samples // settings.batch_size)
    batch_size = min(settings.batch_size, n_samples)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = one_cycle(
        optimizer, settings.lr, settings.epochs * steps_per_epoch, settings.pct_start
    )
    dtype = resolve_dtype(settings.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    identity = json.loads(json.dumps(identity | {"train_settings": asdict(settings)}))
    rows, start = _resume(checkpoint_dir, identity, model, optimizer, schedule)
    if start:
        log.info("%s: resumed from the checkpoint of epoch %d in %s", desc, start, checkpoint_dir)
    progress = tqdm(range(start, settings.epochs), desc=desc, unit="epoch", initial=start)
    for epoch in progress:
        torch.manual_seed(settings.seed + epoch)
        order = _epoch_order(n_samples, settings.seed, epoch)
        model.train()
        sums: dict[str, float] = {}
        data_s = step_s = 0.0
        started = time.perf_counter()
        for i in range(steps_per_epoch):
            t0 = time.perf_counter()
            batch = load(order[i * batch_size : (i + 1) * batch_size], epoch)
            t1 = time.perf_counter()
            with autocast(device, dtype):
                losses = step(batch, epoch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.unscale_(optimizer)
            if settings.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, settings.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            data_s += t1 - t0
            step_s += time.perf_counter() - t1
        if not all(math.isfinite(v) for v in sums.values()):
            raise FloatingPointError(f"{desc}: non-finite loss in epoch {epoch + 1}: {sums}")
        row = {"epoch": epoch + 1, "lr": schedule.get_last_lr()[0]}
        row |= {f"train_{k}": v / steps_per_epoch for k, v in sums.items()}
        if evaluate is not None:
            model.eval()
            with torch.no_grad(), autocast(device, dtype):
                row |= evaluate(epoch)
        seconds = time.perf_counter() - started
        row |= {
            "seconds": seconds,
            "samples_per_s": steps_per_epoch * batch_size / max(data_s + step_s, 1e-9),
            "data_fraction": data_s / max(data_s + step_s, 1e-9),
        }
        rows.append(row)
        progress.set_postfix(loss=f"{row['train_loss']:.4f}")
        log.info("%s epoch %d: %s", desc, epoch + 1, _format(row))
        stopping = stop_after_epoch is not None and epoch + 1 >= stop_after_epoch
        if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == settings.epochs or stopping:
            _save(checkpoint_dir, identity, model, optimizer, schedule, rows)
        if stopping:
            break
    progress.close()
    return rows


def _format(row: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def _save(directory: Path, identity, model, optimizer, schedule, rows) -> None:
    """Write epoch-numbered files, then switch ``state.json`` to them atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    epoch = rows[-1]["epoch"]
    weights, opt = f"epoch-{epoch:04d}.safetensors", f"epoch-{epoch:04d}.optim.pt"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / weights)
    torch.save(
        {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, directory / opt
    )
    record = {"identity": identity, "epoch": epoch, "weights": weights, "optim": opt, "rows": rows}
    tmp = directory / f".{_STATE}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, directory / _STATE)
    for old in directory.glob("epoch-*"):
        if old.name not in (weights, opt):
            old.unlink()


def remove_checkpoints(directory: str | os.PathLike) -> None:
    """Remove a finished training's checkpoints once its model directory is written: at
    paper size they hold the weights and AdamW's two moments, about 25 GB per model.

    Parameters
    ----------
    directory : str or PathLike
        The checkpoint directory; nothing happens when it does not exist.
    """
    directory = Path(directory)
    if directory.exists():
        size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        shutil.rmtree(directory)
        log.info("removed the checkpoints in %s (%.1f MB)", directory, size / 1e6)


def _resume(directory: Path, identity, model, optimizer, schedule) -> tuple[list[dict], int]:
    path = directory / _STATE
    if not path.exists():
        return [], 0
    record = json.loads(path.read_text())
    if record.get("identity") != identity:
        log.info("checkpoint in %s is from a different configuration; starting afresh", directory)
        shutil.rmtree(directory)
        return [], 0
    model.load_state_dict(load_file(directory / record["weights"]))
    saved = load_tensors(directory / record["optim"])
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    return record["rows"], record["epoch"]


def write_metrics(rows: list[dict], path: str | os.PathLike) -> None:
    """Per-epoch metrics as CSV (one column per key seen in any row).

    Parameters
    ----------
    rows : list of dict
        One row per epoch (or per item); missing keys are empty cells.
    path : str or PathLike
        The CSV file.
    """
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def plot_losses(rows: list[dict], path: str | os.PathLike, title: str) -> None:
    """Loss curves (every ``train_*`` and ``test_*`` loss column) against the epoch, as PNG.

    Parameters
    ----------
    rows : list of dict
        Per-epoch rows with ``epoch`` and loss columns.
    path : str or PathLike
        The PNG file (600 x 400 pixels).
    title : str
        The figure's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in rows]
    # every loss column of any row: the phases of a model may log different losses
    keys = dict.fromkeys(k for row in rows for k in row)
    columns = [k for k in keys if k.startswith(("train_", "test_")) and "top1" not in k]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key in columns:
        ax.plot(epochs, [row.get(key, np.nan) for row in rows], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if all(r[c] > 0 for r in rows for c in columns if c in r) else "linear")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
