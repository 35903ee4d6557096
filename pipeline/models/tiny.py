"""The ``tiny`` preset: the real classes of open_clip, diffusers and transformers with
small, seeded, random configurations, written in the layout of their hub repositories.

They are loaded back by :mod:`pipeline.models.loading`, the same code that reads
the ``paper`` preset, so a wrong argument or key name fails here and not on a
cluster. Sizes keep the shapes that matter downstream: the CLIP visual tower
yields a grid of patch tokens without its class token (8 x 8 = 64 tokens; ViT-bigG/14
at 224 px gives 16 x 16 = 256), the VAE downsamples 8x into 4 latent channels, like
the Stable Diffusion VAE. The token count sets the Semantic Reconstructor's cost: its
diffusion prior attends over twice the tokens plus one (docs/performance.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = ["CAPTION_WORDS", "write_tiny_captioner", "write_tiny_clip", "write_tiny_vae"]

#: Vocabulary of the tiny captioner's word-level tokenizer (the demo scenes' words).
CAPTION_WORDS = (
    "a an the of in on with and over under near two three one small large moving "
    "red green blue yellow purple orange pink white black gray dark bright striped "
    "disc square triangle ring cross shape shapes object objects background scene"
).split()

# OpenAI CLIP normalisation, as in the OpenCLIP ViT-bigG/14 repository
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def write_tiny_clip(path: str | os.PathLike, seed: int = 0) -> Path:
    """An OpenCLIP ``CLIP`` with a 64 px, patch-8 visual tower (64 tokens of width 64).

    Written as ``open_clip_config.json`` + ``open_clip_pytorch_model.safetensors``, the
    layout of ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``. The text tower uses
    OpenCLIP's bundled BPE tokenizer, so nothing is downloaded.

    Parameters
    ----------
    path : path
        The role folder to write (created if needed).
    seed : int
        Seeds the random initialisation.

    Returns
    -------
    Path
        ``path``; :func:`pipeline.models.loading.load_clip` reads it. Pooled
        embeddings have 32 dimensions.
    """
    import open_clip
    from safetensors.torch import save_file

    vision = {"image_size": 64, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    config = {"embed_dim": 32, "vision_cfg": vision, "text_cfg": text}
    torch.manual_seed(seed)
    model = open_clip.CLIP(**config)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    preprocess = {"mean": list(_CLIP_MEAN), "std": list(_CLIP_STD), "interpolation": "bicubic"}
    (path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": config, "preprocess_cfg": preprocess}, indent=2)
    )
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "open_clip_pytorch_model.safetensors"))
    return path


def write_tiny_vae(path: str | os.PathLike, seed: int = 0, sample_size: int = 224) -> Path:
    """A diffusers ``AutoencoderKL``: 4 blocks (8x downsampling), 4 latent channels.

    Written with ``save_pretrained`` (``config.json`` +
    ``diffusion_pytorch_model.safetensors``), the layout of the ``vae`` folder of
    a Stable Diffusion repository. Random weights; fitting it to the stimuli is
    a separate step.

    Parameters
    ----------
    path : path
        The role folder to write.
    seed : int
        Seeds the random initialisation.
    sample_size : int
        The config's ``sample_size``, pixels (the frame side it is fitted to).

    Returns
    -------
    Path
        ``path``; :func:`pipeline.models.loading.load_vae` reads it.
    """
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=sample_size,
        scaling_factor=0.18215,
    )
    vae.save_pretrained(str(path), safe_serialization=True)
    return Path(path)


def _tiny_tokenizer():
    """A word-level fast tokenizer over :data:`CAPTION_WORDS`, built in code (offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>", "<image>"]
    vocab = {token: i for i, token in enumerate(specials + list(CAPTION_WORDS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    return tokenizer


def write_tiny_captioner(path: str | os.PathLike, seed: int = 0, num_query_tokens: int = 4) -> Path:
    """A transformers ``Blip2ForConditionalGeneration`` (OPT language model) + processor.

    Written with ``save_pretrained`` in the layout of ``Salesforce/blip2-opt-2.7b``
    (model config and safetensors, processor, image processor and tokenizer files).
    Images are resized to 32 x 32 pixels; the tokenizer's words are :data:`CAPTION_WORDS`.

    Parameters
    ----------
    path : path
        The role folder to write.
    seed : int
        Seeds the random initialisation.
    num_query_tokens : int
        Q-Former query tokens.

    Returns
    -------
    Path
        ``path``; :func:`pipeline.models.loading.load_captioner` reads it.
    """
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        OPTConfig,
    )

    tokenizer = _tiny_tokenizer()
    vocab_size = len(tokenizer)
    config = Blip2Config(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        qformer_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "encoder_hidden_size": 32,
            "vocab_size": vocab_size,
        },
        text_config=OPTConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            word_embed_proj_dim=32,
            ffn_dim=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ).to_dict(),
        num_query_tokens=num_query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config)
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(
            size={"height": 32, "width": 32}, image_mean=list(_CLIP_MEAN), image_std=list(_CLIP_STD)
        ),
        tokenizer=tokenizer,
        num_query_tokens=num_query_tokens,
    )
    processor.save_pretrained(str(path))
    model.save_pretrained(str(path), safe_serialization=True)
    return Path(path)


