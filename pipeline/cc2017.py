"""Reader for the cc2017 raw layout (Wen et al. 2018, Purdue PURR 2809).

::

    {root}/video_fmri_dataset/stimuli/{seg1..}.mp4, {test1..}.mp4
    {root}/video_fmri_dataset/{subject}/fmri/{segment}/cifti/{segment}_{rep}_Atlas.dtseries.nii

Subjects (``subjectN`` or BIDS-style ``sub-<label>`` folders), segments and
repetitions are discovered from the files, and every stimulus must have fMRI
runs in every subject and vice versa (``dataset.unmatched``); cortical
vertices come from the CIFTI brain-model axis (CORTEX_LEFT + CORTEX_RIGHT).
The number of clips of a run is the stimulus duration over the TR; the
leading volumes are ``n_volumes - n_clips - trailing``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import DataError

if TYPE_CHECKING:
    from nibabel import cifti2

__all__ = [
    "CORTEX_STRUCTURES",
    "DataError",
    "Dataset",
    "SUBJECT_RE",
    "UNMATCHED_MODES",
    "RunTiming",
    "StimulusInfo",
    "clip_count",
    "cortex_columns",
    "discover_dataset",
    "parse_run_path",
    "read_cortex_bold",
    "read_stimulus_info",
    "run_path",
    "run_timing",
    "stimulus_path",
]

log = logging.getLogger(__name__)

#: Brain structures whose surface vertices form "the cortex".
CORTEX_STRUCTURES = ("CIFTI_STRUCTURE_CORTEX_LEFT", "CIFTI_STRUCTURE_CORTEX_RIGHT")

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


def _segment_key(name: str) -> tuple[str, int]:
    match = _SEGMENT_RE.match(name)
    return (match["prefix"], int(match["index"])) if match else (name, 0)


def _subject_key(name: str) -> tuple[str, int]:
    """Natural order of subject names: subject2 before subject10, sub-2 before sub-10."""
    match = re.match(r"^(?P<prefix>\D*)(?P<index>\d+)$", name)
    return (match["prefix"], int(match["index"])) if match else (name, 0)


@dataclass
class Dataset:
    """What a dataset root holds: segments, subjects and the repetitions of every run.

    Attributes
    ----------
    root : Path
    train_segments, test_segments : list of str
        Segment names in natural order (seg1, seg2, ..., seg10).
    runs : dict
        ``runs[subject][segment]`` is the sorted list of repetitions present.
    warnings : list of str
        Missing repetitions and (``dataset.unmatched: drop``) the stimuli and
        fMRI left out, reported but not fatal.
    """

    root: Path
    train_segments: list[str]
    test_segments: list[str]
    runs: dict[str, dict[str, list[int]]]
    warnings: list[str] = field(default_factory=list)

    @property
    def subjects(self) -> list[str]:
        return list(self.runs)

    @property
    def segments(self) -> list[str]:
        return self.train_segments + self.test_segments

    def run_files(self, subject: str) -> list[Path]:
        """Every run file of ``subject``, segment by segment.

        Parameters
        ----------
        subject : str
            One of :attr:`subjects`.

        Returns
        -------
        list of Path
            Training then test segments, repetitions ascending within each.
        """
        return [
            run_path(self.root, subject, seg, rep)
            for seg in self.segments
            for rep in self.runs[subject][seg]
        ]

    def stimulus_files(self) -> list[Path]:
        """Stimulus video of every segment, training then test.

        Returns
        -------
        list of Path
        """
        return [stimulus_path(self.root, seg) for seg in self.segments]


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
        segments[kind].sort(key=_segment_key)

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
    for seg in sorted(orphans, key=_segment_key):
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
                f"dataset.unmatched: drop: segments {_names(sorted(drop, key=_segment_key))} "
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
    return Dataset(root, segments["train"], segments["test"], runs, warnings)


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
        key=_subject_key,
    )
    if not found:
        raise DataError(f"{base}: no subject folders (subjectN or sub-<label>)")
    return found


def _fmri_runs(subject_dir: Path) -> dict[str, list[int]]:
    """``{segment: sorted repetitions}`` of the CIFTI runs found under ``subject_dir/fmri``."""
    runs = {}
    fmri = subject_dir / "fmri"
    folders = sorted(fmri.iterdir(), key=lambda p: _segment_key(p.name)) if fmri.is_dir() else []
    for folder in folders:
        files = sorted((folder / "cifti").glob(f"{folder.name}_*_Atlas.dtseries.nii"))
        if files:
            runs[folder.name] = sorted(parse_run_path(p)[1] for p in files)
    return runs


@dataclass(frozen=True)
class StimulusInfo:
    """Stream properties of a stimulus video.

    Attributes
    ----------
    path : Path
    fps : Fraction
        Frame rate, frames per second.
    n_frames : int
    width, height : int
        Frame size, pixels.
    """

    path: Path
    fps: Fraction
    n_frames: int
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return float(self.n_frames / self.fps)


def read_stimulus_info(path: str | os.PathLike) -> StimulusInfo:
    """Read frame rate, frame count and size of a video from its container (no decoding).

    Parameters
    ----------
    path : path
        A video file that FFmpeg (PyAV) opens.

    Returns
    -------
    StimulusInfo
        ``fps`` (frames per second, exact fraction), ``n_frames``, and ``width`` and
        ``height`` in pixels.

    Raises
    ------
    DataError
        If the file is missing, is not a readable video (e.g. truncated) or
        declares no frame count or rate.
    """
    import av  # here: the Snakefile imports this module, and reads videos only with real data

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: stimulus video not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream")
            stream = container.streams.video[0]
            fps = stream.average_rate
            n_frames = stream.frames
            if not n_frames and stream.duration is not None and fps:
                n_frames = round(stream.duration * stream.time_base * fps)
            width, height = stream.codec_context.width, stream.codec_context.height
    except av.error.FFmpegError as exc:
        raise DataError(
            f"{path}: cannot open the stimulus video ({exc}); the file may be truncated"
        ) from exc
    if not fps or not n_frames:
        raise DataError(f"{path}: the container declares no frame rate or frame count")
    return StimulusInfo(path, Fraction(fps), int(n_frames), width, height)


@dataclass(frozen=True)
class RunTiming:
    """Volumes before (``n_leading``), during (``n_clips``), after (``n_trailing``) a stimulus.

    Attributes
    ----------
    n_volumes : int
        ``n_leading + n_clips + n_trailing``.
    n_leading, n_clips, n_trailing : int
        Volume counts; one clip per TR.
    """

    n_volumes: int
    n_leading: int
    n_clips: int
    n_trailing: int


def clip_count(stimulus: StimulusInfo, tr_s: float) -> int:
    """Clips of one TR in a stimulus: its duration over the TR (cc2017: 480 s / 2 s = 240).

    Parameters
    ----------
    stimulus : StimulusInfo
        Frame count and frame rate of the stimulus video.
    tr_s : float, seconds
        Repetition time; one clip per TR.

    Returns
    -------
    int
        Number of clips, ``n_frames / fps / tr_s`` rounded down.

    Raises
    ------
    DataError
        If the duration is not a whole number of TRs (one stray frame is tolerated).
    """
    clips = Fraction(stimulus.n_frames) / stimulus.fps / Fraction(str(tr_s))
    n_clips = int(clips)
    if clips - n_clips > 1 / stimulus.fps / Fraction(str(tr_s)):
        raise DataError(
            f"{stimulus.path}: duration {stimulus.duration_s:.3f} s is not a whole number of "
            f"TRs ({tr_s} s)"
        )
    return n_clips


def run_timing(
    n_volumes: int,
    stimulus: StimulusInfo,
    tr_s: float,
    n_trailing: int,
    max_leading: int,
    run_file: str | os.PathLike = "",
) -> RunTiming:
    """Split a run's volumes into leading, clip and trailing volumes.

    ``n_clips = stimulus duration / TR``; ``n_leading = n_volumes - n_clips -
    n_trailing``. cc2017: 245 volumes → 1 leading, 246 → 2, both 240 clips.

    Parameters
    ----------
    n_volumes : int
        Volumes in the run.
    stimulus : StimulusInfo
        The run's stimulus video.
    tr_s : float, seconds
        Repetition time.
    n_trailing : int
        Volumes kept after the stimulus ends (for the hemodynamic delay).
    max_leading : int
        Most leading volumes accepted before the stimulus onset.
    run_file : path, optional
        Named in error messages only.

    Returns
    -------
    RunTiming
        ``n_volumes == n_leading + n_clips + n_trailing``.

    Raises
    ------
    DataError
        If the stimulus is not a whole number of TRs, or the fMRI is too short
        or too long for it.
    """
    n_clips = clip_count(stimulus, tr_s)
    n_leading = n_volumes - n_clips - n_trailing
    if not 0 <= n_leading <= max_leading:
        raise DataError(
            f"{run_file}: {n_volumes} volumes do not fit stimulus {stimulus.path.name} "
            f"({n_clips} clips of {tr_s} s + {n_trailing} trailing volumes leaves "
            f"{n_leading} leading volumes; expected 0..{max_leading}): stimulus and fMRI "
            "lengths disagree"
        )
    return RunTiming(n_volumes, n_leading, n_clips, n_trailing)


def cortex_columns(
    brain_models: cifti2.Cifti2MatrixIndicesMap, path: str | os.PathLike = ""
) -> np.ndarray:
    """Grayordinate indices of the cortical surface vertices (left then right).

    Read from the brain-model index map of the CIFTI header (the structures'
    offsets and counts), which is much cheaper than building nibabel's
    ``BrainModelAxis`` for a 91k-grayordinate file.

    Parameters
    ----------
    brain_models : nibabel.cifti2.Cifti2MatrixIndicesMap
        The brain-models index map (axis 1) of a CIFTI-2 header.
    path : path, optional
        Named in error messages only.

    Returns
    -------
    ndarray of shape (n_cortex_vertices,), int
        Grayordinate (column) indices, CORTEX_LEFT then CORTEX_RIGHT (29,696 + 29,716
        = 59,412 in the HCP 91k space).

    Raises
    ------
    DataError
        If the brain model has no cortical surface structure.
    """
    columns = [
        np.arange(model.index_offset, model.index_offset + model.index_count)
        for model in brain_models.brain_models
        if model.brain_structure in CORTEX_STRUCTURES
    ]
    if not columns:
        raise DataError(f"{path}: CIFTI brain models have no CORTEX_LEFT/CORTEX_RIGHT")
    return np.concatenate(columns)


_SECONDS = {"SECOND": 1.0, "MSEC": 1e-3, "USEC": 1e-6}


def read_cortex_bold(
    path: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Read the cortical vertices of one CIFTI-2 dense time series.

    Parameters
    ----------
    path : path
        A CIFTI-2 ``.dtseries.nii`` file.

    Returns
    -------
    bold : ndarray of shape (n_volumes, n_cortex_vertices), float32
    columns : ndarray of shape (n_cortex_vertices,), int
        Grayordinate index of every returned column.
    tr_s : float
        Series step in seconds from the file's time axis.

    Raises
    ------
    DataError
        If the file is missing, unreadable or not a dense time series.
    """
    import nibabel as nib  # here: stages that only read videos need not import it

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: fMRI run file not found")
    try:
        img = nib.load(str(path), mmap=False)
        series = img.header.matrix.get_index_map(0)
        models = img.header.matrix.get_index_map(1)
    except Exception as exc:  # nibabel raises many types for a broken header
        raise DataError(f"{path}: cannot read as CIFTI-2 ({exc})") from exc
    if (
        series.indices_map_to_data_type != "CIFTI_INDEX_TYPE_SERIES"
        or models.indices_map_to_data_type != "CIFTI_INDEX_TYPE_BRAIN_MODELS"
        or series.series_unit not in _SECONDS
    ):
        raise DataError(f"{path}: not a CIFTI-2 dense time series (dtseries) in time units")
    columns = cortex_columns(models, path)
    contiguous = columns[-1] - columns[0] + 1 == columns.size
    try:
        if contiguous:  # the usual layout: cortex first, a single slice read
            bold = np.asarray(img.dataobj[:, columns[0] : columns[-1] + 1], dtype=np.float32)
        else:
            bold = np.asarray(img.dataobj[:, :], dtype=np.float32)[:, columns]
    except Exception as exc:
        raise DataError(f"{path}: cannot read the data block ({exc}); file truncated?") from exc
    return bold, columns, float(series.series_step) * _SECONDS[series.series_unit]
