"""Shared fixtures: a small demo configuration and one real Snakemake run of it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import validate_config
from pipeline.demo import DemoSettings, generate_demo
from tests import slurm

REPO = Path(__file__).resolve().parents[1]

#: A demo small enough for the test suite; same structure as the default demo.
SMALL_DEMO = {
    "seed": 7,
    "n_subjects": 1,
    "n_train_segments": 12,
    "n_test_segments": 2,
    "segment_duration_s": 80,
    "test_repetitions": 4,
    "frame_size": 64,
    # the finer gratings of earlier demos: with the default's coarse ones, the frame-level
    # 50-way classification of this demo's videos fell to its shuffled control (0.103
    # against 0.106, with a 600-step VAE): the tiny VAE keeps too little of the frames'
    # chroma for the frame classifier's colour clusters
    "grating_cycles": [1.5, 6.0],
    "cortex_vertices": [600, 600],
    "subcortical_voxels": 100,
}
SMALL_OVERLAY = {
    "demo": SMALL_DEMO,
    # 64 px frames (the tiny VAE is fitted on 32 px crops): at 32 px frames the VAE's 4 x 4
    # latents cannot carry a blurry video (round-trip SSIM ~0.2), and the blurry-video check
    # says nothing
    "frames": {"size": 64},
    "models": {
        "tiny_vae_steps": 450,
        "tiny_generation_steps": 60,
        "tiny_classifier_steps": 200,
        "batch_size": 64,
    },
    "perception": {"epochs": 30},
    "semantic": {"prior_epochs": 2},
    # 6-step schedules: alpha guidance runs round(0.3 * 6) = 2 of them per video; videos
    # at the frames' size (the tiny preset's half would leave 4 x 4 latents)
    "keyframes": {"steps": 6},
    "video": {"steps": 6, "size": 64, "batch_size": 8},
}
#: What the run through Slurm changes in the small demo: every rule still runs once, on
#: less data and with fewer steps, since it tests the executor and the profile, not the
#: reconstructions (the small demo's run in :func:`workspace` does that).
SLURM_OVERLAY = {
    "demo": {"n_train_segments": 4, "test_repetitions": 2},
    "models": {"tiny_vae_steps": 50, "tiny_generation_steps": 10, "tiny_classifier_steps": 30},
    "perception": {"epochs": 3},
    "semantic": {"align_epochs": 2, "prior_epochs": 1},
    "fusion": {"epochs": 3},
    "keyframes": {"steps": 4},
    "video": {"steps": 4},
    "evaluation": {"trials": 10, "bootstrap_resamples": 100},
}
#: Side of the extracted frames in the small demo.
FRAME_SIZE = SMALL_OVERLAY["frames"]["size"]


def small_config(**sections) -> dict:
    """The validated default config with the small demo and ``sections`` merged in."""
    config = {k: dict(v) for k, v in SMALL_OVERLAY.items()}
    for key, value in sections.items():
        config.setdefault(key, {}).update(value)
    return validate_config(config)


def rule_blocks() -> dict[str, str]:
    """Rule name → the text of its definition, for every rule of the workflow."""
    rules = {}
    for smk in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        for match in re.finditer(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", smk.read_text(), re.M | re.S):
            rules[match[1]] = match[2]
    return rules


def snakemake_command(workdir: Path, *args: str, overlay: dict | None = None) -> list[str]:
    """The Snakemake command line for ``workdir``, writing the small-demo config overlay."""
    overlay_file = workdir / "overlay.yaml"
    merged = {k: dict(v) for k, v in SMALL_OVERLAY.items()}
    for key, value in (overlay or {}).items():
        merged.setdefault(key, {}).update(value)
    overlay_file.write_text(yaml.safe_dump(merged))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--cores",
        "2",
        # one thread per job: the suite's runs share two cores with the unit tests (and in
        # CI with the Slurm run), and a two-thread torch job beside another busy process
        # slows several-fold (a VAE fit: 15.7 s alone, 60.4 s beside a two-thread load,
        # 26.0 s with one thread each)
        "--max-threads",
        "1",
        *args,  # before --configfile, which would take targets for more config files
        "--configfile",
        str(overlay_file),
    ]
    return cmd


def snakemake(
    workdir: Path,
    *args: str,
    overlay: dict | None = None,
    check: bool = True,
    env: dict | None = None,
):
    """Run Snakemake on the repository's workflow in ``workdir`` with a config overlay."""
    cmd = snakemake_command(workdir, *args, overlay=overlay)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout}\n{result.stderr}")
    return result


