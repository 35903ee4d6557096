"""The paper preset's download rules against its repositories' real layouts, offline.

A Hugging Face cache (tests/hub.py) holds, under each paper repository id, tiny
weights in the file names and formats that repository really has on main: the
OpenCLIP repo's ``open_clip_pytorch_model.*`` beside a transformers copy, a VAE
whose ``vae/`` holds only ``diffusion_pytorch_model.bin``, BLIP-2's safetensors
shards beside pickled ones, RealisticVision's pickle-only ``unet/`` and
``text_encoder/`` beside top-level single-file checkpoints, MindEye2's Lightning
``.ckpt`` in a dataset repository, the diffusers-format domain-adapter LoRA.
The real download rules run through Snakemake with ``HF_HUB_OFFLINE=1``; then
every loader loads every role, and the weights are the ones put in the cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import DataError
from pipeline.models.download import layout_role
from pipeline.models.presets import CLASSIFIERS, GENERATION, PRESETS, ModelSource
from tests.conftest import REPO, snakemake
from tests.hub import cache_repo, tree


def _cache(cache, source: ModelSource, files: dict) -> None:
    """``files`` as ``source``'s repository, at its pinned revision where it has one."""
    cache_repo(cache, source.repo, files, repo_type=source.repo_type, commit=source.revision)


