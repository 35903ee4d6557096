"""GPU check: every model stage of the paper preset at its published size, timed on one GPU.

Builds each paper model with random weights on the GPU (no downloads;
``pipeline/models/paper_size.py``, the classes the real weights load into) and
runs what each model stage computes on a few clips at the paper's sizes, in
the paper preset's precision (``presets.PRECISION``): the caches (VAE latents,
ViT-bigG tokens, BLIP-2 captions, caption embeddings), a few training steps of
both reconstructors at their paper batch sizes, the prior's sampling, the SDXL
unCLIP keyframes (38 Euler steps with guidance at 768 px), the keyframe
captions, the videos (``VideoSynthesizer`` on AnimateDiff + SparseCtrl, 25 DDIM
steps, 16 frames at 256 px) and the evaluation's classifiers and CLIP. For each
it records the peak GPU memory, the time per clip or step (after one warm-up)
and the projected GPU hours of one cc2017 subject (``CC2017``: 4,320 training
and 1,200 test clips; fusion regenerates at most every test clip once more).
Random weights change no shape or FLOP, so times and memory are the real
models' (BLIP-2 may stop its captions at other lengths: it is run to
``max_new_tokens``, an upper bound).

    make gpu-check                   # python bench/gpu_check.py
    python bench/gpu_check.py --clips 4 --steps 3

Writes ``bench/output/gpu_check.json`` and ``gpu_check.md`` (the GPU-hours table of
docs/performance.md).
Without CUDA it says so and exits 0. ``--smoke`` runs the same code on the CPU
with small configurations of the same classes: a test of this script, not a
measurement.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.models.loading import resolve_dtype  # noqa: E402
from pipeline.models.paper_size import CC2017, build  # noqa: E402
from pipeline.models.presets import GENERATION_DEFAULTS, PRECISION, RECONSTRUCTORS  # noqa: E402

#: bench/output (not bench._common's: that imports the demo's data libraries, and the GPU
#: machine needs only torch, diffusers, transformers and open_clip)
OUTPUT = Path(__file__).resolve().parent / "output"
#: The official code's keyframe sampling (src/recon_keyframe.py) and BLIP-2's caption length.
KEYFRAME_STEPS, KEYFRAME_GUIDANCE, CAPTION_TOKENS = 38, 5.0, 20


# ---------------------------------------------------------------- small configurations (--smoke)


def _smoke_builders() -> dict[str, Callable[[], torch.nn.Module]]:
    """The same classes as :mod:`pipeline.models.paper_size` at widths a CPU runs in seconds."""
    import open_clip
    from diffusers import AutoencoderKL, SparseControlNetModel, UNet2DConditionModel
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        VideoMAEConfig,
        VideoMAEForVideoClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    from pipeline.models.presets import RECONSTRUCTORS as R
    from pipeline.reconstructors.perception import PerceptionConfig, PerceptionReconstructor
    from pipeline.reconstructors.semantic import SemanticConfig, SemanticReconstructor

    blocks = {"block_out_channels": (32, 64), "norm_num_groups": 8, "layers_per_block": 1}
    clip_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "patch_size": 32},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    small_vit = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    small_vit |= {"intermediate_size": 64}
    return {
        "semantic": lambda: SemanticReconstructor(
            SemanticConfig(
                n_voxels=200,
                n_tokens=49,
                width=64,
                text_dim=32,
                **R["tiny"]["semantic"]["architecture"],
            )
        ),
        "perception": lambda: PerceptionReconstructor(
            PerceptionConfig(
                n_voxels=200,
                n_frames=6,
                latent_shape=(4, 28, 28),
                **R["tiny"]["perception"]["architecture"],
            )
        ),
        "clip": lambda: open_clip.CLIP(**clip_cfg),
        "vae": lambda: AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            norm_num_groups=4,
            layers_per_block=1,
            latent_channels=4,
        ),
        "captioner": lambda: Blip2ForConditionalGeneration(
            Blip2Config(
                vision_config=small_vit | {"image_size": 224, "patch_size": 32},
                qformer_config=small_vit | {"encoder_hidden_size": 32},
                text_config={"model_type": "opt", "hidden_size": 32, "ffn_dim": 64}
                | {"num_hidden_layers": 1, "num_attention_heads": 2, "word_embed_proj_dim": 32},
                num_query_tokens=4,
                image_token_index=50265,
            )
        ),
        "sdxl_unclip_unet": lambda: UNet2DConditionModel(
            sample_size=96,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8,
            cross_attention_dim=64,
            use_linear_projection=True,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=1024,
            **blocks,
        ),
        "sd15_unet": lambda: UNet2DConditionModel(
            sample_size=32,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            **blocks,
        ),
        "motion_adapter": lambda: _motion_adapter(
            block_out_channels=(32, 64),
            motion_layers_per_block=1,
            motion_num_attention_heads=2,
            motion_norm_num_groups=8,
        ),
        "sparsectrl": lambda: SparseControlNetModel(
            conditioning_channels=4,
            down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
            cross_attention_dim=32,
            attention_head_dim=8,
            conditioning_embedding_out_channels=(16, 32),
            motion_num_attention_heads=2,
            concat_conditioning_mask=True,
            use_simplified_condition_embedding=True,
            **blocks,
        ),
        "sd15_text_encoder": lambda: CLIPTextModel(
            CLIPTextConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
            )
        ),
        "frame_classifier": lambda: ViTForImageClassification(
            ViTConfig(num_labels=1000, **small_vit)
        ),
        "video_classifier": lambda: VideoMAEForVideoClassification(
            VideoMAEConfig(num_labels=400, **small_vit)
        ),
        **{
            name: lambda: CLIPVisionModelWithProjection(
                CLIPVisionConfig(image_size=224, patch_size=32, projection_dim=16, **small_vit)
            )
            for name in ("clip_vit_l14", "clip_vit_b32")
        },
    }


def _motion_adapter(**config):
    from diffusers import MotionAdapter

    return MotionAdapter(use_motion_mid_block=False, motion_max_seq_length=32, **config)


# ---------------------------------------------------------------- measuring


class Check:
    """Builds models on one device and measures each stage's time and peak GPU memory."""

    def __init__(self, device: torch.device, smoke: bool, clips: int, steps: int):
        self.device, self.smoke, self.clips, self.steps = device, smoke, clips, steps
        self.builders = _smoke_builders() if smoke else None
        # as the stages resolve it (float16 runs as float32 on the CPU)
        self.precision = {k: resolve_dtype(v, device) for k, v in PRECISION["paper"].items()}
        self.rng = np.random.default_rng(0)
        self.results: dict[str, dict] = {}

    def model(self, name: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        if self.smoke:
            with torch.device(self.device):
                module = self.builders[name]()
        else:
            module = build(name, self.device)
        return module.to(dtype=dtype).eval().requires_grad_(False)

    def frames(self, n: int, size: int = 224) -> np.ndarray:
        return self.rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], object], repeats: int) -> float:
        """Seconds per call of ``fn`` after one warm-up call."""
        fn()
        self.sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        self.sync()
        return (time.perf_counter() - start) / repeats

    def stage(self, name: str, unit: str, per_subject: float, run: Callable[[], float]) -> None:
        """Run one stage: ``run`` builds its models and returns seconds per ``unit``."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        seconds = run()
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else 0
        self.results[name] = {
            "unit": unit,
            "seconds_per_unit": round(seconds, 4),
            "units_per_subject": per_subject,
            "projected_gpu_hours": round(seconds * per_subject / 3600, 2),
            "peak_gpu_gb": round(peak / 1e9, 1),
            "wall_s": round(time.perf_counter() - started, 1),
        }
        print(f"{name}: {self.results[name]}", flush=True)


# ---------------------------------------------------------------- the stages


def caches(check: Check) -> None:
    from pipeline.generation.diffusion import encode_images

    d, n, dtype = CC2017, check.clips, check.precision["caches"]
    clips = d["train_clips"] + d["test_clips"]

    def vae() -> float:
        model = check.model("vae", dtype)
        frames = check.frames(n * d["frames"])
        return check.timed(lambda: encode_images(model, frames, check.device, dtype), 2) / n

    check.stage("cache_vae", "clip (6 frames)", clips, vae)

    def clip_images() -> float:
        model = check.model("clip", dtype)
        model.visual.output_tokens = True
        x = torch.randn(n * d["candidates"], 3, 224, 224, device=check.device, dtype=dtype)
        return check.timed(lambda: model.visual(x), 2) / n

    check.stage("cache_clip_images", "clip (2 candidates)", clips, clip_images)

    captions = lambda: _caption_seconds(check, d["candidates"], dtype)  # noqa: E731
    check.stage("cache_captions", "clip (2 candidates)", clips, captions)

    def clip_text() -> float:
        model = check.model("clip", dtype)
        tokens = torch.randint(0, model.vocab_size, (n * d["candidates"], 77), device=check.device)
        return check.timed(lambda: model.encode_text(tokens), 2) / n

    check.stage("cache_clip_text", "clip (2 captions)", clips, clip_text)


def _train_steps(check: Check, model, step: Callable[[], torch.Tensor]) -> float:
    """Seconds per optimizer step: AdamW, the training precision's autocast and scaler."""
    from pipeline.models.loading import autocast

    dtype = check.precision["training"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scaler = torch.amp.GradScaler(check.device.type, enabled=dtype == torch.float16)

    def one():
        with autocast(check.device, dtype):
            loss = step()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()

    return check.timed(one, check.steps)


def reconstructors(check: Check) -> None:
    from pipeline.models.loading import autocast
    from pipeline.reconstructors.layers import soft_clip_loss
    from pipeline.reconstructors.perception import pr_loss

    d, paper = CC2017, RECONSTRUCTORS["paper"]
    dev = check.device

    def perception() -> float:
        model = check.model("perception").train().requires_grad_(True)
        c, batch = model.config, paper["perception"]["batch_size"]
        x = torch.randn(batch, c.n_voxels, device=dev)
        target = torch.randn(batch, c.n_frames, *c.latent_shape, device=dev)
        return _train_steps(check, model, lambda: pr_loss(model(x), target, 0.2, 0.01)["loss"])

    epochs, batch = paper["perception"]["epochs"], paper["perception"]["batch_size"]
    steps = epochs * (d["train_samples"] // batch)
    check.stage("train_perception", f"step (batch {batch})", steps, perception)

    def semantic(phase: str) -> Callable[[], float]:
        def run() -> float:
            model = check.model("semantic").train()
            c = model.config
            trained = model.backbone if phase == "align" else model.prior
            trained.requires_grad_(True)
            b = paper["semantic"][f"{phase}_batch_size"]
            x = torch.randn(b, c.n_voxels, device=dev)
            target = torch.randn(b, c.n_tokens, c.width, device=dev)
            text = torch.randn(b, c.text_dim, device=dev)

            def align():
                _, embedding = model.backbone(x)
                return soft_clip_loss(embedding, target, 0.006) + model.reftm_loss(
                    embedding, text, 0.1
                )

            def prior():
                with torch.no_grad():
                    _, embedding = model.backbone(x)
                loss, pred = model.prior_loss(embedding, target)
                return 30 * loss + model.reftm_loss(pred, text, 0.1)

            return _train_steps(check, model, align if phase == "align" else prior)

        return run

    for phase in ("align", "prior"):
        epochs, b = paper["semantic"][f"{phase}_epochs"], paper["semantic"][f"{phase}_batch_size"]
        steps = epochs * (d["train_samples"] // b)
        check.stage(f"train_semantic ({phase})", f"step (batch {b})", steps, semantic(phase))

    def predict() -> float:
        model = check.model("semantic")
        x = torch.randn(check.clips, model.config.n_voxels, device=dev)

        def sample():
            with autocast(dev, check.precision["training"]):
                _, embedding = model.backbone(x)
                return model.sample(embedding, 20, 1.0)

        return check.timed(sample, 1) / check.clips

    check.stage("predict_semantic", "clip (20 prior steps)", d["test_clips"], predict)


def keyframes(check: Check) -> None:
    """The SDXL unCLIP sampling loop's compute: guided UNet passes at 96 × 96 latents under
    the keyframes precision's autocast, float32 weights, then the VAE decode at 768 px."""
    from diffusers import EulerDiscreteScheduler

    from pipeline.generation.diffusion import decode_images
    from pipeline.generation.sdxl_unclip import TOKENS, VECTOR
    from pipeline.models.loading import autocast

    dev, dtype, n = check.device, check.precision["keyframes"], check.clips

    def run() -> float:
        unet, vae = check.model("sdxl_unclip_unet"), check.model("vae")
        c = unet.config
        steps = 2 if check.smoke else KEYFRAME_STEPS
        scheduler = EulerDiscreteScheduler()
        tokens = torch.randn(2 * n, TOKENS, c.cross_attention_dim, device=dev)
        vector = torch.randn(2 * n, VECTOR, device=dev)

        def generate():
            scheduler.set_timesteps(steps, device=dev)
            x = torch.randn(n, 4, c.sample_size, c.sample_size, device=dev)
            x = x * scheduler.init_noise_sigma
            for t in scheduler.timesteps:
                model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
                with autocast(dev, dtype):
                    eps = unet(model_in, t, tokens, class_labels=vector).sample.float()
                uncond, cond = eps.chunk(2)
                x = scheduler.step(uncond + KEYFRAME_GUIDANCE * (cond - uncond), t, x).prev_sample
            return decode_images(vae, x)

        return check.timed(generate, 1) / n

    unit = f"keyframe ({KEYFRAME_STEPS} steps, CFG)"
    check.stage("generate_keyframes", unit, CC2017["test_clips"], run)


def _caption_seconds(check: Check, per_clip: int, dtype: torch.dtype) -> float:
    """Seconds per clip of BLIP-2 captioning ``per_clip`` images of each clip; every caption
    runs to max_new_tokens (min = max), the upper bound."""
    model = check.model("captioner", dtype)
    n = check.clips * per_clip
    x = torch.randn(n, 3, 224, 224, device=check.device, dtype=dtype)
    tokens = CAPTION_TOKENS if not check.smoke else 3
    generate = lambda: model.generate(  # noqa: E731
        pixel_values=x, max_new_tokens=tokens, min_new_tokens=tokens
    )
    return check.timed(generate, 1) / check.clips


def captions(check: Check) -> None:
    run = lambda: _caption_seconds(check, 1, check.precision["keyframes"])  # noqa: E731
    check.stage("caption_keyframes", "keyframe", CC2017["test_clips"], run)


def videos(check: Check) -> None:
    """``VideoSynthesizer.synthesize`` on AnimateDiff + SparseCtrl RGB at paper size."""
    from diffusers import AnimateDiffSparseControlNetPipeline, DDIMScheduler
    from transformers import CLIPTokenizer

    from pipeline.generation.video import VideoSettings, VideoSynthesizer
    from pipeline.models.tiny_generation import _write_tokenizer

    dtype, n = check.precision["videos"], check.clips
    paper = GENERATION_DEFAULTS["paper"]["video"]
    size = 64 if check.smoke else paper["size"]
    settings = VideoSettings(steps=2 if check.smoke else paper["steps"], size=size)

    def run() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            # a byte-level CLIP tokenizer: its ids fit the text encoder's vocabulary
            _write_tokenizer(Path(tmp))
            tokenizer = CLIPTokenizer.from_pretrained(tmp)
        text_encoder = check.model("sd15_text_encoder", dtype)
        tokenizer.model_max_length = text_encoder.config.max_position_embeddings  # SD's 77
        pipe = AnimateDiffSparseControlNetPipeline(
            vae=check.model("vae", dtype),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=check.model("sd15_unet", dtype),
            motion_adapter=check.model("motion_adapter", dtype),
            controlnet=check.model("sparsectrl", dtype),
            scheduler=DDIMScheduler(),
        ).to(check.device)
        synthesizer = VideoSynthesizer.from_pipeline(pipe, check.device, dtype)
        blurry = check.frames(n * 6).reshape(n, 6, 224, 224, 3)
        keyframes = check.frames(n, 256)
        prompts = ["a person walking on a beach"] * n
        synthesize = lambda: synthesizer.synthesize(  # noqa: E731
            blurry, keyframes, prompts, list(range(n)), settings
        )
        return check.timed(synthesize, 1) / n

    # the videos, the two ablations of the first subject, fusion's regenerated clips
    per_subject = CC2017["test_clips"] * 4
    check.stage("synthesize_videos (+ ablations, fusion)", "video", per_subject, run)


def evaluation(check: Check) -> None:
    dtype, n, dev = check.precision["evaluation"], check.clips, check.device

    def run() -> float:
        frame, video = (
            check.model("frame_classifier", dtype),
            check.model("video_classifier", dtype),
        )
        clip = check.model("clip", dtype)
        peers = [check.model(name, dtype) for name in ("clip_vit_l14", "clip_vit_b32")]
        frames = torch.randn(n * 6, 3, 224, 224, device=dev, dtype=dtype)
        generated = torch.randn(n * 16, 3, 224, 224, device=dev, dtype=dtype)
        clips = torch.randn(n, 16, 3, 224, 224, device=dev, dtype=dtype)

        # every protocol: CLIP-pcc of the 16 generated frames (ours, Mind-Animator's) and of
        # the 6 compared ones (NEURONS')
        def evaluate():
            frame(pixel_values=frames)
            video(pixel_values=clips)
            clip.encode_image(generated)
            peers[0](pixel_values=frames)
            peers[1](pixel_values=generated)

        return check.timed(evaluate, 2) / n

    check.stage("evaluate_videos", "video", CC2017["test_clips"] * 3, run)


STAGES = (caches, reconstructors, keyframes, captions, videos, evaluation)


# ---------------------------------------------------------------- estimates (--estimate)

#: An A100's dense peak (TFLOP/s: fp16/bf16 tensor cores, float32 as TF32) and the fraction
#: of it a stage is assumed to reach: the assumptions of the estimates, not measurements.
A100_TFLOPS = {torch.float16: 312.0, torch.bfloat16: 312.0, torch.float32: 156.0}
UTILISATION = 0.4


def _flops(fn: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def estimates() -> dict[str, dict]:
    """FLOPs per unit of every stage, counted by running its models on the meta device
    (forward, and backward for training), and the A100 hours they project per subject."""
    meta = torch.device("meta")
    d, paper = CC2017, RECONSTRUCTORS["paper"]
    precision = {k: getattr(torch, v) for k, v in PRECISION["paper"].items()}
    models = {}

    def m(name):
        if name not in models:
            models[name] = build(name, meta)
        return models[name]

    def rand(*shape):
        return torch.randn(*shape, device=meta)

    def blip2(n: int):
        # the image through ViT-g and the Q-Former, then OPT (with its head) over the 32 query
        # tokens and a 20-token caption: incremental decoding computes about the same. The
        # parts are called one by one: the whole model's mask code reads values (not on meta)
        model = m("captioner")
        image = model.vision_model(pixel_values=rand(n, 3, 224, 224))[0]
        queries = model.query_tokens.expand(n, -1, -1)
        queries = model.qformer(query_embeds=queries, encoder_hidden_states=image)[0]
        embeds = model.language_projection(queries)
        text = rand(n, CAPTION_TOKENS, embeds.shape[-1])
        model.language_model(inputs_embeds=torch.cat([embeds, text], 1), attention_mask=None)

    def train(model, trained, loss):
        model.requires_grad_(False)
        trained.requires_grad_(True)
        loss().backward()

    # the losses' own FLOPs (a batch-by-batch similarity) are negligible beside the models'
    # (and their autocast guard does not run on the meta device): a mean stands in for them
    def perception_step():
        pr, b = m("perception"), paper["perception"]["batch_size"]
        train(pr, pr, lambda: pr(rand(b, pr.config.n_voxels)).abs().mean())

    def semantic_step(phase):
        sr, b = m("semantic"), paper["semantic"][f"{phase}_batch_size"]
        c = sr.config
        x, target = rand(b, c.n_voxels), rand(b, c.n_tokens, c.width)
        if phase == "align":

            def align():
                _, e = sr.backbone(x)
                return e.abs().mean() + sr.to_text(e).abs().mean()

            return train(sr, sr.backbone, align)
        with torch.no_grad():
            _, e = sr.backbone(x)
        train(sr, sr.prior, lambda: sr.prior_loss(e, target)[0])

    # the samplers repeat one pass: it is counted once and multiplied by the steps
    def predict_clip() -> float:
        sr = m("semantic")
        x, t = rand(1, sr.config.n_tokens, sr.config.width), torch.zeros(1, device=meta)
        with torch.no_grad():
            _, e = sr.backbone(rand(1, sr.config.n_voxels))
        backbone = _flops(lambda: sr.backbone(rand(1, sr.config.n_voxels)))
        return backbone + 20 * _flops(lambda: sr.prior(x, t, e))

    def keyframe() -> float:
        unet, c = m("sdxl_unclip_unet"), m("sdxl_unclip_unet").config
        x, ctx = rand(2, 4, c.sample_size, c.sample_size), rand(2, 256, c.cross_attention_dim)
        guided = _flops(lambda: unet(x, 500, ctx, class_labels=rand(2, 1024)))
        decode = _flops(lambda: m("vae").decode(rand(1, 4, c.sample_size, c.sample_size)))
        return KEYFRAME_STEPS * guided + decode

    def video() -> float:
        video = GENERATION_DEFAULTS["paper"]["video"]
        s, frames = video["size"] // 8, 16
        unet, ctrl = m("video_unet"), m("sparsectrl")
        tokens = torch.zeros(2, 77, dtype=torch.long, device=meta)
        text = m("sd15_text_encoder")(tokens)[0].repeat_interleave(frames, 0)
        x = rand(2, 4, frames, s, s)
        cond, mask = rand(2, 4, frames, s, s), rand(2, 1, frames, s, s)

        def step():
            down, mid = ctrl(
                x, 500, text, controlnet_cond=cond, conditioning_mask=mask, return_dict=False
            )
            unet(
                x,
                500,
                text,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
            )

        encode = _flops(lambda: m("vae").encode(rand(frames + 1, 3, 8 * s, 8 * s)))
        decode = _flops(lambda: m("vae").decode(rand(frames, 4, s, s)))
        prompt = _flops(lambda: m("sd15_text_encoder")(tokens))
        return prompt + encode + video["steps"] * _flops(step) + decode

    def evaluate():
        m("frame_classifier")(pixel_values=rand(6, 3, 224, 224))
        m("video_classifier")(pixel_values=rand(1, 16, 3, 224, 224))
        m("clip").encode_image(rand(16, 3, 224, 224))
        m("clip_vit_l14")(pixel_values=rand(6, 3, 224, 224))
        m("clip_vit_b32")(pixel_values=rand(16, 3, 224, 224))

    def counted(fn: Callable[[], object]) -> Callable[[], float]:
        return lambda: _flops(fn)

    clips = d["train_clips"] + d["test_clips"]
    p_epochs, p_batch = paper["perception"]["epochs"], paper["perception"]["batch_size"]
    # every entry returns the FLOPs of one unit
    stages = {
        "cache_vae": (counted(lambda: m("vae").encode(rand(6, 3, 224, 224))), clips, "caches"),
        "cache_clip_images": (
            counted(lambda: m("clip").visual(rand(2, 3, 224, 224))),
            clips,
            "caches",
        ),
        "cache_captions": (counted(lambda: blip2(2)), clips, "caches"),
        "cache_clip_text": (
            counted(
                lambda: m("clip").encode_text(torch.zeros(2, 77, dtype=torch.long, device=meta))
            ),
            clips,
            "caches",
        ),
        "train_perception": (
            counted(perception_step),
            p_epochs * (d["train_samples"] // p_batch),
            "training",
        ),
    }
    for phase in ("align", "prior"):
        epochs, b = paper["semantic"][f"{phase}_epochs"], paper["semantic"][f"{phase}_batch_size"]
        stages[f"train_semantic ({phase})"] = (
            counted(lambda phase=phase: semantic_step(phase)),
            epochs * (d["train_samples"] // b),
            "training",
        )
    stages |= {
        "predict_semantic": (predict_clip, d["test_clips"], "training"),
        "generate_keyframes": (keyframe, d["test_clips"], "keyframes"),
        "caption_keyframes": (counted(lambda: blip2(1)), d["test_clips"], "keyframes"),
        "synthesize_videos (+ ablations, fusion)": (video, d["test_clips"] * 4, "videos"),
        "evaluate_videos": (counted(evaluate), d["test_clips"] * 3, "evaluation"),
    }
    results = {}
    for name, (fn, units, family) in stages.items():
        flops = fn()
        seconds = flops / (A100_TFLOPS[precision[family]] * 1e12 * UTILISATION)
        results[name] = {
            "tflop_per_unit": round(flops / 1e12, 3),
            "units_per_subject": units,
            "precision": PRECISION["paper"][family],
            "estimated_a100_hours": round(seconds * units / 3600, 2),
        }
        print(f"{name}: {results[name]}", flush=True)
    return results


def _markdown(results: dict, columns: list[tuple[str, str, str]], hours: str) -> str:
    """A row per stage, columns ``(header, result field, format)``, then a total row with
    the sum of the field ``hours``."""
    lines = ["| stage | " + " | ".join(h for h, _, _ in columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(format(r[f], x) for _, f, x in columns) + " |")
    total = f"{sum(r[hours] for r in results.values()):.1f}"
    lines.append(
        "| total | " + " | ".join(total if f == hours else "" for _, f, _ in columns) + " |"
    )
    return "\n".join(lines)


def estimate_table(results: dict) -> str:
    columns = [
        ("TFLOP / unit", "tflop_per_unit", ".3g"),
        ("units / subject", "units_per_subject", ","),
        ("precision", "precision", ""),
        ("A100 hours / subject (estimate)", "estimated_a100_hours", ".2f"),
    ]
    return _markdown(results, columns, "estimated_a100_hours")


def table(results: dict, machine: str) -> str:
    columns = [
        ("unit", "unit", ""),
        ("s / unit", "seconds_per_unit", ".3g"),
        ("units / subject", "units_per_subject", ","),
        ("GPU hours / subject", "projected_gpu_hours", ".2f"),
        ("peak GPU GB", "peak_gpu_gb", ".1f"),
    ]
    head = f"GPU check on {machine} (`make gpu-check`, random weights at paper size):"
    return f"{head}\n\n{_markdown(results, columns, 'projected_gpu_hours')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=2, help="clips per timed call")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--smoke", action="store_true", help="small models on the CPU")
    parser.add_argument(
        "--estimate", action="store_true", help="FLOP counts on the meta device (no GPU)"
    )
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    if args.estimate:
        results = estimates()
        record = {"assumed_tflops": {str(k): v for k, v in A100_TFLOPS.items()}}
        record |= {"utilisation": UTILISATION, "stages": results}
        (args.output / "gpu_estimate.json").write_text(json.dumps(record, indent=2))
        print(estimate_table(results))
        return 0
    if not args.smoke and not torch.cuda.is_available():
        reason = f"no CUDA device visible to torch {torch.__version__} (CUDA {torch.version.cuda})"
        print(f"gpu-check skipped: {reason}")
        (args.output / "gpu_check.json").write_text(json.dumps({"skipped": reason}, indent=2))
        return 0
    device = torch.device("cpu" if args.smoke else "cuda")
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke)"
    torch.manual_seed(0)
    check = Check(device, args.smoke, args.clips, args.steps)
    started = time.perf_counter()
    for stage in STAGES:
        stage(check)
    record = {
        "machine": machine,
        "smoke": args.smoke,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "precision": PRECISION["paper"],
        "clips": args.clips,
        "total_s": round(time.perf_counter() - started, 1),
        "stages": check.results,
    }
    (args.output / "gpu_check.json").write_text(json.dumps(record, indent=2))
    (args.output / "gpu_check.md").write_text(table(check.results, machine) + "\n")
    print(table(check.results, machine))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
