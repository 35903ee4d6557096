"""Every model of the paper preset at its published size, built without its weights.

The memory budgets (:mod:`pipeline.models.budget`) build these on PyTorch's meta
device, which costs nothing; the GPU check (``bench/gpu_check.py``) builds them on
a CUDA device with random weights. Each builder takes the model's published
configuration (the values of the hub repository's ``config.json``, or of the
official code's configuration), through the same library classes the pipeline
loads the real weights into.

MindEye2's SDXL unCLIP runs on ``sgm`` (not on PyPI); its UNet is built here as
the equivalent diffusers ``UNet2DConditionModel`` (SDXL's block layout, the
unclip6 cross-attention width 1664 and 1024-d vector condition), which has the
same parameters, 2,501,272,324 (a test checks it against sgm's ``UNetModel``
where sgm is installed).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["CC2017", "BUILDERS", "build", "count"]

#: cc2017 at paper size: the largest subject's selected vertices (NeuroClips' 14,828, subject
#: 2), 18 × 240 training clips seen twice, 5 × 240 test clips, 6 frames of 4 × 28 × 28 VAE
#: latents, OpenCLIP ViT-bigG/14's 256 × 1664 image tokens and 1280-d text embedding.
CC2017 = {
    "n_voxels": 14828,
    "train_clips": 4320,
    "train_samples": 8640,
    "test_clips": 1200,
    "frames": 6,
    "latent_shape": (4, 28, 28),
    "tokens": 256,
    "width": 1664,
    "text_dim": 1280,
    "candidates": 2,
}


def count(module: nn.Module) -> int:
    """Parameters of ``module``.

    Parameters
    ----------
    module : torch.nn.Module
        On any device, ``meta`` included.

    Returns
    -------
    int
        Number of parameter elements (shared parameters counted once).
    """
    return sum(p.numel() for p in module.parameters())


def semantic() -> nn.Module:
    from pipeline.models.presets import RECONSTRUCTORS
    from pipeline.reconstructors.semantic import SemanticConfig, SemanticReconstructor

    d = CC2017
    config = SemanticConfig(
        n_voxels=d["n_voxels"],
        n_tokens=d["tokens"],
        width=d["width"],
        text_dim=d["text_dim"],
        **RECONSTRUCTORS["paper"]["semantic"]["architecture"],
    )
    return SemanticReconstructor(config)


def perception() -> nn.Module:
    from pipeline.models.presets import RECONSTRUCTORS
    from pipeline.reconstructors.perception import PerceptionConfig, PerceptionReconstructor

    d = CC2017
    config = PerceptionConfig(
        n_voxels=d["n_voxels"],
        n_frames=d["frames"],
        latent_shape=d["latent_shape"],
        **RECONSTRUCTORS["paper"]["perception"]["architecture"],
    )
    return PerceptionReconstructor(config)


def clip() -> nn.Module:
    """OpenCLIP ViT-bigG/14 (laion2b_s39b_b160k's architecture)."""
    import open_clip

    device = torch.get_default_device()
    return open_clip.create_model("ViT-bigG-14", load_weights=False, device=device)


def vae() -> nn.Module:
    """Stable Diffusion's KL-f8 VAE: the image-variations VAE of the caches and the PR, and
    sd-vae-ft-mse of the videos (both ``vae/config.json``: 128-256-512-512, 4 latents)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=256,
    )


def sdxl_unclip_unet() -> nn.Module:
    """MindEye2's unclip6 UNet (``sdxl_unclip.unclip6_configs``) as its diffusers equivalent:
    SDXL's 320-640-1280 blocks with 1-2-10 transformer layers of 64-channel heads, linear
    projections, context width 1664 and a 1024-d vector condition (sgm's ``label_emb``)."""
    from diffusers import UNet2DConditionModel

    from pipeline.generation.sdxl_unclip import SIZE, VECTOR, WIDTH

    return UNet2DConditionModel(
        sample_size=SIZE // 8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=WIDTH,
        use_linear_projection=True,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=VECTOR,
    )


def sd15_unet() -> nn.Module:
    """Stable Diffusion 1.5's UNet (RealisticVision V6.0 B1 ``unet/config.json``): diffusers'
    defaults with 768-d cross-attention."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768)


def sd15_text_encoder() -> nn.Module:
    """CLIP ViT-L/14's text tower (RealisticVision ``text_encoder/config.json``)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            projection_dim=768,
            hidden_act="quick_gelu",
        )
    )


#: guoyww/animatediff-motion-adapter-v1-5-3 ``config.json`` (revision 449d8993)
MOTION_ADAPTER = {
    "block_out_channels": (320, 640, 1280, 1280),
    "motion_layers_per_block": 2,
    "motion_max_seq_length": 32,
    "motion_mid_block_layers_per_block": 1,
    "motion_norm_num_groups": 32,
    "motion_num_attention_heads": 8,
    "use_motion_mid_block": False,
}


