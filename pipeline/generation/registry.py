"""The keyframe generators: one entry each, holding everything about the generator.

The schema's ``keyframes.generator`` enum, the model role each preset must
provide, the inputs the Snakemake rules give the keyframe stage and the class
the stage loads all come from :data:`KEYFRAME_GENERATORS`. Adding a generator
is adding an entry here (and its class). This module imports no model
library: the workflow reads it when it builds the DAG, and the class is only
imported by :meth:`KeyframeGeneratorEntry.load`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

__all__ = [
    "CONDITIONING_INPUTS",
    "KEYFRAME_GENERATORS",
    "KeyframeGeneratorEntry",
    "keyframe_generator",
]

#: What each kind of conditioning reads per subject, as the keyframe rule's named
#: inputs: the embedder fitted on the generator's own CLIP image embeddings plus the
#: aligned fMRI it is applied to, or the Semantic Reconstructor's prior output
#: (paper §3.3).
CONDITIONING_INPUTS: dict[str, tuple[str, ...]] = {
    "image_embeds": ("embedder", "aligned"),
    "prior_tokens": ("semantic",),
}


@dataclass(frozen=True)
class KeyframeGeneratorEntry:
    """A keyframe generator.

    Attributes
    ----------
    name : str
        The value of the config key ``keyframes.generator``.
    role : str
        The generation model role (a directory of the preset's generation
        models, :data:`pipeline.models.presets.GENERATION`) the generator loads.
    conditioning : str
        ``"image_embeds"``: the generator's own CLIP image embedding, predicted
        from fMRI by the fitted embedder; ``"prior_tokens"``: the Semantic
        Reconstructor's prior-reconstructed OpenCLIP tokens. A key of
        :data:`CONDITIONING_INPUTS`.
    factory : str
        ``"module:attribute"`` of the constructor ``(model_dir, device, dtype)``
        returning a :class:`pipeline.generation.keyframes.KeyframeGenerator`.
    presets : tuple of str
        The model presets that provide the generator's model.
    title : str
        The generator in words (the methods text names a hub model by its own entry of
        :data:`pipeline.evaluation.methods.MODELS` where the run recorded one).
    condition_text : str
        What it is conditioned on, in words.
    references : tuple of str
        Its papers, keys of :data:`pipeline.evaluation.methods.REFERENCES`.
    sampler : tuple of (str, tuple of str), optional
        Its sampler in words with that sampler's references, where the text names one.
    embedding_noise : bool
        Whether ``keyframes.noise_level`` (unCLIP image-embedding noise) applies.
    """

    name: str
    role: str
    conditioning: str
    factory: str
    presets: tuple[str, ...]
    title: str
    condition_text: str
    references: tuple[str, ...] = ()
    sampler: tuple[str, tuple[str, ...]] | None = None
    embedding_noise: bool = True

    def load(self, path, device, dtype):
        """The generator, constructed from the model directory ``path``.

        Parameters
        ----------
        path : str or Path
            The generator's model directory.
        device : torch.device
            Where it runs.
        dtype : torch.dtype
            Its precision.

        Returns
        -------
        KeyframeGenerator
        """
        module, attribute = self.factory.split(":")
        return getattr(importlib.import_module(module), attribute)(path, device, dtype)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The keyframe rule's named inputs for this generator's conditioning."""
        return CONDITIONING_INPUTS[self.conditioning]


KEYFRAME_GENERATORS: dict[str, KeyframeGeneratorEntry] = {
    entry.name: entry
    for entry in (
        KeyframeGeneratorEntry(
            name="mindeye2_sdxl_unclip",
            role="sdxl_unclip",
            conditioning="prior_tokens",
            factory="pipeline.generation.sdxl_unclip:SdxlUnclipGenerator",
            presets=("paper",),
            title="MindEye2's fine-tuned SDXL unCLIP",
            condition_text="the Semantic Reconstructor's prior-reconstructed OpenCLIP tokens",
            references=("mindeye2", "sdxl"),
            sampler=("the Euler EDM sampler", ("karras2022",)),
            embedding_noise=False,
        ),
        KeyframeGeneratorEntry(
            name="sd21_unclip",
            role="unclip",
            conditioning="image_embeds",
            factory="pipeline.generation.keyframes:UnclipGenerator",
            presets=("paper",),
            title="Stable Diffusion 2.1 unCLIP",
            condition_text="the image embedding predicted from the fMRI by the ridge embedder",
            references=("ldm", "dalle2"),
        ),
        KeyframeGeneratorEntry(
            name="tiny",
            role="unclip",
            conditioning="image_embeds",
            factory="pipeline.generation.keyframes:UnclipGenerator",
            presets=("tiny",),
            title="the tiny preset's unCLIP (the layout of Stable Diffusion 2.1 unCLIP)",
            condition_text="the image embedding predicted from the fMRI by the ridge embedder",
            references=("dalle2",),
        ),
    )
}


def keyframe_generator(name: str) -> KeyframeGeneratorEntry:
    """The registered generator ``name``.

    Parameters
    ----------
    name : str
        The value of ``keyframes.generator``.

    Returns
    -------
    KeyframeGeneratorEntry

    Raises
    ------
    ValueError
        For a name no entry has, listing the known ones.
    """
    try:
        return KEYFRAME_GENERATORS[name]
    except KeyError:
        known = sorted(KEYFRAME_GENERATORS)
        raise ValueError(f"unknown keyframe generator {name!r}; known: {known}") from None
