"""Keyframe generation: the generators behind one interface (paper §3.3, β guidance).

Every generator turns a per-clip conditioning vector predicted from fMRI, plus
the first frame of the clip's blurry video as the starting image, into one
keyframe per test clip:

* ``mindeye2_sdxl_unclip`` — MindEye2's fine-tuned SDXL unCLIP through
  Stability's ``sgm`` package, conditioned on the Semantic Reconstructor's
  prior-reconstructed OpenCLIP ViT-bigG/14 tokens
  (:mod:`pipeline.generation.sdxl_unclip`);
* ``sd21_unclip`` — diffusers' Stable Diffusion 2.1 unCLIP, conditioned on
  its own CLIP image embedding predicted from fMRI by a ridge regression
  fitted on the training clips (:mod:`pipeline.generation.embedder`);
* ``tiny`` — the same code on the tiny preset's unCLIP.

Each is an entry of :data:`pipeline.generation.registry.KEYFRAME_GENERATORS`.

The starting image is VAE-encoded and noised to the first of the last
``strength × steps`` timesteps (img2img); ``strength`` 1 ignores it. Each
clip's noise comes from its own seed, so a keyframe does not depend on the
batch it was generated in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from pipeline.generation.diffusion import (
    clip_generators,
    decode_images,
    encode_images,
    partial_timesteps,
    resize_images,
    seeded_noise,
)
from pipeline.generation.registry import keyframe_generator

__all__ = [
    "KeyframeGenerator",
    "KeyframeSettings",
    "UnclipGenerator",
    "load_generator",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyframeSettings:
    steps: int
    guidance_scale: float
    strength: float
    noise_level: int = 0
    seed: int = 0
    prompt: str = ""


class KeyframeGenerator(Protocol):
    #: which prediction conditions it: ``image_embeds`` (the generator's own CLIP
    #: image embedding, from the fitted embedder) or ``prior_tokens`` (the SR's output)
    conditioning: str
    #: side of the generated images
    size: int

    def generate(
        self,
        condition: torch.Tensor,
        init_images: np.ndarray,
        keys: list[int],
        settings: KeyframeSettings,
    ) -> np.ndarray:
        """``condition`` (n, ...), ``init_images`` uint8 (n, h, w, 3) → uint8 (n, size, size, 3).

        Parameters
        ----------
        condition : torch.Tensor of shape (n, ...)
            One conditioning per clip, as :attr:`conditioning` names it: an image embedding
            (n, dim) or prior tokens (n, n_tokens, width).
        init_images : ndarray of shape (n, h, w, 3), uint8
            The starting images (first frames of the blurry videos); resized to ``size``.
        keys : list of int
            One seed key per clip (:func:`~pipeline.generation.diffusion.clip_generators`).
        settings : KeyframeSettings
            Steps, guidance scale, img2img strength, noise level, seed and prompt.

        Returns
        -------
        ndarray of shape (n, size, size, 3), uint8
            One keyframe per clip.
        """


class UnclipGenerator:
    """diffusers' Stable unCLIP (SD 2.1 unCLIP layout) with an img2img start.

    The pipeline's components are used directly: its text encoder for the
    prompt, its ``noise_image_embeddings`` for the noise-augmented image
    embedding (zeros as the unconditional embedding, as the pipeline does),
    the UNet with the embedding as class label, and classifier-free guidance.

    Parameters
    ----------
    path : str or Path
        A diffusers ``StableUnCLIPImg2ImgPipeline`` directory.
    device : torch.device
        Where it runs.
    dtype : torch.dtype
        Its precision.
    """

    conditioning = "image_embeds"

    def __init__(self, path: str | Path, device: torch.device, dtype: torch.dtype):
        from diffusers import StableUnCLIPImg2ImgPipeline

        from pipeline.models.loading import require_model

        self.pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(
            require_model(path, "model_index.json"),
            use_safetensors=True,
            local_files_only=True,
            dtype=dtype,
        ).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.device, self.dtype = device, dtype
        factor = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        self.size = int(self.pipe.unet.config.sample_size) * factor
        self.embedding_dim = int(self.pipe.image_encoder.config.projection_dim)

    @torch.no_grad()
    def image_embeds(self, images: np.ndarray) -> torch.Tensor:
        """The generator's own CLIP image embeddings of uint8 images (what the embedder targets).

        Parameters
        ----------
        images : ndarray of shape (n, h, w, 3), uint8
            RGB images.

        Returns
        -------
        torch.Tensor of shape (n, embedding_dim), float32
        """
        pixels = self.pipe.feature_extractor(images=list(images), return_tensors="pt").pixel_values
        encoder = self.pipe.image_encoder
        return encoder(pixels.to(self.device, encoder.dtype)).image_embeds.float()

    @torch.no_grad()
    def generate(self, condition, init_images, keys, settings: KeyframeSettings) -> np.ndarray:
        """Keyframes from image embeddings (β guidance, section 3.3), img2img from ``init_images``.

        Parameters
        ----------
        condition : torch.Tensor of shape (n, ...)
            Image embeddings (n, embedding_dim) predicted from fMRI.
        init_images : ndarray of shape (n, h, w, 3), uint8
            The starting images (first frames of the blurry videos); resized to ``size``.
        keys : list of int
            One seed key per clip (:func:`~pipeline.generation.diffusion.clip_generators`).
        settings : KeyframeSettings
            Steps, guidance scale, img2img strength, noise level, seed and prompt.

        Returns
        -------
        ndarray of shape (n, size, size, 3), uint8
            One keyframe per clip.
        """
        pipe, n = self.pipe, len(keys)
        guided = settings.guidance_scale > 1.0
        generators = clip_generators(settings.seed, keys, self.device)
        prompt_embeds, negative = pipe.encode_prompt(
            [settings.prompt] * n, self.device, 1, guided, negative_prompt=None
        )
        # noise augmentation of the image embedding (level 0 = none) and its level
        # embedding, each clip with its own generator
        embeds = torch.cat(
            [
                pipe.noise_image_embeddings(e[None], settings.noise_level, generator=g)
                for e, g in zip(condition.to(self.device, self.dtype), generators, strict=True)
            ]
        )
        if guided:
            embeds = torch.cat([torch.zeros_like(embeds), embeds])
            prompt_embeds = torch.cat([negative, prompt_embeds])
        timesteps = partial_timesteps(pipe.scheduler, settings.steps, settings.strength)
        init = encode_images(
            pipe.vae, resize_images(init_images, self.size), self.device, self.dtype
        )
        noise = seeded_noise(tuple(init.shape[1:]), generators, self.device, self.dtype)
        if len(timesteps) == 0:
            return decode_images(pipe.vae, init)
        latents = pipe.scheduler.add_noise(init, noise, timesteps[:1].repeat(n))
        for t in timesteps:
            model_in = torch.cat([latents] * 2) if guided else latents
            model_in = pipe.scheduler.scale_model_input(model_in, t)
            eps = pipe.unet(
                model_in, t, encoder_hidden_states=prompt_embeds, class_labels=embeds
            ).sample
            if guided:
                uncond, cond = eps.chunk(2)
                eps = uncond + settings.guidance_scale * (cond - uncond)
            latents = pipe.scheduler.step(eps, t, latents).prev_sample
        return decode_images(pipe.vae, latents)


def load_generator(name: str, path, device, dtype) -> KeyframeGenerator:
    """The registered generator ``name`` (:data:`pipeline.generation.registry.KEYFRAME_GENERATORS`)
    loaded from ``path``; a clear error for unknown names.

    Parameters
    ----------
    name : str
        A key of :data:`~pipeline.generation.registry.KEYFRAME_GENERATORS`.
    path : str or Path
        The generator's model directory.
    device : torch.device
        Where it runs.
    dtype : torch.dtype
        Its precision.

    Returns
    -------
    KeyframeGenerator

    Raises
    ------
    ValueError
        For an unknown ``name``.
    """
    return keyframe_generator(name).load(path, device, dtype)
