"""Paper-size memory of the model stages, from models built on the meta device, against the
Slurm profile's host memory and the GPU sizes docs/performance.md states."""

import importlib.util

import pytest
import torch
import yaml

from pipeline.models.budget import (
    GPU_SIZES_GB,
    PROCESS_GB,
    UNBUDGETED,
    Budget,
    fits,
    fits_host,
    paper_budgets,
    paper_models,
    table,
)
from tests.conftest import REPO

PROFILE = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())["set-resources"]


@pytest.fixture(scope="module")
def budgets():
    return paper_budgets()


OPENAI = ("clip_vit_l14", "clip_vit_b32")


def test_paper_size_models_have_the_published_sizes():
    """Parameter counts against the published weights' sizes (float32 bytes / 4)."""
    models = paper_models()
    count = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert all(p.is_meta for m in models.values() for p in m.parameters())
    # the SR is about 2.16 B parameters at 14,828 voxels, ViT-bigG/14 2.54 B (10.2 GB in fp32)
    assert 2.1e9 < count["semantic"] < 2.2e9
    assert 2.5e9 < count["clip"] < 2.6e9
    assert count["vae"] == 83_653_863  # Stable Diffusion's KL-f8 VAE, 335 MB
    assert count["sd15_unet"] == 859_520_964  # SD 1.5's UNet, 3.44 GB
    # the motion modules: the motion adapter's 1.67 GB; SparseCtrl RGB's 1.99 GB
    assert 1.66e9 < (count["video_unet"] - count["sd15_unet"]) * 4 < 1.68e9
    assert 1.98e9 < count["sparsectrl"] * 4 < 2.0e9
    # BLIP-2: EVA ViT-g (~1.0 B), the Q-Former (~0.1 B) and OPT-2.7b (~2.65 B)
    assert 3.7e9 < count["captioner"] < 3.8e9
    assert count["frame_classifier"] == 86_567_656  # ViT-B/16, 1000 classes
    assert 86e6 < count["video_classifier"] < 87e6  # VideoMAE-B, 400 classes
    # the openai CLIPs' image towers; whole, their repositories' 1.71 GB and 605 MB
    assert 303e6 < count["clip_vit_l14"] < 305e6 and 87e6 < count["clip_vit_b32"] < 89e6
    from pipeline.models.paper_size import count as parameters
    from pipeline.models.paper_size import openai_clip

    with torch.device("meta"):
        whole = {n: parameters(openai_clip(n, image_tower=False)) for n in OPENAI}
    assert whole["clip_vit_l14"] == 427_616_513 and whole["clip_vit_b32"] == 151_277_313


def test_the_motion_unet_holds_exactly_the_motion_adapters_modules():
    """The video UNet's config and the motion adapter's hub config agree: the UNet adds
    to SD 1.5's exactly the adapter's parameters."""
    from pipeline.models.paper_size import build, count

    unet, sd15, adapter = (build(n) for n in ("video_unet", "sd15_unet", "motion_adapter"))
    assert count(unet) - count(sd15) == count(adapter)


@pytest.mark.skipif(importlib.util.find_spec("sgm") is None, reason="sgm is not installed")
def test_the_sdxl_unclip_unet_matches_sgms():
    """The diffusers UNet the budgets and the GPU check build has the parameters of sgm's
    UNetModel in MindEye2's unclip6 configuration."""
    from sgm.util import instantiate_from_config

    from pipeline.generation.sdxl_unclip import unclip6_configs
    from pipeline.models.paper_size import build, count

    with torch.device("meta"):
        unet = instantiate_from_config(unclip6_configs(38, 5.0)["network_config"])
    assert count(unet) == count(build("sdxl_unclip_unet")) == 2_501_272_324


def test_every_model_stage_has_a_budget(budgets):
    """Every rule that declares the gpu resource (a model stage) is budgeted."""
    import re

    rules = set()
    for path in (REPO / "rules").glob("*.smk"):
        for block in re.split(r"(?m)^(?=rule )", path.read_text())[1:]:
            if re.search(r"(?m)^\s+gpu=1,", block):
                rules.add(re.match(r"rule (\w+):", block).group(1))
    assert rules == set(budgets) | set(UNBUDGETED)


def test_every_budgeted_stage_fits_its_profile_and_an_80_gb_gpu(budgets):
    for stage, budget in budgets.items():
        assert fits_host(budget, PROFILE[stage]["mem_mb"]), (stage, budget.host)
        assert fits(budget, 80), (stage, budget.gpu)


def test_which_stages_need_the_80_gb_gpu(budgets):
    """The documented memory table: only the SR's training needs more than 40 GB."""
    assert GPU_SIZES_GB == (80, 40)
    assert [s for s, b in budgets.items() if not fits(b, 40)] == ["train_semantic"]


def test_the_documented_memory_table_is_the_budget(budgets):
    """docs/performance.md holds the table `python -m pipeline memory-budget` prints."""
    mem_mb = {rule: r["mem_mb"] for rule, r in PROFILE.items() if "mem_mb" in r}
    printed = table(budgets, mem_mb)
    assert printed.count("\n") > len(budgets)  # header, rule, a row per stage
    page = (REPO / "docs/performance.md").read_text()
    assert printed in page, "run `python -m pipeline memory-budget` and update docs/performance.md"


def test_the_precision_sets_what_the_caches_hold(budgets):
    """The control: in float32 the caches' GPU weights double (the paper preset's float16
    is what the official code runs)."""
    from pipeline.models.presets import PRECISION

    full = paper_budgets(dict.fromkeys(PRECISION["paper"], "float32"))
    for stage in ("cache_vae", "cache_clip_images", "cache_captions"):
        assert full[stage].gpu_bytes == 2 * budgets[stage].gpu_bytes, stage


def test_two_host_copies_of_the_sr_would_not_fit_predict_semantic(budgets):
    """The control: building the model on the host and then loading its state (two copies,
    as before the meta-device load) exceeds the profile."""
    one = budgets["predict_semantic"]
    budget = Budget(one.stage, one.host | {"second copy": one.host["weights, one copy"]})
    assert not fits_host(budget, PROFILE["predict_semantic"]["mem_mb"])
    assert PROCESS_GB > 0


def test_loading_our_models_keeps_the_loaded_tensors():
    """load_into builds on the meta device and takes the loaded tensors themselves: no copy."""
    from pipeline.reconstructors.outputs import load_into

    def build():
        return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8))

    state = {k: torch.randn_like(v, device="cpu") for k, v in build().state_dict().items()}
    model = load_into(build, state, "test")
    for name, param in model.state_dict().items():
        assert param.data_ptr() == state[name].data_ptr(), name