#: files a repository holds that no loader reads: they must not be fetched
DECOY = b"not read by any loader"


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _lora(unet, seed=0) -> dict[str, torch.Tensor]:
    """A diffusers-format LoRA (keys prefixed ``unet.``) on the UNet's attention layers."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, param in unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)
    layers = get_peft_model_state_dict(unet)
    unet.delete_adapters("default")
    state = StableDiffusionPipeline.pack_weights(layers, "unet")
    return {k: v.contiguous() for k, v in state.items()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The paper repositories in a Hugging Face cache; returns paths and reference weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        Blip2ForConditionalGeneration,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTextModel,
        VideoMAEConfig,
        VideoMAEForVideoClassification,
        VideoMAEImageProcessor,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    from pipeline.models.tiny import write_tiny_captioner, write_tiny_clip, write_tiny_vae
    from pipeline.models.tiny_classifiers import write_tiny_openai_clip
    from pipeline.models.tiny_generation import write_tiny_unclip, write_tiny_video

    root = tmp_path_factory.mktemp("hub")
    build, cache = root / "build", root / "cache"
    expected = {}

    # laion/CLIP-ViT-bigG-14-laion2B-39B-b160k: open_clip files and a transformers copy
    clip = write_tiny_clip(build / "clip")
    expected["clip"] = load_file(clip / "open_clip_pytorch_model.safetensors")
    torch.save(expected["clip"], build / "open_clip_pytorch_model.bin")
    files = tree(clip) | {"open_clip_pytorch_model.bin": build / "open_clip_pytorch_model.bin"}
    files |= {"config.json": b"{}", "model-00001-of-00002.safetensors": DECOY}
    files |= {"pytorch_model-00001-of-00002.bin": DECOY}
    _cache(cache, PRESETS["paper"]["clip"], files)

    # lambdalabs/sd-image-variations-diffusers: vae/ holds the pickle only
    vae = AutoencoderKL.from_pretrained(write_tiny_vae(build / "vae_st", sample_size=64))
    vae.save_pretrained(build / "vae_bin", safe_serialization=False)
    expected["vae"] = _state(vae)
    files = tree(build / "vae_bin", "vae/") | {"unet/diffusion_pytorch_model.bin": DECOY}
    files |= {"model_index.json": b"{}", "image_encoder/pytorch_model.bin": DECOY}
    _cache(cache, PRESETS["paper"]["vae"], files)

    # Salesforce/blip2-opt-2.7b: safetensors shards beside pickled shards
    captioner = write_tiny_captioner(build / "captioner_src")
    model = Blip2ForConditionalGeneration.from_pretrained(captioner)
    expected["captioner"] = _state(model)
    shards = build / "captioner"
    shutil.copytree(captioner, shards)
    (shards / "model.safetensors").unlink()
    model.save_pretrained(shards, max_shard_size="100KB")
    assert len(list(shards.glob("model-*-of-*.safetensors"))) > 1
    files = tree(shards) | {"pytorch_model-00001-of-00002.bin": DECOY}
    _cache(cache, PRESETS["paper"]["captioner"], files)

    # google/vit-base-patch16-224 and MCG-NJU/videomae-base-finetuned-kinetics
    vit = ViTForImageClassification(
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=10,
        )
    )
    vit.save_pretrained(build / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(build / "vit")
    mae = VideoMAEForVideoClassification(
        VideoMAEConfig(
            image_size=32,
            patch_size=8,
            num_frames=4,
            tubelet_size=2,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=5,
        )
    )
    mae.save_pretrained(build / "videomae")
    VideoMAEImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(
        build / "videomae"
    )
    for role, model, folder in (
        ("frame_classifier", vit, "vit"),
        ("video_classifier", mae, "videomae"),
    ):
        expected[role] = _state(model)
        files = tree(build / folder) | {"pytorch_model.bin": DECOY, "tf_model.h5": DECOY}
        _cache(cache, CLASSIFIERS["paper"][role], files)

    # openai/clip-vit-large-patch14 (safetensors beside pickles) and
    # openai/clip-vit-base-patch32 (no safetensors on its pinned revision: the pickle is read)
    for role, patch in (("clip_vit_l14", 4), ("clip_vit_b32", 8)):
        folder = build / role
        write_tiny_openai_clip(folder, seed=1, patch_size=patch)
        (folder / "metadata.json").unlink()  # ours, not the repository's
        model = CLIPModel.from_pretrained(folder)
        expected[role] = _state(model)
        files = tree(folder) | {"tf_model.h5": DECOY, "flax_model.msgpack": DECOY}
        files |= {"tokenizer.json": b"{}", "vocab.json": b"{}"}
        if "model.safetensors" in CLASSIFIERS["paper"][role].files:
            files["pytorch_model.bin"] = DECOY
        else:
            (folder / "model.safetensors").unlink()
            torch.save(model.state_dict(), folder / "pytorch_model.bin")
            files = tree(folder) | {"tf_model.h5": DECOY, "flax_model.msgpack": DECOY}
        _cache(cache, CLASSIFIERS["paper"][role], files)

    # the video models, on the tiny VAE
    write_tiny_unclip(build / "unclip", build / "vae_st", 0, 64)
    video = write_tiny_video(build / "video", build / "vae_st", 0, 64)
    _cache(cache, GENERATION["paper"]["unclip"], tree(build / "unclip"))
    for role in ("motion_adapter", "sparsectrl"):
        _cache(cache, GENERATION["paper"][role], tree(video[role]))
    _cache(cache, GENERATION["paper"]["video_vae"], tree(build / "vae_st"))

    # SG161222/Realistic_Vision_V6.0_B1_noVAE: pickled unet/ and text_encoder/, no vae/,
    # top-level single-file checkpoints
    base = video["video_base"]
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder")
    expected["unet"], expected["text_encoder"] = _state(unet), _state(text_encoder)
    rv = build / "rv"
    shutil.copytree(base, rv, ignore=shutil.ignore_patterns("unet", "text_encoder", "vae"))
    unet.save_pretrained(rv / "unet", safe_serialization=False)
    text_encoder.config.save_pretrained(rv / "text_encoder")  # transformers 5 writes no .bin
    torch.save(text_encoder.state_dict(), rv / "text_encoder" / "pytorch_model.bin")
    CLIPImageProcessor().save_pretrained(rv / "feature_extractor")
    index = json.loads((rv / "model_index.json").read_text())
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (rv / "model_index.json").write_text(json.dumps(index))
    files = tree(rv) | {
        "Realistic_Vision_V6.0_NV_B1.safetensors": DECOY,
        "Realistic_Vision_V6.0_NV_B1_fp16.safetensors": DECOY,
        "safety_checker/config.json": b"{}",
        "safety_checker/pytorch_model.bin": DECOY,
        "vae/config.json": b"{}",  # a VAE despite the name; video_vae is read instead
        "vae/diffusion_pytorch_model.bin": DECOY,
    }
    _cache(cache, GENERATION["paper"]["video_base"], files)

    # guoyww/animatediff-motion-lora-v1-5-3: the domain adapter LoRA, diffusers format
    expected["lora"] = _lora(UNet2DConditionModel.from_pretrained(base / "unet"))
    save_file(expected["lora"], build / "diffusion_pytorch_model.safetensors")
    lora_file = {
        "diffusion_pytorch_model.safetensors": build / "diffusion_pytorch_model.safetensors"
    }
    _cache(cache, GENERATION["paper"]["domain_adapter"], lora_file)

    # pscotti/mindeyev2 (a dataset repository): a Lightning checkpoint among other files
    expected["sdxl_unclip"] = {"model.diffusion_model.out.2.weight": torch.randn(4, 8, 3, 3)}
    expected["sdxl_unclip"]["conditioner.embedders.0.proj"] = torch.randn(8, 4)
    checkpoint = {
        "epoch": 0,
        "global_step": 110000,
        "pytorch-lightning_version": "2.0.1",
        "state_dict": expected["sdxl_unclip"],
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 0}}}},
        "callbacks": {},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 3e-5, "params": [0]}]}],
        "lr_schedulers": [],
    }
    torch.save(checkpoint, build / "unclip6.ckpt")
    source = GENERATION["paper"]["sdxl_unclip"]
    files = {source.files[0]: build / "unclip6.ckpt", "bigG_to_L_epoch8.pth": DECOY}
    _cache(cache, source, files)
    return {
        "cache": cache,
        "expected": expected,
        "lora": build / "diffusion_pytorch_model.safetensors",
    }


def _offline(hub, root) -> dict:
    return os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub["cache"]),
        "HF_HOME": str(root / "hf_home"),
    }


@pytest.fixture(scope="module")
def downloaded(hub, tmp_path_factory):
    """``snakemake download_models download_generation_models download_classifiers`` with
    the paper preset, offline from the cache."""
    workdir = tmp_path_factory.mktemp("paper")
    models = workdir / "models"
    snakemake(
        workdir,
        "download_models",
        "download_generation_models",
        "download_classifiers",
        overlay={"models": {"preset": "paper", "root": str(models)}},
        env=_offline(hub, workdir),
    )
    return models


def test_only_what_the_loaders_read_is_fetched_and_no_pickle_is_laid_out(downloaded):
    files = {p.relative_to(downloaded).as_posix() for p in downloaded.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".bin", ".ckpt", ".pth", ".h5"))]
    assert not [f for f in files if "Realistic_Vision" in f or "safety_checker" in f]
    assert sorted(p.name for p in (downloaded / "paper/clip").iterdir()) == [
        "open_clip_config.json",
        "open_clip_pytorch_model.safetensors",
        "source.json",
    ]
    assert "paper/vae/diffusion_pytorch_model.safetensors" in files
    assert "paper-generation/sdxl_unclip/unclip6.safetensors" in files
    # the default generator's roles only: SD 2.1 unCLIP is not fetched
    assert sorted(p.name for p in (downloaded / "paper-generation").iterdir() if p.is_dir()) == [
        "domain_adapter",
        "motion_adapter",
        "sdxl_unclip",
        "sparsectrl",
        "video_base",
        "video_vae",
    ]
    for manifest in downloaded.glob("*/*/source.json"):
        record = json.loads(manifest.read_text())
        assert len(record["commit"]) == 40 and record["files"], manifest
    assert not (downloaded / ".download").exists()
    # a store that read a model records where it came from, with its pinned revision
    from pipeline.stores import provenance

    inputs = provenance("test", {}, [downloaded / "paper-generation", downloaded / "paper/vae"])
    generation, vae = (record["models"] for record in inputs["inputs"])
    assert generation["video_base"]["revision"] == GENERATION["paper"]["video_base"].revision
    assert vae["."]["repo"] == PRESETS["paper"]["vae"].repo


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_encoder_and_classifier_loads_the_cached_weights(downloaded, hub):
    from transformers import (
        AutoModelForImageClassification,
        AutoModelForVideoClassification,
        Blip2ForConditionalGeneration,
    )

    from pipeline.models.loading import (
        load_captioner,
        load_clip,
        load_clip_vision,
        load_image_classifier,
        load_vae,
        load_video_classifier,
    )

    expected = hub["expected"]
    model, _ = load_clip(downloaded / "paper/clip")
    assert _equal(_state(model), expected["clip"])
    assert _equal(_state(load_vae(downloaded / "paper/vae")), expected["vae"])
    _, model = load_captioner(downloaded / "paper/captioner")
    assert _equal(_state(model), expected["captioner"])
    _, model = load_image_classifier(downloaded / "paper-classifiers/frame_classifier")
    assert _equal(_state(model), expected["frame_classifier"])
    _, model = load_video_classifier(downloaded / "paper-classifiers/video_classifier")
    assert _equal(_state(model), expected["video_classifier"])
    for role in ("clip_vit_l14", "clip_vit_b32"):  # the image tower and its projection
        _, model = load_clip_vision(downloaded / "paper-classifiers" / role)
        held = {k: v for k, v in expected[role].items() if k in _state(model)}
        assert len(held) == len(_state(model)) and _equal(_state(model), held), role
    for cls, folder in (
        (Blip2ForConditionalGeneration, "paper/captioner"),
        (AutoModelForImageClassification, "paper-classifiers/frame_classifier"),
        (AutoModelForVideoClassification, "paper-classifiers/video_classifier"),
    ):
        _, info = cls.from_pretrained(
            downloaded / folder, use_safetensors=True, output_loading_info=True
        )
        assert not info["missing_keys"] and not info["unexpected_keys"], (folder, info)


def test_the_video_models_load_with_the_domain_adapter(downloaded, hub):
    from pipeline.generation.video import VideoSynthesizer

    synthesizer = VideoSynthesizer.from_generation_dir(
        downloaded / "paper-generation", torch.device("cpu"), torch.float32
    )
    pipe, expected = synthesizer.pipe, hub["expected"]
    held = sum(1 for k in expected["lora"] if k.endswith("lora_A.weight"))
    adapted = [m for m in pipe.unet.modules() if "domain_adapter" in getattr(m, "lora_A", {})]
    assert held > 0 and len(adapted) == held
    text = _state(pipe.text_encoder)
    assert _equal(text, expected["text_encoder"])
    # the UNet's spatial layers are RealisticVision's (its LoRA layers wrap them)
    unet = {k.replace(".base_layer", ""): v for k, v in _state(pipe.unet).items()}
    assert all(torch.equal(unet[k], v) for k, v in expected["unet"].items())
    converted = load_file(downloaded / "paper-generation/sdxl_unclip/unclip6.safetensors")
    assert _equal(converted, expected["sdxl_unclip"])
    # the generator reads the UNet's tensors, not the unused ViT-bigG image embedder's
    from pipeline.generation.sdxl_unclip import UNUSED, read_weights

    read = read_weights(downloaded / "paper-generation/sdxl_unclip/unclip6.safetensors", UNUSED)
    assert list(read) == ["model.diffusion_model.out.2.weight"]


def test_an_adapter_whose_keys_name_no_layer_is_an_error(downloaded, hub, tmp_path):
    """The AnimateDiff-format v3_sd15_adapter.ckpt names its keys without ``unet.``:
    diffusers would load no layer from it and only warn."""
    from pipeline.generation.video import VideoSynthesizer

    state = {k.removeprefix("unet."): v for k, v in hub["expected"]["lora"].items()}
    (tmp_path / "adapter").mkdir()
    save_file(state, tmp_path / "adapter" / "lora.safetensors")
    root = downloaded / "paper-generation"
    with pytest.raises(DataError, match="lora.safetensors: the LoRA adapts 0 layers but holds"):
        VideoSynthesizer(
            root / "video_base",
            root / "motion_adapter",
            root / "sparsectrl",
            torch.device("cpu"),
            torch.float32,
            vae=root / "video_vae",
            domain_adapter=tmp_path / "adapter",
        )


def test_a_repository_without_the_loaders_files_is_named(tmp_path):
    """What a `*.safetensors` filter met on the VAE repository's main: config.json only."""
    snapshot = tmp_path / "snapshot"
    (snapshot / "vae").mkdir(parents=True)
    (snapshot / "vae/config.json").write_text("{}")
    with pytest.raises(DataError, match=r"no file matches 'vae/diffusion_pytorch_model.bin'"):
        layout_role("vae", PRESETS["paper"]["vae"], snapshot, tmp_path / "vae")
    assert not (tmp_path / "vae").exists()


