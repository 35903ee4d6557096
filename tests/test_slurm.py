"""profiles/slurm, and the demo through the Snakemake Slurm executor on a real Slurm.

The profile checks run with the suite. The cluster tests (marker ``cluster``, run by
``make test-cluster``) start a single-node cluster on this machine (tests/slurm.py) and
run the whole workflow through it on a cut demo (conftest.SLURM_OVERLAY), one CPU per
job: 12 min 46 s in a fresh-clone CI run on 2 cores beside the suite, 10 min 37 s alone
(the plugin's polling, Snakemake started twice per job).
"""

from __future__ import annotations

import os
import re

import pytest
import yaml

from tests.conftest import REPO, SLURM_OVERLAY, planned_jobs, rule_blocks

PROFILE = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())


def _local_rules() -> set[str]:
    local = set()
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.findall(r"^localrules:\n((?:\s+\w+,?\n)+)", smk.read_text(), re.M):
            local |= set(re.findall(r"\w+", block))
    return local


def test_the_profile_sizes_every_rule_and_asks_a_gpu_for_the_model_stages():
    rules = rule_blocks()
    submitted = set(rules) - _local_rules() - {"all"}
    assert set(PROFILE["set-resources"]) == submitted
    assert set(PROFILE["set-threads"]) == submitted
    for rule, resources in PROFILE["set-resources"].items():
        assert {"mem_mb", "runtime", "cpus_per_task"} <= set(resources), rule
        assert resources["cpus_per_task"] == PROFILE["set-threads"][rule], rule
        # a model stage is a rule that takes a device
        uses_device = "{resources.device}" in rules[rule]
        assert (resources.get("gpu") == 1) == uses_device, rule
        expected = "YOUR_GPU_PARTITION" if uses_device else "YOUR_CPU_PARTITION"
        partition = resources.get(
            "slurm_partition", PROFILE["default-resources"]["slurm_partition"]
        )
        assert partition == expected, rule
    assert PROFILE["executor"] == "slurm"


def test_rules_leave_cluster_sizes_to_the_profile():
    for rule, block in rule_blocks().items():
        for key in ("mem_mb", "runtime", "cpus_per_task"):
            assert not re.search(rf"^\s+{key}=", block, re.M), f"rule {rule} sets {key}"


def test_every_model_stage_holds_one_gpu():
    """`snakemake --cores 8 --resources gpu=1` on a one-GPU workstation then never runs two
    model stages at once; the Slurm profile sets the same request."""
    for rule, block in rule_blocks().items():
        uses_device = "{resources.device}" in block
        gpu = re.findall(r"^\s+gpu=(\d+),", block, re.M)
        assert gpu == (["1"] if uses_device else []), rule


@pytest.mark.cluster
def test_the_demo_ran_to_its_final_target_through_slurm(slurm_workspace):
    workspace = slurm_workspace["workdir"]
    text = slurm_workspace["result"].stdout + slurm_workspace["result"].stderr
    assert (workspace / "results/report/index.html").is_file()
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", text)
    logs = sorted((workspace / ".snakemake/slurm_logs").glob("rule_*/**/*.log"))
    # every job but the target went through sbatch, and finished there
    stats = text.split("Job stats:", 1)[1].split("total", 1)[0]
    jobs = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stats, re.M)}
    assert len(submitted) == len(set(submitted)) == sum(jobs.values()) - jobs["all"]
    assert {p.stem for p in logs} == set(submitted)
    rules_logged = {p.relative_to(workspace / ".snakemake/slurm_logs").parts[0] for p in logs}
    assert rules_logged == {f"rule_{r}" for r in jobs if r != "all"}
    for log in logs:
        assert re.search(r"Finished jobid: 0", log.read_text()), log
    # the profile's resources reached sbatch: the GPU stages asked for the GPU
    train_log = next(p for p in logs if "rule_train_perception" in str(p)).read_text()
    assert "gpu=1" in train_log.replace(" ", "")
    assert planned_jobs(workspace, SLURM_OVERLAY) == {}


@pytest.mark.cluster
def test_the_cluster_was_stopped(slurm_workspace):
    for pid in slurm_workspace["daemons"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
