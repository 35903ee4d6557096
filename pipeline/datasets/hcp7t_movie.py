"""The HCP 7T movie-watching runs (HCP S1200 release), read from the release layout.

::

    {root}/{subject}/MNINonLinear/Results/{run}/{run}_Atlas_MSMAll_hp2000_clean.dtseries.nii
    {stimuli}/7T_MOVIE1_CC1_v2.mp4, 7T_MOVIE2_HO1_v2.mp4, 7T_MOVIE3_CC2_v2.mp4, 7T_MOVIE4_HO2_v2.mp4

with the runs ``tfMRI_MOVIE1_7T_AP``, ``tfMRI_MOVIE2_7T_PA``, ``tfMRI_MOVIE3_7T_PA``
and ``tfMRI_MOVIE4_7T_AP`` and six-digit subject folders. The facts, and where
they come from:

- Run and file names: the HCP's own packaging scripts
  (``Washington-University/xnat_pbs_jobs`` @ e6b157e3,
  ``7T/Create2mmFixPackage``, ``7T/Create1p6mmFixPackage`` and the
  DeDriftAndResample completion checker). The 2 mm files hold the 91,282
  grayordinates of the fs_LR 32k space; the ``_Atlas_1.6mm_`` files the
  170,494 of the 59k space (``hcp7t_movie.resolution``).
- TR 1 s: the HCP 7T imaging protocol page (humanconnectome.org,
  "HCP protocols YA 7T imaging").
- The structure of every run: a 20-s rest block opens it and separates its
  clips, and its last clip is the same 83-s test-retest montage in all four
  runs (HCP wiki, "7T Movie watching task clip info, timing, versions shown per
  individual subject", and its ``HCP_7T_Movie_Clip_Timing.csv``; mirror
  ``jese11/HCP-wiki-public`` @ 252eca98).
- The movie starts with the run: second ``s`` of the movie is shown during
  volume ``s`` (the peers' loaders, e.g. ``mk2299/SharedEncoding_MICCAI`` @
  5c19df10, index volumes by ``frame / 24``).

What was not verified against the files (they are not public) is read from the
data instead: the clips' onsets and lengths come from the movies themselves,
whose rest blocks are found as stretches where the picture stays still
(:func:`pipeline.io.stimulus.still_blocks`); the closing clips must have equal
lengths, and the runs' volume counts must cover their movies. The repeated closing clip is the
test set, its four presentations averaged as cc2017's test repetitions are;
every other clip is training data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

from pipeline.datasets.base import Dataset, Presentation, Run, Segment, natural_key
from pipeline.errors import DataError
from pipeline.io.stimulus import still_blocks

__all__ = [
    "HCP7TMovie",
    "MOVIES",
    "RUNS",
    "SUBJECT_RE",
    "TEST_SEGMENT",
    "clips_of_movie",
    "discover_dataset",
    "layout_dataset",
    "run_path",
    "stimulus_path",
]

log = logging.getLogger(__name__)

#: The four runs, in the order they were acquired (sessions 1 and 4, two runs each).
RUNS = ("tfMRI_MOVIE1_7T_AP", "tfMRI_MOVIE2_7T_PA", "tfMRI_MOVIE3_7T_PA", "tfMRI_MOVIE4_7T_AP")
#: The movie each run shows (the version shown after 2014-08-21, in ``Post_20140821_version``).
MOVIES = ("7T_MOVIE1_CC1_v2", "7T_MOVIE2_HO1_v2", "7T_MOVIE3_CC2_v2", "7T_MOVIE4_HO2_v2")
#: File name of a run's dense time series, by ``hcp7t_movie.resolution``.
SERIES = {
    "2mm": "{run}_Atlas_MSMAll_hp2000_clean.dtseries.nii",
    "1.6mm": "{run}_Atlas_1.6mm_MSMAll_hp2000_clean.dtseries.nii",
}
#: HCP subject ids: six digits.
SUBJECT_RE = re.compile(r"^[0-9]{6}$")
#: The name of the repeated closing clip, the test segment.
TEST_SEGMENT = "retest"


def run_path(root: str | os.PathLike, subject: str, run: str, resolution: str = "2mm") -> Path:
    """Path of one run's FIX-cleaned MSMAll dense time series.

    Parameters
    ----------
    root : path
        The release root, holding one folder per subject.
    subject : str
        Six-digit HCP id.
    run : str
        One of :data:`RUNS`.
    resolution : {"2mm", "1.6mm"}

    Returns
    -------
    Path
        Not checked to exist.
    """
    name = SERIES[resolution].format(run=run)
    return Path(root) / subject / "MNINonLinear" / "Results" / run / name


def stimulus_path(stimuli: str | os.PathLike, run: str) -> Path:
    """The movie file shown during one run.

    Parameters
    ----------
    stimuli : path
        The movie folder.
    run : str
        One of :data:`RUNS`.

    Returns
    -------
    Path
        Not checked to exist.
    """
    return Path(stimuli) / f"{MOVIES[RUNS.index(run)]}.mp4"


def clips_of_movie(
    path: str | os.PathLike, *, threshold: float, min_s: float, cache: Path | None = None
) -> tuple[Fraction, int, list[tuple[int, int]]]:
    """The clips of a movie: the spans between its rest blocks, in frames.

    Parameters
    ----------
    path : path
        A movie that opens with a rest block and separates its clips by rest blocks.
    threshold, min_s : float
        As :func:`pipeline.io.stimulus.still_blocks`.
    cache : Path, optional
        Folder of JSON files keyed by the movie's size, time and the settings: a
        movie is decoded once.

    Returns
    -------
    fps : Fraction
    n_frames : int
    clips : list of (int, int)
        ``[first, stop)`` frame ranges.

    Raises
    ------
    DataError
        If the movie holds no rest block, does not open with one, or holds no clip.
    """
    path = Path(path)
    stat = path.stat() if path.is_file() else None
    if stat is None:
        raise DataError(f"{path}: movie not found")
    key = hashlib.sha256(
        json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, threshold, min_s]).encode()
    ).hexdigest()[:16]
    record = cache / f"{path.stem}-{key}.json" if cache else None
    if record is not None and record.is_file():
        fps_text, n_frames, blocks = json.loads(record.read_text())
        fps, blocks = Fraction(fps_text), [tuple(b) for b in blocks]
    else:
        fps, n_frames, blocks = still_blocks(path, threshold=threshold, min_s=min_s)
        if record is not None:
            record.parent.mkdir(parents=True, exist_ok=True)
            partial = record.with_name(f"{record.name}.{os.getpid()}.tmp")
            partial.write_text(json.dumps([str(fps), n_frames, blocks]))
            partial.replace(record)  # an interrupted write never passes for a record
    if not blocks:
        raise DataError(
            f"{path}: no rest block found (no still stretch of {min_s:g} s or more, frame "
            f"changes below {threshold:g}); the movie's clips cannot be told apart"
        )
    if blocks[0][0] != 0:
        raise DataError(
            f"{path}: the movie does not open with a rest block (the first still stretch "
            f"starts at {blocks[0][0] / fps:.2f} s)"
        )
    # each clip runs from the end of a rest block to the start of the next (or the end)
    edges = [*[e for block in blocks for e in block], n_frames]
    clips = [(a, b) for a, b in zip(edges[1::2], edges[2::2], strict=True) if b > a]
    if not clips:
        raise DataError(f"{path}: no clip between the rest blocks")
    return fps, n_frames, clips


def discover_dataset(
    root: str | os.PathLike,
    subjects: list[str] | None = None,
    *,
    stimuli: str | os.PathLike = "Post_20140821_version",
    resolution: str = "2mm",
    still_threshold: float = 0.002,
    min_rest_s: float = 10.0,
    unmatched: str = "error",
    cache: Path | None = None,
) -> Dataset:
    """Find the subjects, runs and clips of an HCP 7T movie release under ``root``.

    Parameters
    ----------
    root : path
        The release root: one folder per subject.
    subjects : list of str, optional
        Six-digit ids; default every subject folder with a movie run.
    stimuli : path
        The movie folder, relative to ``root`` or absolute.
    resolution : {"2mm", "1.6mm"}
        Which dense time series to read.
    still_threshold, min_rest_s : float
        How rest blocks are found (:func:`pipeline.io.stimulus.still_blocks`).
    unmatched : {"error", "drop"}
        A subject without all four runs: an error naming the missing files, or
        left out with a warning.
    cache : Path, optional
        Where the movies' clip boundaries are kept (:func:`clips_of_movie`).

    Returns
    -------
    Dataset
        Segments ``movie{n}_clip{k}`` (training) and ``retest`` (test); four runs per
        subject, each presenting its movie's clips at their onsets.

    Raises
    ------
    DataError
        A missing root, subject folder, run or movie; a movie without rest blocks;
        closing clips of different lengths; a run shorter than its movie.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (dataset.root of the HCP 7T movie release)")
    stimuli = Path(stimuli) if Path(stimuli).is_absolute() else root / stimuli
    if not stimuli.is_dir():
        raise DataError(
            f"{stimuli}: no movie folder; hcp7t_movie.stimuli must name the folder holding "
            f"{', '.join(m + '.mp4' for m in MOVIES)} (Post_20140821_version of the release)"
        )
    if subjects:
        missing = [s for s in subjects if not (root / s).is_dir()]
        if missing:
            raise DataError(f"{root}: subject folder(s) not found: {', '.join(missing)}")
    else:
        subjects = sorted(
            (p.name for p in root.iterdir() if p.is_dir() and SUBJECT_RE.match(p.name)),
            key=natural_key,
        )
        if not subjects:
            renamed = sorted(p.name for p in root.iterdir() if (p / "MNINonLinear").is_dir())
            hint = f"; folders with MNINonLinear/ but another name: {renamed}" if renamed else ""
            raise DataError(f"{root}: no subject folders named by a six-digit HCP id{hint}")

    # the clips of every movie, from its rest blocks
    movies = {}
    for run in RUNS:
        path = stimulus_path(stimuli, run)
        if not path.is_file():
            raise DataError(f"{path}: movie not found (the stimulus of {run})")
        movies[run] = (
            path,
            *clips_of_movie(path, threshold=still_threshold, min_s=min_rest_s, cache=cache),
        )
    closing = {run: clips[-1] for run, (_, _, _, clips) in movies.items()}
    lengths = {run: (b - a) / movies[run][1] for run, (a, b) in closing.items()}
    if (
        max(lengths.values()) - min(lengths.values())
        > 1 / min(m[1] for m in movies.values()) + 1e-9
    ):
        listed = ", ".join(f"{movies[r][0].name} {float(v):.3f} s" for r, v in lengths.items())
        raise DataError(
            f"{stimuli}: the closing clips of the movies differ in length ({listed}); every run "
            "must close with the same test-retest clip"
        )

    segments: dict[str, Segment] = {}
    onsets: dict[str, list[Presentation]] = {}
    for n, run in enumerate(RUNS, 1):
        path, fps, _, clips = movies[run]
        presentations = []
        for k, (a, b) in enumerate(clips[:-1], 1):
            name = f"movie{n}_clip{k}"
            segments[name] = Segment(
                name, "train", path, float(a / fps), float((b - a) / fps), False
            )
            presentations.append(Presentation(name, 1, float(a / fps)))
        a, b = clips[-1]
        presentations.append(Presentation(TEST_SEGMENT, n, float(a / fps)))
        onsets[run] = presentations
    first_path, fps, _, clips = movies[RUNS[0]]
    a, b = clips[-1]
    segments[TEST_SEGMENT] = Segment(
        TEST_SEGMENT, "test", first_path, float(a / fps), float((b - a) / fps), False
    )

    runs: dict[str, list[Run]] = {}
    warnings: list[str] = []
    problems: list[str] = []
    for subject in subjects:
        paths = [run_path(root, subject, run, resolution) for run in RUNS]
        absent = [p for p in paths if not p.is_file()]
        if absent:
            problems.append(f"{subject}: no {', '.join(str(p) for p in absent)}")
            continue
        runs[subject] = [
            Run(path, tuple(onsets[run]), 0) for path, run in zip(paths, RUNS, strict=True)
        ]
    if problems:
        if unmatched == "error":
            raise DataError(
                "runs missing (each subject needs all four movie runs; set dataset.unmatched: "
                "drop to leave such subjects out):\n  " + "\n  ".join(problems)
            )
        warnings += [f"dataset.unmatched: drop: {p}; subject left out" for p in problems]
        if not runs:
            raise DataError(f"{root}: no subject has all four movie runs")
    for message in warnings:
        log.warning(message)
    return Dataset(HCP7TMovie.name, root, _ordered(segments), runs, warnings)


