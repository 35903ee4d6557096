"""The cc2017 raw layout (Wen et al. 2018, Purdue PURR 2809).

::

    {root}/video_fmri_dataset/stimuli/{seg1..}.mp4, {test1..}.mp4
    {root}/video_fmri_dataset/{subject}/fmri/{segment}/cifti/{segment}_{rep}_Atlas.dtseries.nii

Subjects (``subjectN`` or BIDS-style ``sub-<label>`` folders), segments and
repetitions are discovered from the files, and every stimulus must have fMRI
runs in every subject and vice versa (``dataset.unmatched``). Each run
presents one whole stimulus, one segment: its onset is not recorded, so the
run's last ``trailing_volumes`` follow the stimulus and the volumes before it
are dropped (``n_volumes - n_clips - trailing``; 1 or 2 in cc2017).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from pipeline.datasets.base import Dataset, Presentation, Run, Segment, natural_key
from pipeline.errors import DataError

__all__ = [
    "CC2017",
    "layout_dataset",
    "SUBJECT_RE",
    "UNMATCHED_MODES",
    "discover_dataset",
    "parse_run_path",
    "run_path",
    "stimulus_path",
]

log = logging.getLogger(__name__)

DATASET_DIR = "video_fmri_dataset"
_RUN_RE = re.compile(r"^(?P<segment>[A-Za-z]+\d+)_(?P<rep>\d+)_Atlas\.dtseries\.nii$")
_SEGMENT_RE = re.compile(r"^(?P<prefix>[A-Za-z]+)(?P<index>\d+)$")
#: Subject folder names: cc2017's ``subjectN`` and BIDS-style ``sub-<label>``.
SUBJECT_RE = re.compile(r"^(subject[0-9]+|sub-[A-Za-z0-9]+)$")
#: What :func:`discover_dataset` does with unmatched stimuli and fMRI (``dataset.unmatched``).
UNMATCHED_MODES = ("error", "drop")
#: File suffixes taken for videos in the stimulus folder (only ``.mp4`` names a segment).
_VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")


def stimulus_path(root: str | os.PathLike, segment: str) -> Path:
    """Path of the stimulus video of ``segment`` under the dataset root.

    Parameters
    ----------
    root : path
        Directory containing ``video_fmri_dataset/``.
    segment : str
        Segment name, e.g. ``seg1`` or ``test3``.

    Returns
    -------
    Path
        ``{root}/video_fmri_dataset/stimuli/{segment}.mp4`` (not checked to exist).
    """
    return Path(root) / DATASET_DIR / "stimuli" / f"{segment}.mp4"


def run_path(root: str | os.PathLike, subject: str, segment: str, repetition: int) -> Path:
    """Path of the CIFTI dense time series of one run.

    Parameters
    ----------
    root : path
        Directory containing ``video_fmri_dataset/``.
    subject : str
        Subject folder name (``subjectN`` or ``sub-<label>``).
    segment : str
        Segment name.
    repetition : int
        Repetition number as in the file name (1-based in cc2017).

    Returns
    -------
    Path
        ``.../{subject}/fmri/{segment}/cifti/{segment}_{repetition}_Atlas.dtseries.nii``
        (not checked to exist).
    """
    return (
        Path(root)
        / DATASET_DIR
        / subject
        / "fmri"
        / segment
        / "cifti"
        / f"{segment}_{repetition}_Atlas.dtseries.nii"
    )


def parse_run_path(path: str | os.PathLike) -> tuple[str, int]:
    """Return ``(segment, repetition)`` from a run file name.

    Parameters
    ----------
    path : path
        A run file; only its name is read.

    Returns
    -------
    segment : str
    repetition : int

    Raises
    ------
    DataError
        If the name is not ``{segment}_{rep}_Atlas.dtseries.nii``.
    """
    match = _RUN_RE.match(Path(path).name)
    if match is None:
        raise DataError(
            f"{path}: not a cc2017 run file name ({{segment}}_{{rep}}_Atlas.dtseries.nii)"
        )
    return match["segment"], int(match["rep"])


def discover_dataset(
    root: str | os.PathLike,
    subjects: list[str] | None = None,
    train_prefix: str = "seg",
    test_prefix: str = "test",
    train_repetitions: int = 2,
    test_repetitions: int = 10,
    unmatched: str = "error",
) -> Dataset:
    """Find the segments, subjects and runs of a cc2017-layout dataset on disk.

    A segment is a stimulus ``{prefix}<k>.mp4`` together with the fMRI runs of
    every subject. A stimulus without fMRI in some subject, fMRI of a segment
    without a stimulus, and a video in the stimulus folder named otherwise are
    *unmatched*: an error by default, since each of them would silently take a
    whole segment (or a subject's runs of it) out of the data.

    Parameters
    ----------
    root : path
        Directory containing ``video_fmri_dataset/``.
    subjects : list of str, optional
        Subjects to use; default every ``subjectN`` or ``sub-<label>`` folder.
    train_prefix, test_prefix : str
        Stimulus name prefixes of training and test segments.
    train_repetitions, test_repetitions : int
        Repetitions expected per run; fewer found is a warning, none an error.
    unmatched : {"error", "drop"}
        What unmatched stimuli and fMRI do (config key ``dataset.unmatched``):
        ``error`` raises naming every one, ``drop`` leaves their segments out of
        the dataset for every subject and names them in :attr:`Dataset.warnings`.

    Returns
    -------
    Dataset
        Segments, subjects and the repetitions of every run found.

    Raises
    ------
    ValueError
        If ``unmatched`` is not one of :data:`UNMATCHED_MODES`.
    DataError
        If the root or the stimuli are missing, a subject folder holds no fMRI
        run, or (``unmatched="error"``) stimuli and fMRI do not match.
    """
    if unmatched not in UNMATCHED_MODES:
        raise ValueError(f"unmatched must be one of {UNMATCHED_MODES}, not {unmatched!r}")
    root = Path(root)
    base = root / DATASET_DIR
    stimuli_dir = base / "stimuli"
    if not stimuli_dir.is_dir():
        raise DataError(
            f"{stimuli_dir}: no stimulus folder; dataset.root must contain {DATASET_DIR}/stimuli "
            "(the cc2017 raw layout)"
        )
    segments: dict[str, list[str]] = {"train": [], "test": []}
    unnamed: list[Path] = []  # videos whose name is no segment's: their segment is lost
    for video in sorted(stimuli_dir.iterdir()):
        if not video.is_file() or video.suffix.lower() not in _VIDEO_SUFFIXES:
            continue
        match = _SEGMENT_RE.match(video.stem)
        if video.suffix == ".mp4" and match and match["prefix"] == train_prefix:
            segments["train"].append(video.stem)
        elif video.suffix == ".mp4" and match and match["prefix"] == test_prefix:
            segments["test"].append(video.stem)
        else:
            unnamed.append(video)
    for kind, prefix in (("train", train_prefix), ("test", test_prefix)):
        if not segments[kind]:
            others = f" (other videos there: {_names(unnamed)})" if unnamed else ""
            raise DataError(f"{stimuli_dir}: no {kind} stimuli named {prefix}<k>.mp4{others}")
        segments[kind].sort(key=natural_key)

    subjects = _subject_folders(base, subjects)
    found = {subject: _fmri_runs(base / subject) for subject in subjects}
    empty = [subject for subject, runs in found.items() if not runs]
    if empty:
        others = [s for s in subjects if s not in empty]
        hint = f", e.g. [{', '.join(others)}]" if others else ""
        raise DataError(
            f"{', '.join(str(base / s) for s in empty)}: no fMRI run in "
            f"{'this subject folder' if len(empty) == 1 else 'these subject folders'} "
            f"(expected {run_path(root, empty[0], segments['train'][0], 1)}); list the "
            f"subjects to process in dataset.subjects{hint}"
        )

    # unmatched stimuli and fMRI, in the order a user would fix them
    stimulus_segments = segments["train"] + segments["test"]
    problems: list[str] = []
    drop: set[str] = set()
    orphans: dict[str, list[Path]] = {}  # segment -> its fMRI folders
    for subject, runs in found.items():
        for seg in runs:
            if seg not in stimulus_segments:
                orphans.setdefault(seg, []).append(base / subject / "fmri" / seg)
    for seg in sorted(orphans, key=natural_key):
        problems.append(
            f"fMRI without a stimulus: no {stimulus_path(root, seg)} for {_names(orphans[seg])}"
        )
    for subject, runs in found.items():
        absent = [seg for seg in stimulus_segments if seg not in runs]
        drop.update(absent)
        if len(absent) == 1:
            folder = run_path(root, subject, absent[0], 1).parent
            problems.append(
                f"stimulus without fMRI: {folder}: no fMRI run of {subject} for segment "
                f"{absent[0]} (no {absent[0]}_<rep>_Atlas.dtseries.nii there for the stimulus "
                f"{stimulus_path(root, absent[0])})"
            )
        elif absent:
            problems.append(
                f"stimuli without fMRI: {base / subject / 'fmri'}: no fMRI run of {subject} for "
                f"segments {_names(absent)} (no {{segment}}/cifti/"
                f"{{segment}}_<rep>_Atlas.dtseries.nii there for the stimuli "
                f"{_names([stimulus_path(root, s).name for s in absent])})"
            )
    if unnamed:
        problems.append(
            f"videos not named {train_prefix}<k>.mp4 or {test_prefix}<k>.mp4: {_names(unnamed)}"
        )
    warnings: list[str] = []
    if problems:
        if unmatched == "error":
            raise DataError(
                f"{base}: stimuli and fMRI do not match; every segment needs its stimulus and "
                "fMRI runs in every subject:\n  "
                + "\n  ".join(problems)
                + "\nRestore or rename the files, or set dataset.unmatched: drop to leave these "
                "segments out"
            )
        warnings += [f"dataset.unmatched: drop: {p}" for p in problems]
        if drop:
            warnings.append(
                f"dataset.unmatched: drop: segments {_names(sorted(drop, key=natural_key))} "
                "left out for every subject"
            )
        for kind in segments:
            segments[kind] = [s for s in segments[kind] if s not in drop]
            if not segments[kind]:
                raise DataError(
                    f"{base}: no {kind} segment has both its stimulus and fMRI in every "
                    "subject (dataset.unmatched: drop left out all of them)"
                )

    expected = {seg: train_repetitions for seg in segments["train"]}
    expected |= {seg: test_repetitions for seg in segments["test"]}
    runs: dict[str, dict[str, list[int]]] = {}
    for subject in subjects:
        runs[subject] = {}
        for segment, n_expected in expected.items():
            reps = found[subject][segment]
            if len(reps) < n_expected:
                absent = sorted(set(range(1, n_expected + 1)) - set(reps))
                warnings.append(
                    f"{subject} {segment}: {len(reps)} of {n_expected} repetitions present "
                    f"(missing {absent}); averages use the repetitions present"
                )
            runs[subject][segment] = reps
    for message in warnings:
        log.warning(message)
    return layout_dataset(root, segments["train"], segments["test"], runs, warnings)


def layout_dataset(
    root: str | os.PathLike,
    train_segments: list[str],
    test_segments: list[str],
    repetitions: dict[str, dict[str, list[int]]],
    warnings: list[str] | None = None,
) -> Dataset:
    """The :class:`~pipeline.datasets.base.Dataset` of a cc2017 root holding these runs.

    Parameters
    ----------
    root : path
        Directory containing ``video_fmri_dataset/``.
    train_segments, test_segments : list of str
        Segment names; each is its stimulus file's stem.
    repetitions : dict
        ``repetitions[subject][segment]``: the repetitions present, ascending.
    warnings : list of str, optional

    Returns
    -------
    Dataset
        One run per file, presenting its whole segment (onset derived from its length).
    """
    root = Path(root)
    segments = {
        name: Segment(name, role, stimulus_path(root, name))
        for role, names in (("train", train_segments), ("test", test_segments))
        for name in names
    }
    runs = {
        subject: [
            Run(run_path(root, subject, seg, rep), (Presentation(seg, rep),))
            for seg in segments
            for rep in reps[seg]
        ]
        for subject, reps in repetitions.items()
    }
    return Dataset(CC2017.name, root, segments, runs, list(warnings or []))


class CC2017:
    """The cc2017 layout as a :class:`~pipeline.datasets.base.DatasetFormat`."""

    name = "cc2017"
    subject_pattern = SUBJECT_RE
    tr_s = 2.0
    demo_layout = "segments"

    @staticmethod
    def demo_subject(index: int) -> str:
        """The demo's name of subject ``index`` (1-based): ``subject{index}``."""
        return f"subject{index}"

    @staticmethod
    def discover(
        root: str | os.PathLike, settings: dict[str, Any], cache: Path | None = None
    ) -> Dataset:
        """:func:`discover_dataset` with the ``dataset`` section's keys.

        Parameters
        ----------
        root : path
        settings : dict
            The validated ``dataset`` section: ``subjects``, ``train_prefix``,
            ``test_prefix``, ``train_repetitions``, ``test_repetitions``, ``unmatched``.
        cache : path, optional
            Unused: the layout is read from file names alone.

        Returns
        -------
        Dataset
        """
        return discover_dataset(
            root,
            subjects=settings["subjects"] or None,
            train_prefix=settings["train_prefix"],
            test_prefix=settings["test_prefix"],
            train_repetitions=settings["train_repetitions"],
            test_repetitions=settings["test_repetitions"],
            unmatched=settings["unmatched"],
        )

    stimulus_path = staticmethod(stimulus_path)
    run_path = staticmethod(run_path)
    layout_dataset = staticmethod(layout_dataset)


def _names(items: list, limit: int = 8) -> str:
    """``items`` as a comma-separated list, the middle left out past ``limit``."""
    names = [str(i) for i in items]
    if len(names) > limit:
        names = [*names[: limit - 2], f"... ({len(names) - limit + 1} more)", names[-1]]
    return ", ".join(names)


def _subject_folders(base: Path, subjects: list[str] | None) -> list[str]:
    """The configured subjects (which must exist), else every subject folder of ``base``."""
    if subjects:
        missing = [s for s in subjects if not (base / s).is_dir()]
        if missing:
            raise DataError(
                f"{base}: subject folder(s) not found: {', '.join(missing)} (dataset.subjects)"
            )
        return list(subjects)
    found = sorted(
        (p.name for p in base.iterdir() if p.is_dir() and SUBJECT_RE.match(p.name)),
        key=natural_key,
    )
    if not found:
        raise DataError(f"{base}: no subject folders (subjectN or sub-<label>)")
    return found


def _fmri_runs(subject_dir: Path) -> dict[str, list[int]]:
    """``{segment: sorted repetitions}`` of the CIFTI runs found under ``subject_dir/fmri``."""
    runs = {}
    fmri = subject_dir / "fmri"
    folders = sorted(fmri.iterdir(), key=lambda p: natural_key(p.name)) if fmri.is_dir() else []
    for folder in folders:
        files = sorted((folder / "cifti").glob(f"{folder.name}_*_Atlas.dtseries.nii"))
        if files:
            runs[folder.name] = sorted(parse_run_path(p)[1] for p in files)
    return runs