def test_a_failed_role_costs_only_itself(hub, tmp_path):
    """One repository missing from the cache: the other roles are built and kept, the set
    folder does not appear, and the rerun builds only the missing role."""
    cache = hub["cache"]
    repo = GENERATION["paper"]["sparsectrl"].repo
    folder = cache / f"models--{repo.replace('/', '--')}"
    hidden = cache / "hidden"
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "download-models",
        "--set",
        "generation",
        "--preset",
        "paper",
        "--generator",
        "mindeye2_sdxl_unclip",
        "--root",
        str(tmp_path / "models"),
    ]
    env = _offline(hub, tmp_path) | {"PYTHONPATH": str(REPO)}
    folder.rename(hidden)
    try:
        first = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    finally:
        hidden.rename(folder)
    assert first.returncode == 1
    assert "1 of 6 roles failed" in first.stderr and repo in first.stderr
    staging = tmp_path / "models/.download/paper-generation"
    assert sorted(p.name for p in staging.iterdir()) == [
        "domain_adapter",
        "motion_adapter",
        "sdxl_unclip",
        "video_base",
        "video_vae",
    ]
    assert not (tmp_path / "models/paper-generation").exists()
    second = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("complete from an earlier run") == 5
    assert (tmp_path / "models/paper-generation/sparsectrl/config.json").is_file()
    assert not (tmp_path / "models/.download").exists()


def test_every_hub_role_says_which_files_its_loader_reads():
    for registry in (PRESETS, GENERATION, CLASSIFIERS):
        for role, source in registry["paper"].items():
            assert isinstance(source, ModelSource) and source.repo and source.files, role


@pytest.mark.parametrize(("device", "expected"), [("auto", "cuda"), ("cpu", "cpu")])
def test_the_paper_preset_never_falls_back_to_the_cpu_unless_told(tmp_path, device, expected):
    """`auto` under the paper preset asks the jobs for CUDA, so a job on a node without it
    stops with the reason (loading.resolve_device) instead of running on the CPU."""
    result = snakemake(
        tmp_path, "-n", "-p", overlay={"models": {"preset": "paper", "device": device}}
    )
    devices = set(re.findall(r"--device (\S+)", result.stdout))
    assert devices == {expected}