def _ordered(segments: dict[str, Segment]) -> dict[str, Segment]:
    """Training segments, then the test segment."""
    return {n: s for n, s in segments.items() if s.role == "train"} | {
        n: s for n, s in segments.items() if s.role == "test"
    }


def layout_dataset(
    root: str | os.PathLike,
    subjects: list[str],
    clips: dict[str, list[tuple[float, float]]],
    stimuli: str | os.PathLike = "Post_20140821_version",
    resolution: str = "2mm",
) -> Dataset:
    """The :class:`~pipeline.datasets.base.Dataset` of a release holding these clips.

    Parameters
    ----------
    root : path
    subjects : list of str
    clips : dict of str to list of (float, float)
        Per run (:data:`RUNS`), the (onset, duration) of its clips in seconds, the
        closing test-retest clip last.
    stimuli : path
        The movie folder, relative to ``root`` or absolute.
    resolution : {"2mm", "1.6mm"}

    Returns
    -------
    Dataset
    """
    root = Path(root)
    stimuli = Path(stimuli) if Path(stimuli).is_absolute() else root / stimuli
    segments: dict[str, Segment] = {}
    onsets: dict[str, list[Presentation]] = {}
    for n, run in enumerate(RUNS, 1):
        path = stimulus_path(stimuli, run)
        presentations = []
        for k, (onset, duration) in enumerate(clips[run][:-1], 1):
            name = f"movie{n}_clip{k}"
            segments[name] = Segment(name, "train", path, onset, duration, False)
            presentations.append(Presentation(name, 1, onset))
        presentations.append(Presentation(TEST_SEGMENT, n, clips[run][-1][0]))
        onsets[run] = presentations
    onset, duration = clips[RUNS[0]][-1]
    segments[TEST_SEGMENT] = Segment(
        TEST_SEGMENT, "test", stimulus_path(stimuli, RUNS[0]), onset, duration, False
    )
    runs = {
        subject: [
            Run(run_path(root, subject, run, resolution), tuple(onsets[run]), 0) for run in RUNS
        ]
        for subject in subjects
    }
    return Dataset(HCP7TMovie.name, root, _ordered(segments), runs, [])


