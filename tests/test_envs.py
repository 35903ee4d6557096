"""The lock and the conda environments the rules name: present, pinned, complete, and in
agreement with each other and with pyproject."""

import re
import shutil
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement

from pipeline.cli import main
from pipeline.environment import (
    LOCK,
    env_file_text,
    installed_versions,
    lock_drift,
    normalize,
    read_lock,
    versions_table,
)
from pipeline.errors import PipelineError
from tests.conftest import REPO, rule_blocks, snakemake

ENVS = sorted((REPO / "envs").glob("*.yaml"))
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
#: needed by the machine that runs Snakemake, not inside the jobs
NOT_IN_JOBS = {"snakemake", "snakemake-executor-plugin-slurm"}


def _name(requirement: str) -> str:
    return normalize(Requirement(requirement).name)


def _dependencies(path):
    spec = yaml.safe_load(path.read_text())
    conda = [d for d in spec["dependencies"] if isinstance(d, str)]
    pip = [p for d in spec["dependencies"] if isinstance(d, dict) for p in d.get("pip", [])]
    return spec, conda, pip


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_environment_files_are_pinned(path):
    spec, conda, pip = _dependencies(path)
    assert spec["channels"] == ["conda-forge", "nodefaults"]
    assert conda == ["python=3.11", "pip"], f"{path.name}: PyPI's wheels come through pip"
    for dep in pip:
        pinned = re.fullmatch(r"[\w.-]+==[\w.]+", dep)
        from_git = re.fullmatch(r"[\w.-]+ @ git\+https://\S+@[0-9a-f]{40}", dep)
        assert pinned or from_git, f"{path.name}: {dep}"


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_environment_files_agree_with_the_lock(path):
    """Every package at its locked version, and every dependency of the environment's own
    packages listed: the file is what `make lock` writes."""
    lock = read_lock()
    _, _, pip = _dependencies(path)
    for dep in (d for d in pip if " @ git+" not in d):
        name, version = dep.split("==")
        assert lock[normalize(name)][1] == version, f"{path.name}: {dep}"
    assert env_file_text(path) == path.read_text(), f"{path.name}: run python -m pipeline sync-envs"


def test_an_environment_file_that_drifts_from_the_lock_is_rewritten(tmp_path):
    text = (REPO / "envs/pipeline.yaml").read_text()
    version = read_lock()["zarr"][1]
    drifted = tmp_path / "env.yaml"
    drifted.write_text(text.replace(f"- zarr=={version}", "- zarr==3.0.0"))
    assert env_file_text(drifted) == text  # the version is set back
    trimmed = re.sub(r"\n\s+- numcodecs==.*", "", text)  # a dependency of zarr left out
    drifted.write_text(trimmed)
    assert trimmed != text and env_file_text(drifted) == text
    drifted.write_text(text.replace("      - zarr==", "      - not-locked==0.1\n      - zarr=="))
    with pytest.raises(PipelineError, match="not-locked not in the lock"):
        env_file_text(drifted)


def test_the_lock_satisfies_pyproject():
    """Every requirement of pyproject (its extras included) is locked at a version that
    satisfies it, and the lock names no other top-level package: run `make lock` after
    editing pyproject."""
    lock = read_lock()
    requirements = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in PROJECT["optional-dependencies"].values():
        requirements += [Requirement(r) for r in extra]
    for requirement in requirements:
        name = normalize(requirement.name)
        assert name in lock, f"{LOCK.name} lacks {requirement}"
        assert requirement.specifier.contains(lock[name][1]), (str(requirement), lock[name][1])
    top_level = {name for name, (_, _, via) in lock.items() if "neuroclips-pipeline" in via}
    assert top_level == {normalize(r.name) for r in requirements}


def test_the_keyframe_environment_holds_sgm_and_what_it_imports():
    """sgm declares no dependencies: envs/keyframes.yaml pins it by commit beside the
    `keyframes` extra, and holds every package of the model environment."""
    from pipeline.generation.sdxl_unclip import SGM_COMMIT

    _, _, pip = _dependencies(REPO / "envs/keyframes.yaml")
    names = {_name(d.split(" @ ")[0]) for d in pip}
    assert any(d.startswith("sgm @ git+") and d.endswith(SGM_COMMIT) for d in pip)
    for requirement in PROJECT["optional-dependencies"]["keyframes"]:
        assert _name(requirement) in names, requirement
    _, _, models = _dependencies(REPO / "envs/models.yaml")
    assert {_name(d) for d in models} <= names


def test_a_lock_line_that_is_not_a_pin_is_named(tmp_path):
    (tmp_path / "requirements.lock").write_text("numpy==2.0.0\nnumpy>=2\n")
    with pytest.raises(PipelineError, match=r"requirements.lock:2: not a 'name==version' pin"):
        read_lock(tmp_path / "requirements.lock")


def test_versions_mark_drift_from_the_lock(tmp_path, monkeypatch, capsys):
    """Against a lock of what is installed, nothing drifts; one changed pin is marked, listed
    and fails `versions --check`."""
    import pipeline.environment

    installed = installed_versions()
    lock = tmp_path / "requirements.lock"
    lock.write_text("".join(f"{name}=={v}  # via x\n" for name, v in installed.items()))
    table = versions_table(lock=lock)
    assert "numpy" in table and "torch" in table and " *" not in table
    assert lock_drift(lock) == []
    monkeypatch.setattr(pipeline.environment, "LOCK", lock)
    assert main(["versions", "--check"]) == 0
    assert "every installed package of requirements.lock is at" in capsys.readouterr().out

    lock.write_text(lock.read_text().replace(f"numpy=={installed['numpy']}", "numpy==0.0.1"))
    row = next(r for r in versions_table(lock=lock).splitlines() if r.startswith("numpy "))
    assert row.split() == ["numpy", installed["numpy"], "0.0.1", "*"]
    assert lock_drift(lock) == [f"numpy: locked 0.0.1, installed {installed['numpy']}"]
    assert main(["versions", "--check"]) == 1
    assert "1 installed packages differ from requirements.lock: numpy" in capsys.readouterr().err


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
    _, _, pip = _dependencies(REPO / "envs/models.yaml")
    in_env = {_name(d): d for d in pip}
    for requirement in PROJECT["dependencies"]:
        name = _name(requirement)
        if name in NOT_IN_JOBS:
            continue
        assert name in in_env, f"envs/models.yaml lacks {requirement}"
        assert Requirement(requirement).specifier.contains(in_env[name].split("==")[1])


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
