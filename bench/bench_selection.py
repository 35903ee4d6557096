"""The encoding selection at the size of one HCP 7T movie subject, and the movies' scan.

1. ``encoding_scores`` on 59,412 cortical vertices and the HCP training design: the 14
   unique clips of the four runs (the test-retest clip left out), 717 + 734 + 712 + 717 s
   of movie (the HCP clip timing table) in 2-s clips, 1,438 samples. ``--permutations``
   null fits are timed (default 20) and 1,000 are extrapolated linearly: an estimate.
2. The rest-block scan of discovery (``still_blocks``) on a synthetic 1024 x 720, 24-FPS
   H.264 movie of ``--movie-s`` seconds (default 60; the HCP movies' size and rate), per
   second of movie, and extrapolated to the four movies' 3,655 s: an estimate, as the
   real movies' content decodes at its own speed.

    python bench/bench_selection.py        # writes bench/output/selection.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import report  # noqa: E402
from pipeline.io.stimulus import still_blocks  # noqa: E402
from pipeline.selection import encoding_scores  # noqa: E402

#: seconds of unique movie per clip of the four runs, the test-retest clip left out
#: (HCP_7T_Movie_Clip_Timing.csv, HCP wiki mirror jese11/HCP-wiki-public @ 252eca98)
CLIP_SECONDS = (
    (244.04, 221.63, 188.00, 63.75),
    (226.71, 258.58, 249.21),
    (180.54, 184.50, 204.08, 142.50),
    (232.29, 229.83, 255.17),
)
VERTICES = 59412
MOVIE_SECONDS = 921 + 918 + 915 + 901


def _selection(permutations: int) -> dict:
    rng = np.random.default_rng(0)
    lengths = [int(s // 2) for run in CLIP_SECONDS for s in run]
    features = [rng.standard_normal((n, 20)) for n in lengths]
    bold = [rng.standard_normal((n, VERTICES)).astype(np.float32) for n in lengths]
    start = time.perf_counter()
    encoding_scores(features, bold, n_folds=2, alpha=10.0, permutations=0, rng=rng)
    observed = time.perf_counter() - start
    start = time.perf_counter()
    encoding_scores(features, bold, n_folds=2, alpha=10.0, permutations=permutations, rng=rng)
    with_null = time.perf_counter() - start
    per_permutation = (with_null - observed) / permutations
    return {
        "samples": sum(lengths),
        "vertices": VERTICES,
        "observed_fit_s": round(observed, 2),
        "permutations_timed": permutations,
        "per_permutation_s": round(per_permutation, 3),
        "estimate_1000_permutations_min": round((observed + 1000 * per_permutation) / 60, 1),
    }


def _scan(seconds: int) -> dict:
    import av

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "movie.mp4"
        rng = np.random.default_rng(1)
        with av.open(str(path), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=24)
            stream.width, stream.height = 1024, 720
            stream.pix_fmt = "yuv420p"
            base = rng.integers(0, 255, (720, 1024, 3), dtype=np.uint8)
            for k in range(seconds * 24):
                frame = np.roll(base, 4 * k, axis=1)  # a pan: every frame differs
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode(None))
        start = time.perf_counter()
        still_blocks(path, threshold=0.002, min_s=10.0)
        wall = time.perf_counter() - start
    return {
        "movie_s": seconds,
        "scan_s": round(wall, 2),
        "scan_s_per_movie_s": round(wall / seconds, 4),
        "estimate_four_movies_min": round(wall / seconds * MOVIE_SECONDS / 60, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--permutations", type=int, default=20)
    parser.add_argument("--movie-s", type=int, default=60)
    args = parser.parse_args()
    report(
        "selection",
        {"encoding_selection": _selection(args.permutations), "movie_scan": _scan(args.movie_s)},
    )


if __name__ == "__main__":
    main()
