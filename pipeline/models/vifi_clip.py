"""ViFi-CLIP's video similarity: the gate of Mind-Animator's CLIP-pcc.

Mind-Animator zeroes a clip's CLIP-pcc where ViFi-CLIP's similarity of the
predicted video to the ground truth is at most 0.6
(``Evaluation_Metrics/CLIP_consist.py`` and ``ViFi_CLIP.zip`` →
``VIFI_CLIP_score.py`` at ReedOnePeck/Mind-Animator@a5adbf3b). ViFi-CLIP
(muzairkhattak/ViFi-CLIP@e2d19483) is OpenAI's CLIP ViT-B/16 fine-tuned on
videos; its released checkpoints (e.g. ``k400_seed1_vifi_clip_base2novel.pth``,
the one Mind-Animator loads) hold the DataParallel state under ``model``, the
image tower as ``module.image_encoder.*`` in OpenAI CLIP's names, which
OpenCLIP's ``VisionTransformer`` shares.

A video's embedding is the mean of its frames' image embeddings, then
L2-normalised (``trainers/vificlip.py``); frames are resized to 512 × 512,
then to 256 × 256 (bilinear), centre-cropped to 224 and normalised with
ImageNet's mean and std on 0–255 (``datasets/build.py``; Mind-Animator's
pipeline).

The released ``.pth`` also pickles its training config (a yacs ``CfgNode``),
which ``torch.load(weights_only=True)`` refuses. Convert it once, on a
machine where you trust the file, to a safetensors file of its ``model``
state (docs/evaluation.md, "ViFi-CLIP"), and set ``evaluation.vifi_clip`` to that file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import DataError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ViFiClip", "image_tower"]

#: ViFi-CLIP's input normalisation on 0–255 RGB (datasets/build.py).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
PREFIXES = ("module.image_encoder.", "image_encoder.")


def image_tower(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tower's tensors of a ViFi-CLIP ``model`` state, prefixes removed.

    Parameters
    ----------
    state : dict of str to torch.Tensor
        A released checkpoint's ``model`` state (DataParallel names).

    Returns
    -------
    dict of str to torch.Tensor
        Tensors under ``module.image_encoder.`` or ``image_encoder.``, in OpenAI CLIP's
        names (``conv1.weight``, ``transformer.resblocks.*``, ``proj``, ...); empty if none.
    """
    tower = {}
    for key, value in state.items():
        prefix = next((p for p in PREFIXES if key.startswith(p)), None)
        if prefix:
            tower[key.removeprefix(prefix)] = value
    return tower


def _build(tower: dict[str, torch.Tensor]) -> torch.nn.Module:
    """OpenCLIP's ViT with QuickGELU sized from the tensors, as OpenAI's ``build_model``."""
    from open_clip.model import QuickGELU
    from open_clip.transformer import VisionTransformer

    width, _, patch, _ = tower["conv1.weight"].shape
    layers = len({k.split(".")[2] for k in tower if k.startswith("transformer.resblocks.")})
    grid = round((tower["positional_embedding"].shape[0] - 1) ** 0.5)
    return VisionTransformer(
        image_size=patch * grid,
        patch_size=patch,
        width=width,
        layers=layers,
        heads=width // 64,
        mlp_ratio=tower["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        output_dim=tower["proj"].shape[1],
        act_layer=QuickGELU,
    )


class ViFiClip:
    """ViFi-CLIP's image tower from a safetensors file of a released checkpoint's ``model``
    state; :meth:`similarity` of predicted and ground-truth videos.

    Parameters
    ----------
    path : path
        A ``.safetensors`` file of the checkpoint's ``model`` state (``evaluation.vifi_clip``).
    device : torch.device or str
        Where the tower runs.
    dtype : torch.dtype
        Precision of the weights and inputs.

    Raises
    ------
    DataError
        If the file is not a ``.safetensors`` file, is missing, or holds no complete
        ViFi-CLIP image tower.
    """

    def __init__(self, path: str | os.PathLike, device="cpu", dtype=torch.float32):
        from safetensors.torch import load_file

        path = Path(path)
        if path.suffix != ".safetensors":
            raise DataError(
                f"{path}: evaluation.vifi_clip must be a .safetensors file of the checkpoint's "
                "'model' state; convert the released .pth once (docs/evaluation.md, 'ViFi-CLIP')"
            )
        if not path.is_file():
            raise DataError(f"{path}: no such ViFi-CLIP file (evaluation.vifi_clip)")
        tower = image_tower(load_file(str(path)))
        if "conv1.weight" not in tower:
            raise DataError(f"{path}: no ViFi-CLIP image tower ({' or '.join(PREFIXES)}*)")
        model = _build(tower)
        missing, unexpected = model.load_state_dict(tower, strict=False)
        if missing or unexpected:
            raise DataError(f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.size = model.image_size[0]
        self.device, self.dtype = torch.device(device), dtype

    def _pixels(self, frames: np.ndarray) -> torch.Tensor:
        import cv2

        crop = self.size
        short = round(crop * 256 / 224)
        out = []
        for f in frames:
            f = cv2.resize(cv2.resize(np.ascontiguousarray(f), (512, 512)), (short, short))
            top = (short - crop) // 2
            out.append(f[top : top + crop, top : top + crop])
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(IMAGENET_STD)[:, None, None]
        return ((x - mean) / std).to(self.device, self.dtype)

    @torch.no_grad()
    def video_embeds(self, videos: np.ndarray, batch_size: int = 32) -> torch.Tensor:
        """uint8 (n, f, h, w, 3) → (n, dim): frame embeddings averaged, then normalised.

        Parameters
        ----------
        videos : ndarray of shape (n_videos, n_frames, height, width, 3), uint8
            RGB frames of any size in pixels; resized to 512, then 256 and centre-cropped
            to the tower's 224 x 224.
        batch_size : int
            Frames per model call.

        Returns
        -------
        torch.Tensor of shape (n_videos, embed_dim), float32, on the CPU
            Unit L2 norm.
        """
        flat = videos.reshape(-1, *videos.shape[2:])
        parts = [
            self.model(self._pixels(flat[i : i + batch_size])).float().cpu()
            for i in range(0, len(flat), batch_size)
        ]
        frames = torch.cat(parts).reshape(len(videos), videos.shape[1], -1)
        return torch.nn.functional.normalize(frames.mean(dim=1), dim=-1)

    def similarity(
        self, pred: np.ndarray, gt: np.ndarray, batch_size: int = 32, swap_pred: bool = False
    ) -> np.ndarray:
        """Cosine similarity of each predicted video's embedding with its ground truth's.

        ``swap_pred``: swap red and blue of the predictions first, as Mind-Animator's
        predictions reach ViFi-CLIP (``gif_to_avi.py`` hands RGB frames to OpenCV's
        writer, which takes them for BGR).

        Parameters
        ----------
        pred, gt : ndarray of shape (n_videos, n_frames, height, width, 3), uint8
            Predicted and ground-truth videos, paired by index.
        batch_size : int
            Frames per model call.
        swap_pred : bool
            Swap the red and blue channels of ``pred`` first.

        Returns
        -------
        ndarray of shape (n_videos,), float32
            Cosine similarity in [-1, 1]; Mind-Animator's gate is ``> 0.6``.
        """
        if swap_pred:
            pred = pred[..., ::-1]
        a, b = self.video_embeds(pred, batch_size), self.video_embeds(gt, batch_size)
        return (a * b).sum(dim=-1).numpy()
