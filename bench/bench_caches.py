"""Share of each cache stage's batch loop spent outside the model calls, on the demo.

Runs the workflow on the default demo (tiny preset) in bench/output/caches/,
forcing the four cache stages (one at a time: each takes both cores), and
reads the `timing` attribute each cache store records (model load, batch loop,
time inside model calls). Goal: at most 15 % of the loop outside
the model. Then runs the two frame-reading stages of small models in-process
with and without the background reader (``prefetch=0``), to show what the
overlap does to the loop's wall time on this machine.

    python bench/bench_caches.py      # writes bench/output/caches.json
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import OUTPUT, report, snakemake_base  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CACHES = {
    "cache_vae": "vae_latents",
    "cache_clip_images": "clip_images",
    "cache_captions": "captions",
    "cache_clip_text": "clip_text",
}


def prefetch_comparison(workdir: Path) -> dict:
    """Loop time and model share of clip_images and captions with prefetch 0 and 2."""
    from pipeline import caches
    from pipeline.config import validate_config

    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    frames = sorted((workdir / "results" / "frames").glob("*.zarr"))
    models = workdir / "resources" / "models" / "tiny"
    candidates = config["keyframes"]["candidates"]
    stages = {
        "cache_clip_images": lambda out, depth: caches.cache_clip_images(
            frames, out, model=models / "clip", candidates=candidates, prefetch=depth
        ),
        "cache_captions": lambda out, depth: caches.cache_captions(
            frames,
            out,
            model=models / "captioner",
            candidates=candidates,
            prefetch=depth,
            **config["captions"],
        ),
    }
    result = {}
    for rule, run in stages.items():
        for depth in (0, 2):
            out = workdir / "prefetch" / f"{rule}_{depth}.zarr"
            run(out, depth)
            result[f"{rule} prefetch={depth}"] = dict(
                zarr.open_group(out, mode="r").attrs["timing"]
            )
    return result


def main() -> None:
    workdir = OUTPUT / "caches"
    workdir.mkdir(parents=True, exist_ok=True)
    targets = [f"results/cache/{name}.zarr" for name in CACHES.values()]
    base = snakemake_base(workdir)
    subprocess.run([*base, "--cores", "2", *targets], check=True, capture_output=True)
    subprocess.run(
        [*base, "--cores", "2", "--forcerun", *CACHES, "--", *targets],
        check=True,
        capture_output=True,
    )
    result = {
        rule: dict(zarr.open_group(workdir / target, mode="r").attrs["timing"])
        for rule, target in zip(CACHES, targets, strict=True)
    }
    result["goal"] = {"outside_model_fraction": "<= 0.15"}
    result["prefetch_comparison"] = prefetch_comparison(workdir)
    report("caches", result)


if __name__ == "__main__":
    main()