class HCP7TMovie:
    """The HCP 7T movie layout as a :class:`~pipeline.datasets.base.DatasetFormat`."""

    name = "hcp7t_movie"
    subject_pattern = SUBJECT_RE
    tr_s = 1.0
    demo_layout = "movies"
    runs = RUNS

    @staticmethod
    def demo_subject(index: int) -> str:
        """The demo's name of subject ``index`` (1-based): a six-digit id, ``10000{index}``."""
        return f"{100000 + index}"

    @staticmethod
    def discover(
        root: str | os.PathLike, settings: dict[str, Any], cache: Path | None = None
    ) -> Dataset:
        """:func:`discover_dataset` with the ``dataset`` section's keys.

        Parameters
        ----------
        root : path
        settings : dict
            The validated ``dataset`` section: ``subjects``, ``unmatched`` and the
            ``hcp7t_movie`` mapping (``stimuli``, ``resolution``, ``still_threshold``,
            ``min_rest_s``).
        cache : path, optional
            Where the movies' clip boundaries are kept (:func:`clips_of_movie`).

        Returns
        -------
        Dataset
        """
        hcp = settings["hcp7t_movie"]
        return discover_dataset(
            root,
            subjects=settings["subjects"] or None,
            stimuli=hcp["stimuli"],
            resolution=hcp["resolution"],
            still_threshold=hcp["still_threshold"],
            min_rest_s=hcp["min_rest_s"],
            unmatched=settings["unmatched"],
            cache=Path(cache) / "movie_clips" if cache else None,
        )

    run_path = staticmethod(run_path)
    stimulus_path = staticmethod(stimulus_path)
    layout_dataset = staticmethod(layout_dataset)
