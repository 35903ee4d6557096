"""The ``mindeye2_sdxl_unclip`` keyframe generator: MindEye2's fine-tuned SDXL unCLIP via ``sgm``.

diffusers has no SDXL unCLIP, so this generator runs on Stability's
``generative-models`` package (import name ``sgm``), which is not on PyPI and
declares none of its dependencies. Install both into the environment of the
keyframe rule (``envs/keyframes.yaml`` holds them)::

    pip install "git+https://github.com/Stability-AI/generative-models.git@0ad7de9a5cb53fd63d6d30a4f385485e72e08597"
    pip install --constraint requirements.lock -e ".[keyframes]"

It is imported only when this generator is used; without it the keyframe
stage stops with those instructions, naming the module that is missing.

The model follows MindEye2's ``unclip6`` configuration
(``src/generative_models/configs/unclip6.yaml`` of MedARC-AI/MindEyeV2): an SDXL UNet
whose cross-attention context is the 256 × 1664 OpenCLIP ViT-bigG/14 tokens
(here: the Semantic Reconstructor's prior output) and whose vector condition
(1024-d) embeds the original size (768, 768) and the crop offset (0, 0);
eps-prediction on the legacy DDPM discretisation, sampled with the Euler EDM
sampler (38 steps in the official code) and classifier-free guidance 5. As in
MindEye2's reconstruction code the unconditional context is Gaussian noise
shaped like the tokens, and decoded images are mapped to ``0.8 x + 0.2``.
Unlike the official code (which starts from pure noise), the blurry video's
first frame is the starting image, noised to the first of the last
``strength × steps`` sigmas.

Precision as in the official code (src/recon_keyframe.py): the weights stay float32
and the UNet runs under autocast to the keyframes precision (paper: float16); the
VAE runs in float32 (``disable_first_stage_autocast``).

The weights are read from ``{model_dir}/unclip6.safetensors``, which the
``download_generation_models`` rule converts from the official
``unclip6_epoch0_step110000.ckpt`` (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from pipeline.environment import LOCK
from pipeline.errors import PipelineError
from pipeline.generation.diffusion import clip_generators, resize_images, seeded_noise
from pipeline.models.loading import autocast

__all__ = ["SGM_INSTALL", "SdxlUnclipGenerator", "require_sgm", "unclip6_configs"]

#: generative-models' commit that ran this generator (docs/reproduction.md, "Running the
#: paper preset")
SGM_COMMIT = "0ad7de9a5cb53fd63d6d30a4f385485e72e08597"
SGM_INSTALL = (
    f'pip install "git+https://github.com/Stability-AI/generative-models.git@{SGM_COMMIT}"'
)
#: what sgm imports and does not declare (its requirements/pt2.txt), at the locked versions
#: (pyproject's `keyframes` extra)
SGM_DEPENDENCIES = (
    f"pip install --constraint {LOCK} pytorch-lightning omegaconf kornia einops fsspec"
)
WEIGHTS = "unclip6.safetensors"
SIZE = 768
TOKENS, WIDTH, VECTOR = 256, 1664, 1024


#: Checkpoint keys the generator does not read: the conditioner's ViT-bigG image embedder
#: (the prior's output tokens take its place).
UNUSED = "conditioner.embedders.0."


def read_weights(path: str | Path, skip: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose names do not start with ``skip``; the others
    are never read into memory."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if not k.startswith(skip)}


class MissingDependencyError(PipelineError, ImportError):
    """An optional package a configured stage needs is not installed."""


def require_sgm():
    """Import ``sgm`` or fail with what to install: sgm itself, or the module it lacks.

    sgm declares no dependencies (its ``pyproject.toml``); its ``requirements/pt2.txt``
    lists them, and importing it needs pytorch_lightning, omegaconf, kornia, einops and
    fsspec besides what this pipeline installs.

    Returns
    -------
    module
        The ``sgm`` package.

    Raises
    ------
    MissingDependencyError
        When ``sgm``, or a module it imports, is not installed; the message says what to
        install.
    """
    try:
        return importlib.import_module("sgm")
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if missing and missing.split(".")[0] != "sgm":
            raise MissingDependencyError(
                f"keyframes.generator 'mindeye2_sdxl_unclip': Stability AI's generative-models "
                f"package (`sgm`) is installed, but the module {missing!r} that it imports is "
                f"not. sgm declares no dependencies; install them with:\n    {SGM_DEPENDENCIES}"
                f"\n({exc})"
            ) from None
        raise MissingDependencyError(
            "keyframes.generator 'mindeye2_sdxl_unclip' needs Stability AI's generative-models "
            f"package (import name `sgm`), which is not on PyPI. Install it with:\n    "
            f"{SGM_INSTALL}\n    {SGM_DEPENDENCIES}\nor choose the pip-only generator "
            f"'sd21_unclip' (keyframes: {{generator: sd21_unclip}}). ({exc})"
        ) from None


def unclip6_configs(steps: int, guidance_scale: float) -> dict:
    """The DiffusionEngine sub-configurations of MindEye2's ``unclip6`` model (sgm targets).

    Parameters
    ----------
    steps : int
        Steps of the Euler EDM sampler.
    guidance_scale : float
        Classifier-free guidance scale.

    Returns
    -------
    dict
        Keyword arguments of ``sgm.models.diffusion.DiffusionEngine``: ``network_config``,
        ``denoiser_config``, ``first_stage_config``, ``conditioner_config``,
        ``sampler_config``, ``scale_factor`` and ``disable_first_stage_autocast``.
    """
    legacy_ddpm = {"target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"}
    return {
        "network_config": {
            "target": "sgm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": {
                "adm_in_channels": VECTOR,
                "num_classes": "sequential",
                "use_checkpoint": False,
                "in_channels": 4,
                "out_channels": 4,
                "model_channels": 320,
                "attention_resolutions": [4, 2],
                "num_res_blocks": 2,
                "channel_mult": [1, 2, 4],
                "num_head_channels": 64,
                "use_linear_in_transformer": True,
                "transformer_depth": [1, 2, 10],
                "context_dim": WIDTH,
                "spatial_transformer_attn_type": "softmax",
            },
        },
        "denoiser_config": {
            "target": "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser",
            "params": {
                "num_idx": 1000,
                "scaling_config": {
                    "target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"
                },
                "discretization_config": legacy_ddpm,
            },
        },
        "first_stage_config": {
            "target": "sgm.models.autoencoder.AutoencoderKL",
            "params": {
                "embed_dim": 4,
                "ddconfig": {
                    "attn_type": "vanilla",
                    "double_z": True,
                    "z_channels": 4,
                    "resolution": 256,
                    "in_channels": 3,
                    "out_ch": 3,
                    "ch": 128,
                    "ch_mult": [1, 2, 4, 4],
                    "num_res_blocks": 2,
                    "attn_resolutions": [],
                    "dropout": 0.0,
                },
                "lossconfig": {"target": "torch.nn.Identity"},
            },
        },
        # only the vector conditions: the context tokens come from the SR, not from an image
        "conditioner_config": {
            "target": "sgm.modules.GeneralConditioner",
            "params": {
                "emb_models": [
                    {
                        "is_trainable": False,
                        "input_key": key,
                        "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
                        "params": {"outdim": 256},
                    }
                    for key in ("original_size_as_tuple", "crop_coords_top_left")
                ]
            },
        },
        "sampler_config": {
            "target": "sgm.modules.diffusionmodules.sampling.EulerEDMSampler",
            "params": {
                "num_steps": steps,
                "discretization_config": legacy_ddpm,
                "guider_config": {
                    "target": "sgm.modules.diffusionmodules.guiders.VanillaCFG",
                    "params": {"scale": guidance_scale},
                },
            },
        },
        "scale_factor": 0.13025,
        "disable_first_stage_autocast": True,
    }


class SdxlUnclipGenerator:
    """Keyframes from prior-reconstructed ViT-bigG/14 tokens (see the module docstring).

    Parameters
    ----------
    path : str or Path
        The model directory holding ``unclip6.safetensors``.
    device : torch.device
        Where it runs.
    dtype : torch.dtype
        The UNet's autocast precision (the weights stay float32).

    Raises
    ------
    MissingDependencyError
        When ``sgm`` or a module it imports is not installed.
    """

    conditioning = "prior_tokens"
    size = SIZE

    def __init__(self, path: str | Path, device: torch.device, dtype: torch.dtype):
        require_sgm()
        from sgm.models.diffusion import DiffusionEngine

        from pipeline.models.loading import require_model

        path = require_model(path, WEIGHTS)
        self.device, self.dtype = device, dtype
        self._engines: dict[tuple[int, float], object] = {}
        self._weights = path / WEIGHTS
        self._factory = DiffusionEngine

    def _engine(self, steps: int, guidance_scale: float):
        key = (steps, guidance_scale)
        if key not in self._engines:
            self._engines.clear()  # one engine at a time: the UNet is 2.6 B parameters
            engine = self._factory(**unclip6_configs(steps, guidance_scale))
            # read while building, never kept: the checkpoint also holds the conditioner's
            # ViT-bigG image embedder, which this generator does not use (left on disk)
            state = read_weights(self._weights, skip=UNUSED)
            missing, unexpected = engine.load_state_dict(state, strict=False)
            del state
            if missing or unexpected:
                raise PipelineError(
                    f"{WEIGHTS}: does not match the unclip6 architecture "
                    f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
                )
            # encode the starting image to its posterior's mean: sgm's VAE would sample the
            # posterior from the global RNG, and a clip's keyframe would then depend on what
            # ran before it, not only on its own seed
            regularizer = getattr(engine.first_stage_model, "regularization", None)
            if hasattr(regularizer, "sample"):
                regularizer.sample = False
            self._engines[key] = engine.eval().requires_grad_(False).to(self.device)
        return self._engines[key]

    @torch.no_grad()
    def generate(self, condition, init_images, keys, settings) -> np.ndarray:
        """Keyframes from prior tokens (β guidance, section 3.3), img2img from ``init_images``.

        Parameters
        ----------
        condition : torch.Tensor of shape (n, 256, 1664)
            The Semantic Reconstructor's prior-reconstructed OpenCLIP ViT-bigG/14 tokens (any
            shape with n x 256 x 1664 elements).
        init_images : ndarray of shape (n, h, w, 3), uint8
            The starting images (first frames of the blurry videos); resized to 768 x 768.
        keys : list of int
            One seed key per clip (:func:`~pipeline.generation.diffusion.clip_generators`).
        settings : KeyframeSettings
            Steps, guidance scale, img2img strength and seed.

        Returns
        -------
        ndarray of shape (n, 768, 768, 3), uint8
            One keyframe per clip.

        Raises
        ------
        PipelineError
            When the weights do not match the unclip6 architecture.
        """
        engine = self._engine(settings.steps, settings.guidance_scale)
        sampler, n = engine.sampler, len(keys)
        generators = clip_generators(settings.seed, keys, self.device)
        batch = {
            "original_size_as_tuple": torch.full((n, 2), float(SIZE), device=self.device),
            "crop_coords_top_left": torch.zeros((n, 2), device=self.device),
        }
        vector = engine.conditioner(batch)["vector"]
        tokens = condition.to(self.device, torch.float32).reshape(n, TOKENS, WIDTH)
        # MindEye2's unconditional context: noise shaped like the tokens
        uc_tokens = seeded_noise((TOKENS, WIDTH), generators, self.device, torch.float32)
        cond = {"crossattn": tokens, "vector": vector}
        uc = {"crossattn": uc_tokens, "vector": vector}

        images = resize_images(init_images, SIZE)
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1
        z = engine.encode_first_stage(x)
        sigmas = sampler.discretization(settings.steps, device=self.device)
        start = settings.steps - int(round(settings.strength * settings.steps))
        noise = seeded_noise(tuple(z.shape[1:]), generators, self.device, z.dtype)
        x = z + noise * sigmas[start]
        s_in = x.new_ones([n])

        def denoiser(inp, sigma, c):
            with autocast(self.device, self.dtype):
                return engine.denoiser(engine.model, inp, sigma, c).float()

        for i in range(start, len(sigmas) - 1):
            x = sampler.sampler_step(s_in * sigmas[i], s_in * sigmas[i + 1], denoiser, x, cond, uc)
        decoded = engine.decode_first_stage(x)
        out = (decoded * 0.8 + 0.2).clamp(0, 1)  # MindEye2's output mapping
        return (out * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