def planned_jobs(workdir: Path, overlay: dict | None = None, *targets: str) -> dict[str, int]:
    """Rules and job counts that ``snakemake -n`` would run (empty when up to date)."""
    result = snakemake(workdir, "-n", *targets, overlay=overlay)
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator of the test's own: its draws do not depend on which tests ran
    before it (a module-level generator's would)."""
    return np.random.default_rng(0)


#: Thread counts a process started by a unit test reads (OpenMP for torch, the BLASes).
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: Thread settings from before :func:`_workspace_run` set one thread; empty once restored.
_SAVED_THREADS: dict = {}


def _all_threads() -> None:
    """Give torch, and the processes tests start, the thread counts they had before the
    end-to-end run began (a no-op once done)."""
    if not _SAVED_THREADS:
        return
    import torch

    torch.set_num_threads(_SAVED_THREADS.pop("torch"))
    for var, value in _SAVED_THREADS.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    _SAVED_THREADS.clear()


#: The fixture of the one end-to-end run.
WORKSPACE = "workspace"
#: The fixture of its stores up to the embedding caches, ready before the run ends.
EARLY_STORES = "early_stores"
#: The fixture of the whole workflow on the demo in the HCP 7T movie layout.
HCP_WORKSPACE = "hcp_workspace"


def _uses(item, fixture: str) -> bool:
    return fixture in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config, items):
    """Tests of the end-to-end run after the unit tests, in their collected order: the run
    itself starts with the session (:func:`_workspace_run`) and goes on beside them. Tests
    of its early stores come first, so they run while the rest of the workflow does; the
    tests of the HCP-layout run (:func:`hcp_workspace`) come last."""
    early = [i for i in items if _uses(i, EARLY_STORES) and not _uses(i, WORKSPACE)]
    later = [i for i in items if _uses(i, WORKSPACE)]
    hcp = [i for i in items if _uses(i, HCP_WORKSPACE)]  # last: its run follows the other
    moved = set(map(id, early + later + hcp))
    items[:] = [item for item in items if id(item) not in moved] + early + later + hcp


@pytest.fixture(scope="session", autouse=True)
def _workspace_run(request, tmp_path_factory):
    """The small demo's whole workflow, started in the background when the session begins
    if a selected test needs it; :func:`workspace` waits for it. Its log is
    ``snakemake.log`` in the workdir."""
    if not any(_uses(i, WORKSPACE) or _uses(i, EARLY_STORES) for i in request.session.items):
        yield None
        return
    import torch

    workdir = tmp_path_factory.mktemp("workspace")
    log = workdir / "snakemake.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            snakemake_command(workdir), stdout=out, stderr=subprocess.STDOUT, text=True
        )
    # the unit tests beside it, and the processes they start, on one thread each
    _SAVED_THREADS.update({var: os.environ.get(var) for var in _THREAD_VARIABLES})
    _SAVED_THREADS["torch"] = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ.update(dict.fromkeys(_THREAD_VARIABLES, "1"))
    try:
        yield workdir, process, log
    finally:
        _all_threads()
        if process.poll() is None:  # the session stopped early
            process.terminate()
            process.wait()


@pytest.fixture(scope="session")
def workspace(_workspace_run) -> Path:
    """A workdir where the whole workflow ran once on the small demo."""
    workdir, process, log = _workspace_run
    if process.wait() != 0:
        raise AssertionError(f"snakemake failed:\n{log.read_text()[-20000:]}")
    _all_threads()  # the run no longer shares the cores
    return workdir


