"""One loader per library; every rule loads every model through these, offline.

The same code reads the ``paper`` preset's directories (hub repositories
fetched by ``download_models``) and the ``tiny`` preset's (written by
``tiny_models``). Weights are read from safetensors only, never from
unrestricted pickle.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import DataError, PipelineError

__all__ = [
    "CUDA_DRIVER",
    "DeviceError",
    "ModelNotFoundError",
    "EXECUTION",
    "autocast",
    "copy_weights",
    "load_tensors",
    "load_captioner",
    "load_clip",
    "load_image_classifier",
    "load_clip_vision",
    "load_video_classifier",
    "load_vae",
    "require_model",
    "resolve_device",
    "resolve_dtype",
]

#: OpenCLIP weight files in open_clip's order of preference (``factory._find_checkpoint_in_dir``).
CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors")

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelNotFoundError(PipelineError, FileNotFoundError):
    """A model directory is missing or incomplete."""


def load_tensors(path: str | os.PathLike, mmap: bool = False) -> Any:
    """A pickled checkpoint's tensors, through ``torch.load(weights_only=True)``.

    Pickles can run code when they are loaded; only tensors, containers and
    plain values are unpickled. Anything else (a class, a function such as
    ``os.system``) is refused with the file named, before it runs. With
    ``mmap`` the tensors stay in the file until read (checkpoints in torch's
    zip format; older ones are read whole).

    Parameters
    ----------
    path : path
        A pickled checkpoint.
    mmap : bool
        Memory-map the file instead of reading it whole.

    Returns
    -------
    object
        What the pickle holds (usually a dict of name to CPU ``torch.Tensor``).

    Raises
    ------
    DataError
        If the pickle holds anything other than tensors, containers and plain values.
    """
    import pickle

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if not mmap or "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(
            f"{path}: refused - the pickle holds more than tensors and plain values ({first}); "
            "checkpoints are loaded with weights_only=True"
        ) from None


def require_model(path: str | os.PathLike, marker: str) -> Path:
    """``path`` if it holds ``marker`` (a model directory), else a clear error saying which rule
    writes it.

    Parameters
    ----------
    path : path
        A model directory.
    marker : str
        A file the directory must hold, e.g. ``config.json``.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ModelNotFoundError
        If ``path / marker`` is not a file.
    """
    path = Path(path)
    if not (path / marker).is_file():
        raise ModelNotFoundError(
            f"{path}: no model here ({marker} missing). The paper preset's models are fetched "
            "by the `download_models`, `download_generation_models` and `download_classifiers` "
            "rules (run them where the network is reachable, e.g. a login node); the tiny "
            "preset's are written by the `tiny_models`, `tiny_generation_models` and "
            "`tiny_classifiers` rules."
        )
    return path


#: What the pinned torch build needs of the machine: its PyPI wheel is built for CUDA 13.0,
#: which needs an NVIDIA driver of the R580 series or newer (CUDA 13.0 release notes).
CUDA_DRIVER = "an NVIDIA driver of the R580 series or newer (CUDA 13.0)"


class DeviceError(PipelineError, RuntimeError):
    """The configured device is not there."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when present, else the CPU; a named CUDA device
    that torch cannot see is an error saying why (never a silent fall back to the CPU).

    Records the device in :data:`EXECUTION`.

    Parameters
    ----------
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:<index>``.

    Returns
    -------
    torch.device

    Raises
    ------
    DeviceError
        If a CUDA device is named but torch sees none, or not that index.
    """
    if device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r}: torch {torch.__version__} sees no CUDA device (its build "
                f"is for CUDA {torch.version.cuda}, which needs {CUDA_DRIVER}). The paper "
                "preset does not fall back to the CPU: run this stage on a GPU node, or set "
                "models.device: cpu to run it on the CPU anyway."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA devices are visible"
            )
    _record_device(resolved)
    return resolved


#: What this process's model stage runs on, filled as its device and dtype are resolved;
#: every store it writes records it in its provenance (``execution``).
EXECUTION: dict = {}


def _record_device(device: torch.device) -> None:
    EXECUTION.update(device=str(device), torch=torch.__version__, cuda=torch.version.cuda)
    if device.type == "cuda":
        EXECUTION["device_name"] = torch.cuda.get_device_name(device)
    log.info(
        "device %s%s, torch %s, CUDA %s",
        device,
        f" ({EXECUTION['device_name']})" if device.type == "cuda" else "",
        torch.__version__,
        torch.version.cuda,
    )


def resolve_dtype(name: str, device: torch.device | str | None = None) -> torch.dtype:
    """``float32``, ``float16`` or ``bfloat16`` → the torch dtype a stage computes in.

    On the CPU, ``float16`` becomes ``float32`` (logged): the paper preset's default
    precision is for GPUs, and half-precision kernels on the CPU are slow or missing.
    Records the dtype's name in :data:`EXECUTION`.

    Parameters
    ----------
    name : {'float32', 'float16', 'bfloat16'}
        The configured precision.
    device : torch.device or str, optional
        Where the stage runs; on the CPU float16 becomes float32.

    Returns
    -------
    torch.dtype

    Raises
    ------
    ValueError
        If ``name`` is not a known dtype.
    """
    try:
        dtype = _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; known: {sorted(_DTYPES)}") from None
    if dtype == torch.float16 and device is not None and torch.device(device).type == "cpu":
        log.warning("precision float16 runs as float32 on the CPU")
        name, dtype = "float32", torch.float32
    EXECUTION["dtype"] = name
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to ``dtype`` on ``device``; float32: none. The parameters stay float32, and
    the reconstructors' contrastive logits leave the autocast region (``layers._logits``).

    Parameters
    ----------
    device : torch.device
        Its ``type`` selects the autocast backend.
    dtype : torch.dtype
        The compute precision.

    Returns
    -------
    context manager
        ``torch.autocast``, or a no-op for float32.
    """
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def load_clip(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """OpenCLIP model and tokenizer from a directory laid out like an OpenCLIP hub repo.

    The directory holds ``open_clip_config.json`` and the weights as the hub
    repositories name them, ``open_clip_pytorch_model.safetensors`` (e.g.
    ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``; open_clip's own
    ``open_clip_model.safetensors`` is read too). The visual tower is set to
    also return its tokens (after ``ln_post``, CLS excluded, no projection).

    Parameters
    ----------
    path : path
        The model directory.
    device : torch.device or str
        Where the model is moved.
    dtype : torch.dtype
        Precision of the weights.

    Returns
    -------
    model : open_clip.CLIP
        In eval mode without gradients; ``model.visual(x)`` returns
        ``(pooled (n, embed_dim), tokens (n, n_tokens, width))``.
    tokenizer : callable
        list of str → token ids of shape (n, context_length), int64.

    Raises
    ------
    ModelNotFoundError
        If ``open_clip_config.json`` or the safetensors weights are missing.
    DataError
        If the weights do not fit the model.
    """
    import open_clip

    path = require_model(path, "open_clip_config.json")
    if not any((path / name).is_file() for name in CLIP_WEIGHTS):
        raise ModelNotFoundError(
            f"{path}: no {' or '.join(CLIP_WEIGHTS)} (safetensors only; open_clip would "
            "otherwise build the model with random weights)"
        )
    weights = next(path / name for name in CLIP_WEIGHTS if (path / name).is_file())
    # open_clip would read the whole file beside the model it built (20 GB of host memory
    # for ViT-bigG/14); the tensors are copied in one at a time instead
    model = open_clip.create_model(f"local-dir:{path}", load_weights=False)
    copy_weights(model, weights)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    model.visual.output_tokens = True
    return model, open_clip.get_tokenizer(f"local-dir:{path}")


def copy_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Copy a safetensors file's tensors into ``model``'s, one tensor in memory at a time;
    every tensor of the model's state must be in the file and no other.

    Parameters
    ----------
    model : torch.nn.Module
        Copied into in place (its dtype and device are kept).
    path : path
        A safetensors file.

    Raises
    ------
    DataError
        If names or shapes of the file's tensors differ from the model's.
    """
    from safetensors import safe_open

    state = model.state_dict()
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        missing, unexpected = sorted(set(state) - names), sorted(names - set(state))
        if missing or unexpected:
            raise DataError(
                f"{path}: does not fit the model (missing {missing[:5]}, unexpected "
                f"{unexpected[:5]})"
            )
        with torch.no_grad():
            for name in names:
                tensor = f.get_tensor(name)
                if tensor.shape != state[name].shape:
                    raise DataError(
                        f"{path}: {name} has shape {tuple(tensor.shape)}, the model "
                        f"{tuple(state[name].shape)}"
                    )
                state[name].copy_(tensor)


def load_vae(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
):
    """diffusers ``AutoencoderKL`` from a directory in diffusers layout (safetensors).

    Parameters
    ----------
    path : path
        The model directory (``config.json`` and weights).
    device : torch.device or str
        Where the model is moved.
    dtype : torch.dtype
        Precision of the weights.

    Returns
    -------
    diffusers.AutoencoderKL
        In eval mode, without gradients.

    Raises
    ------
    ModelNotFoundError
        If the directory or its ``config.json`` is missing.
    """
    from diffusers import AutoencoderKL

    path = require_model(path, "config.json")
    vae = AutoencoderKL.from_pretrained(
        path, use_safetensors=True, local_files_only=True, dtype=dtype
    )
    return vae.to(device).eval().requires_grad_(False)


def load_captioner(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """transformers BLIP-2 processor and model from a directory in transformers layout.

    Parameters
    ----------
    path : path
        The model directory (e.g. ``Salesforce/blip2-opt-2.7b``'s files).
    device : torch.device or str
        Where the model is moved.
    dtype : torch.dtype
        Precision of the weights.

    Returns
    -------
    processor : transformers.Blip2Processor
    model : transformers.Blip2ForConditionalGeneration
        In eval mode, without gradients.

    Raises
    ------
    ModelNotFoundError
        If the directory or its ``config.json`` is missing.
    """
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    path = require_model(path, "config.json")
    processor = Blip2Processor.from_pretrained(path, local_files_only=True)
    model = Blip2ForConditionalGeneration.from_pretrained(
        path, use_safetensors=True, local_files_only=True, dtype=dtype
    )
    return processor, model.to(device).eval().requires_grad_(False)


def load_image_classifier(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """transformers image processor and image-classification model (e.g. a ViT).

    Parameters
    ----------
    path : path
        The model directory in transformers layout.
    device : torch.device or str
        Where the model is moved.
    dtype : torch.dtype
        Precision of the weights.

    Returns
    -------
    processor : transformers.BaseImageProcessor
    model : transformers.PreTrainedModel
        An ``AutoModelForImageClassification``, in eval mode without gradients.

    Raises
    ------
    ModelNotFoundError
        If the directory or its ``config.json`` is missing.
    """
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    path = require_model(path, "config.json")
    processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageClassification.from_pretrained(
        path, use_safetensors=True, local_files_only=True, dtype=dtype
    )
    return processor, model.to(device).eval().requires_grad_(False)


def load_clip_vision(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """transformers CLIP image processor and image tower with its projection, from a whole
    CLIP model's directory in transformers layout (e.g. ``openai/clip-vit-large-patch14``).

    The tower's ``image_embeds`` are what ``CLIPModel.get_image_features`` returns; the
    text tower's weights are not loaded. A weight of the tower missing from the file is an
    error, not a random initialisation.

    Parameters
    ----------
    path : path
        The whole CLIP model's directory.
    device : torch.device or str
        Where the model is moved.
    dtype : torch.dtype
        Precision of the weights.

    Returns
    -------
    processor : transformers.CLIPImageProcessor
    model : transformers.CLIPVisionModelWithProjection
        In eval mode, without gradients; ``image_embeds`` of shape (n, projection_dim).

    Raises
    ------
    ModelNotFoundError
        If the directory or its ``config.json`` is missing.
    DataError
        If a weight of the image tower is missing from the file.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPVisionModelWithProjection

    path = require_model(path, "config.json")
    processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
    config = CLIPConfig.from_pretrained(path, local_files_only=True)
    vision = config.vision_config
    vision.projection_dim = config.projection_dim  # the whole model's, which the file holds
    model, info = CLIPVisionModelWithProjection.from_pretrained(
        path,
        config=vision,
        use_safetensors=True,
        local_files_only=True,
        dtype=dtype,
        output_loading_info=True,
    )
    if info["missing_keys"]:
        raise DataError(f"{path}: the CLIP image tower misses {sorted(info['missing_keys'])[:5]}")
    return processor, model.to(device).eval().requires_grad_(False)


def load_video_classifier(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    num_frames: int | None = None,
) -> tuple[Any, Any]:
    """transformers video processor and video-classification model (e.g. VideoMAE).

    ``num_frames`` overrides the frames the model reads (the field evaluates
    VideoMAE on the 6 frames of a clip; its position embeddings are fixed
    sinusoids, so any even count works).

    Parameters
    ----------
    path : path
        The model directory in transformers layout.
    device : torch.device or str
        Where the model is moved.
    dtype : torch.dtype
        Precision of the weights.
    num_frames : int, optional
        Frames per clip the model reads; default the checkpoint's.

    Returns
    -------
    processor : transformers.BaseImageProcessor
    model : transformers.PreTrainedModel
        An ``AutoModelForVideoClassification``, in eval mode without gradients.

    Raises
    ------
    ModelNotFoundError
        If the directory or its ``config.json`` is missing.
    """
    from transformers import AutoImageProcessor, AutoModelForVideoClassification

    path = require_model(path, "config.json")
    processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    extra = {} if num_frames is None else {"num_frames": num_frames}
    model = AutoModelForVideoClassification.from_pretrained(
        path, use_safetensors=True, local_files_only=True, dtype=dtype, **extra
    )
    return processor, model.to(device).eval().requires_grad_(False)
