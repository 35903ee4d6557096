"""Paper-size memory of the model stages, from models built on the meta device, against the
Slurm profile's host memory and the GPU sizes the README states."""

import pytest
import torch
import yaml

from pipeline.models.budget import (
    GPU_SIZES_GB,
    PROCESS_GB,
    Budget,
    fits,
    fits_host,
    paper_budgets,
    paper_models,
)
from tests.conftest import REPO

PROFILE = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())["set-resources"]


@pytest.fixture(scope="module")
def budgets():
    return paper_budgets()


def test_paper_size_models_have_the_published_sizes():
    models = paper_models()
    count = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    # the SR is about 2.16 B parameters at 14,828 voxels, ViT-bigG/14 2.54 B (10.2 GB in fp32)
    assert 2.1e9 < count["semantic"] < 2.2e9
    assert 2.5e9 < count["clip"] < 2.6e9
    assert all(p.is_meta for m in models.values() for p in m.parameters())


def test_every_budgeted_stage_fits_its_profile_and_an_80_gb_gpu(budgets):
    for stage, budget in budgets.items():
        assert fits_host(budget, PROFILE[stage]["mem_mb"]), (stage, budget.host)
        assert fits(budget, 80), (stage, budget.gpu)


def test_which_stages_need_the_80_gb_gpu(budgets):
    """The README's memory table: only the SR's training needs more than 40 GB."""
    assert GPU_SIZES_GB == (80, 40)
    assert [s for s, b in budgets.items() if not fits(b, 40)] == ["train_semantic"]


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