def motion_adapter() -> nn.Module:
    """AnimateDiff v3's motion modules as the hub repository holds them (``MOTION_ADAPTER``)."""
    from diffusers import MotionAdapter

    return MotionAdapter(**MOTION_ADAPTER)


def video_unet() -> nn.Module:
    """AnimateDiff's UNet: SD 1.5's with the v3 motion modules (what
    ``UNetMotionModel.from_unet2d`` makes of RealisticVision and the motion adapter)."""
    from diffusers import UNetMotionModel

    m = MOTION_ADAPTER
    return UNetMotionModel(
        sample_size=64,
        block_out_channels=m["block_out_channels"],
        cross_attention_dim=768,
        motion_max_seq_length=m["motion_max_seq_length"],
        motion_num_attention_heads=m["motion_num_attention_heads"],
        use_motion_mid_block=m["use_motion_mid_block"],
    )


def sparsectrl() -> nn.Module:
    """SparseCtrl RGB (guoyww/animatediff-sparsectrl-rgb ``config.json``, revision b8003d68):
    SD 1.5's encoder with motion modules and a 4-channel (latent) condition plus its mask."""
    from diffusers import SparseControlNetModel

    return SparseControlNetModel(
        conditioning_channels=4,
        conditioning_embedding_out_channels=(16, 32, 96, 256),
        concat_conditioning_mask=True,
        use_simplified_condition_embedding=True,
        cross_attention_dim=768,
        motion_max_seq_length=32,
        motion_num_attention_heads=8,
    )


def captioner() -> nn.Module:
    """BLIP-2 OPT-2.7b (Salesforce/blip2-opt-2.7b ``config.json``: OPT-2.7b's text config and
    32 query tokens; the EVA ViT-g vision and Q-Former sizes are transformers' defaults)."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    text = {
        "model_type": "opt",
        "ffn_dim": 10240,
        "hidden_size": 2560,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "vocab_size": 50304,
        "word_embed_proj_dim": 2560,
        "eos_token_id": 50118,
    }
    config = Blip2Config(text_config=text, num_query_tokens=32, image_token_index=50265)
    return Blip2ForConditionalGeneration(config)


def frame_classifier() -> nn.Module:
    """google/vit-base-patch16-224: ViT-B/16, ImageNet-1k (transformers' ViT defaults)."""
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(num_labels=1000))


def video_classifier() -> nn.Module:
    """MCG-NJU/videomae-base-finetuned-kinetics: VideoMAE-B, Kinetics-400, 16 frames."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    return VideoMAEForVideoClassification(VideoMAEConfig(num_labels=400))


#: The openai CLIP models of the evaluation protocols: their ``config.json`` (vision and text
#: towers, quick_gelu; openai/clip-vit-large-patch14@32bd6428, openai/clip-vit-base-patch32
#: @3d74acf9). The protocols load the image tower and its projection.
OPENAI_CLIP = {
    "clip_vit_l14": {
        "vision_config": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 24,
            "patch_size": 14,
        },
        "text_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
        },
        "projection_dim": 768,
    },
    "clip_vit_b32": {
        "vision_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "patch_size": 32,
        },
        "text_config": {
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_attention_heads": 8,
            "num_hidden_layers": 12,
        },
        "projection_dim": 512,
    },
}


def openai_clip(name: str, image_tower: bool = True) -> nn.Module:
    """An openai CLIP of :data:`OPENAI_CLIP`: its image tower with the projection (what the
    evaluation loads), or the whole ``CLIPModel`` (what the repository holds)."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection

    config = CLIPConfig(**OPENAI_CLIP[name])
    if not image_tower:
        return CLIPModel(config)
    vision = config.vision_config
    vision.projection_dim = config.projection_dim
    return CLIPVisionModelWithProjection(vision)


#: name → builder, every paper model the budgets and the GPU check use
BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "semantic": semantic,
    "perception": perception,
    "clip": clip,
    "vae": vae,
    "sdxl_unclip_unet": sdxl_unclip_unet,
    "sd15_unet": sd15_unet,
    "sd15_text_encoder": sd15_text_encoder,
    "motion_adapter": motion_adapter,
    "video_unet": video_unet,
    "sparsectrl": sparsectrl,
    "captioner": captioner,
    "frame_classifier": frame_classifier,
    "video_classifier": video_classifier,
    "clip_vit_l14": lambda: openai_clip("clip_vit_l14"),
    "clip_vit_b32": lambda: openai_clip("clip_vit_b32"),
}


def build(name: str, device: torch.device | str = "meta") -> nn.Module:
    """Paper model ``name`` on ``device`` (``meta``: shapes only), random weights.

    Parameters
    ----------
    name : str
        A key of :data:`BUILDERS`.
    device : torch.device or str
        Where the parameters are created.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    KeyError
        If ``name`` is not in :data:`BUILDERS`.
    """
    with torch.device(device):
        return BUILDERS[name]()
