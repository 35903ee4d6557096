"""A trained model's directory: weights, exact configuration, metrics, loss curves."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.errors import StoreError
from pipeline.reconstructors.training import plot_losses, write_metrics

__all__ = ["read_model_dir", "write_model_dir"]

WEIGHTS, CONFIG, METRICS, CURVES = "model.safetensors", "config.json", "metrics.csv", "loss.png"


def write_model_dir(
    directory: str | os.PathLike,
    model: nn.Module,
    config: dict,
    rows: list[dict],
    title: str,
) -> None:
    """Write ``model.safetensors``, ``config.json``, ``metrics.csv`` and ``loss.png``.

    Parameters
    ----------
    directory : str or PathLike
        The model directory; created if needed.
    model : torch.nn.Module
        Its ``state_dict`` is saved, on the CPU.
    config : dict
        The exact configuration; ``n_parameters`` is added.
    rows : list of dict
        Per-epoch metrics (``metrics.csv`` and the curves of ``loss.png``).
    title : str
        The figure's title.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / WEIGHTS)
    n_params = sum(p.numel() for p in model.parameters())
    (directory / CONFIG).write_text(json.dumps(config | {"n_parameters": n_params}, indent=2))
    write_metrics(rows, directory / METRICS)
    plot_losses(rows, directory / CURVES, title)


def read_model_dir(
    directory: str | os.PathLike, stage: str, weights: str = WEIGHTS
) -> tuple[dict, dict]:
    """``(config, tensors)`` of a model directory written by ``stage``.

    Parameters
    ----------
    directory : str or PathLike
        The model directory.
    stage : str
        The stage that must have written it.
    weights : str
        The weights' file name.

    Returns
    -------
    config : dict
        ``config.json``.
    tensors : dict of str to torch.Tensor
        The weights, on the CPU.

    Raises
    ------
    StoreError
        When a file is missing or ``config.json`` names another stage.
    """
    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG).read_text())
        state = load_file(directory / weights)
    except FileNotFoundError as exc:
        raise StoreError(
            f"{directory}: not a complete model directory ({exc.filename} is missing); "
            f"run the {stage} rule"
        ) from None
    if config.get("stage") != stage:
        raise StoreError(f"{directory}: written by {config.get('stage')!r}, expected {stage!r}")
    return config, state


def load_into(
    build: Callable[[], nn.Module], state: dict[str, torch.Tensor], directory
) -> nn.Module:
    """The model that ``build`` makes, with its weights from ``state``, loaded strictly.

    The model is built on the meta device and takes the loaded tensors themselves
    (``assign=True``): the host holds one copy of the weights, not two (a
    2-billion-parameter Semantic Reconstructor is 8.6 GB in float32). A mismatch
    names the directory.
    """
    with torch.device("meta"):
        model = build()
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        raise StoreError(
            f"{directory}: weights do not fit the recorded architecture: {exc}"
        ) from None
    empty = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if empty:
        raise StoreError(f"{directory}: no weights for {empty[:5]}")
    return model
