"""The conda environments the rules name: present, pinned, and complete."""

import re
import shutil
import tomllib

import pytest
import yaml

from tests.conftest import REPO, rule_blocks, snakemake

ENVS = sorted((REPO / "envs").glob("*.yaml"))
#: conda-forge names of PyPI packages where they differ
CONDA_NAMES = {"matplotlib": "matplotlib-base"}
#: needed by the machine that runs Snakemake, not inside the jobs
NOT_IN_JOBS = {"snakemake", "snakemake-executor-plugin-slurm"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _dependencies(path):
    spec = yaml.safe_load(path.read_text())
    conda = [d for d in spec["dependencies"] if isinstance(d, str)]
    pip = [p for d in spec["dependencies"] if isinstance(d, dict) for p in d.get("pip", [])]
    return spec, conda, pip


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_environment_files_are_pinned(path):
    spec, conda, pip = _dependencies(path)
    assert spec["channels"] == ["conda-forge", "nodefaults"]
    for dep in conda:
        assert dep == "pip" or re.fullmatch(r"[\w.-]+=[\w.]+", dep), f"{path.name}: {dep}"
    for dep in pip:
        assert re.fullmatch(r"[\w.-]+==[\w.]+", dep), f"{path.name}: {dep}"


def test_every_rule_that_runs_a_command_names_an_existing_environment():
    for name, block in rule_blocks().items():
        if "shell:" not in block:
            continue
        match = re.search(r'conda:\n\s+"([^"]+)"', block)
        assert match, f"rule {name} has no conda environment"
        assert (REPO / "rules" / match[1]).resolve().is_file(), f"rule {name}: {match[1]}"


def test_the_model_environment_holds_every_runtime_dependency():
    """What pyproject installs for the pipeline is in envs/models.yaml, at the version that
    pyproject pins where it pins one."""
    _, conda, pip = _dependencies(REPO / "envs/models.yaml")
    in_env = {_name(d): d for d in conda + pip}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in project:
        name = _name(requirement)
        if name in NOT_IN_JOBS:
            continue
        key = CONDA_NAMES.get(name, name)
        assert key in in_env, f"envs/models.yaml lacks {requirement}"
        pinned = re.search(r"==([\w.]+)", requirement)
        if pinned:
            assert in_env[key].endswith(pinned[1]), (requirement, in_env[key])


@pytest.mark.skipif(
    shutil.which("conda") is None,
    reason="no conda on PATH: PyPI, Debian and npm (this machine's registries) carry no "
    "conda >= 24.7.1, and `snakemake --use-conda` asks conda even for a dry run",
)
def test_use_conda_plans_the_whole_run(tmp_path):
    result = snakemake(tmp_path, "-n", "--use-conda", "--conda-prefix", str(tmp_path / "envs"))
    text = result.stdout + result.stderr
    for env in ENVS:
        assert f"Conda environment envs/{env.name} will be created" in text
    assert "report" in text.split("Job stats:", 1)[1]