def write_tiny_models(
    output: str | os.PathLike,
    frame_stores: list[str | os.PathLike],
    *,
    seed: int = 0,
    vae_steps: int = 600,
    held_out: int = 64,
) -> dict:
    """Write the whole tiny preset to ``output/{clip,vae,captioner}``.

    The VAE is fitted to the frames of ``frame_stores`` (the training stimuli)
    and its ``scaling_factor`` set to one over the standard deviation of the
    latents, as for the SD VAE; ``output/vae/metadata.json`` records the
    reconstruction SSIM on ``held_out`` frames not used for fitting. The
    directory appears only once complete.

    Parameters
    ----------
    output : path
        The tiny preset's folder (``{models.root}/tiny``), written atomically.
    frame_stores : list of path
        ``extract_frames`` stores of the training stimuli.
    seed : int
        Seeds the weights, the held-out split and the VAE fit.
    vae_steps : int
        Optimisation steps of the VAE fit.
    held_out : int
        Frames kept out of the fit to measure the reconstruction SSIM.

    Returns
    -------
    dict
        The VAE metadata.
    """
    import numpy as np

    from pipeline.frames import read_clips
    from pipeline.models.fit import (
        MIX_CONCENTRATION,
        encode_frames,
        fit_vae,
        reconstruction_ssim,
    )
    from pipeline.models.loading import load_vae
    from pipeline.stores import atomic_output

    clips = read_clips(frame_stores)
    frames = clips.reshape(-1, *clips.shape[2:])  # (n_frames, h, w, 3)
    order = np.random.default_rng(seed).permutation(len(frames))
    held, train = frames[order[:held_out]], frames[order[held_out:]]
    with atomic_output(output) as tmp:
        write_tiny_clip(tmp / "clip", seed)
        write_tiny_captioner(tmp / "captioner", seed)
        write_tiny_vae(tmp / "vae", seed, sample_size=frames.shape[1])
        vae = load_vae(tmp / "vae")
        ssim_before = reconstruction_ssim(vae, held)
        losses = fit_vae(vae, train, vae_steps, seed=seed)
        latents = encode_frames(vae, train[:: max(1, len(train) // 512)])
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
        metadata = {
            "fitted_on": [str(p) for p in frame_stores],
            "n_frames": int(len(train)),
            "steps": vae_steps,
            "seed": seed,
            "objective": "L1 + 1e-6 KL + L1 latent-mixing consistency, Dirichlet("
            f"{MIX_CONCENTRATION}) batch mixes (see pipeline/models/fit.py)",
            "final_loss": losses[-1] if losses else None,
            "reconstruction_ssim": reconstruction_ssim(vae, held),
            "reconstruction_ssim_unfitted": ssim_before,
            "ssim_variant": "skimage structural_similarity, RGB uint8, 7x7 window",
            "held_out_frames": int(len(held)),
            "scaling_factor": vae.config.scaling_factor,
        }
        vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
        (tmp / "vae" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return metadata