#: The HCP 7T movie layout over the small demo's settings: 12 training clips of 80 s dealt
#: over the four movies, an 80-s test clip closing each, TR 1 s, 2-s clips, 24 FPS movies,
#: voxels selected by encoding (configs/hcp7t_movie.yaml, with 12-s rest blocks)
HCP_OVERLAY = {
    "dataset": {"format": "hcp7t_movie", "tr_s": 1.0},
    "alignment": {"clip_s": 2.0, "shift_s": 4.0},
    "selection": {"method": "encoding"},
    "demo": {"fps": 24, "rest_s": 12, "n_train_segments": 12, "segment_duration_s": 80},
}
HCP_SUBJECT = "100001"


@pytest.fixture(scope="session")
def hcp_workspace(_workspace_run, tmp_path_factory) -> Path:
    """A workdir where the whole workflow ran once on the demo in the HCP 7T movie layout,
    after the small demo's run (if the session has one) ended: the two do not share cores."""
    if _workspace_run is not None:
        _workspace_run[1].wait()
        _all_threads()
    workdir = tmp_path_factory.mktemp("hcp_workspace")
    log = workdir / "snakemake.log"
    with log.open("w") as out:
        result = subprocess.run(
            snakemake_command(workdir, overlay=HCP_OVERLAY),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    if result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{log.read_text()[-20000:]}")
    return workdir


#: The end-to-end run's last stores before the reconstructors' training (its workdir's paths).
_EARLY_STORE_PATHS = (
    "results/subject1/aligned.zarr",
    "results/cache/vae_latents.zarr",
    "results/cache/clip_images.zarr",
    "results/cache/clip_text.zarr",
)


@pytest.fixture(scope="session")
def early_stores(_workspace_run) -> Path:
    """The end-to-end run's workdir once the reconstructors' training inputs are there (the
    aligned fMRI and the embedding caches; before them the selection, the frames and the
    tiny models), while the rest of the workflow may still run. Each store appears
    complete: it is renamed into place once written (:func:`pipeline.stores.atomic_output`).
    """
    workdir, process, log = _workspace_run
    while not all((workdir / path).is_dir() for path in _EARLY_STORE_PATHS):
        if process.poll() is not None:
            missing = [p for p in _EARLY_STORE_PATHS if not (workdir / p).is_dir()]
            if missing:
                raise AssertionError(
                    f"snakemake ended without {missing}:\n{log.read_text()[-20000:]}"
                )
        time.sleep(1)
    return workdir


@pytest.fixture(scope="session")
def slurm_workspace(tmp_path_factory) -> dict:
    """The small demo's whole workflow, cut by :data:`SLURM_OVERLAY`, run through the Slurm
    executor with the repository's profile (profiles/slurm) on a single-node cluster
    started on this machine (tests/slurm.py), stopped before the tests look at the result.

    Returns the workdir, Snakemake's output and the daemons' pids. Skips, with the
    reason, where no cluster can be started (not root, or no slurm-wlm / munge).
    """
    reason = slurm.unavailable_reason()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("slurm_workspace")
    root = tmp_path_factory.mktemp("slurm")
    with slurm.slurm_cluster(root / "cluster") as (env, daemons):
        profile = slurm.fitted_profile(REPO / "profiles/slurm", root / "profile")
        result = snakemake(
            workdir, "--profile", str(profile), *slurm.OPTIONS, overlay=SLURM_OVERLAY, env=env
        )
    return {"workdir": workdir, "result": result, "daemons": daemons}


@pytest.fixture(scope="session")
def rerun_table() -> dict[str, list[str]]:
    """Config key → the rules that rerun when it changes, generated from the workflow."""
    from pipeline.rerun import rerun_table

    return rerun_table(REPO / "Snakefile")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small demo dataset written directly (no Snakemake), to be copied and damaged."""
    root = tmp_path_factory.mktemp("demo") / "cc2017"
    settings = small_config(
        demo={
            "n_train_segments": 8,
            "segment_duration_s": 20,
            "test_repetitions": 3,
            "snr": [3.0, 6.0],
        }
    )
    generate_demo(DemoSettings.from_config(settings), root)
    return root


@pytest.fixture
def dataset_copy(demo_root, tmp_path) -> Path:
    """A private copy of :func:`demo_root` a test may modify."""
    target = tmp_path / "cc2017"
    shutil.copytree(demo_root, target)
    return target
