"""What every dataset format tells the pipeline: segments, runs, presentations, timing.

A *segment* is a stretch of stimulus with a name, a role (``train`` or ``test``)
and a place in a stimulus file; it is cut into clips of ``clip_s`` seconds. A
*run* is one fMRI file; it *presents* one or more segments, each at an onset
in seconds from its first volume, as one *repetition* of that segment. cc2017
holds one segment per run and per stimulus file; the HCP 7T movie runs hold
several clips each, cut from one movie file. Everything downstream of the
readers (preprocessing, selection, alignment, frames) sees only these types,
through the subject's :meth:`Dataset.plan`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import DataError
from pipeline.io.stimulus import StimulusInfo

__all__ = [
    "Dataset",
    "DatasetFormat",
    "Presentation",
    "Run",
    "Segment",
    "clip_window",
    "natural_key",
    "onset_volume",
]


def natural_key(name: str) -> tuple[str, int]:
    """Natural order of names ending in a number: seg2 before seg10, sub-2 before sub-10.

    Parameters
    ----------
    name : str

    Returns
    -------
    tuple of (str, int)
        The name's prefix and its final number (``(name, 0)`` without one).
    """
    match = re.match(r"^(?P<prefix>\D*)(?P<index>\d+)$", name)
    return (match["prefix"], int(match["index"])) if match else (name, 0)


@dataclass(frozen=True)
class Segment:
    """A named stretch of one stimulus file.

    Attributes
    ----------
    name : str
        Unique in the dataset; names the frame store and the preprocessed runs.
    role : {"train", "test"}
    stimulus : Path
        The video file holding the segment.
    start_s : float, seconds
        Where the segment starts in ``stimulus``.
    duration_s : float or None, seconds
        Its length; None: to the end of the file.
    whole_clips : bool
        True: a duration that is not a whole number of clips is an error (a
        stimulus cut to the TR, as cc2017's are); False: the last partial clip is
        left out.
    """

    name: str
    role: str
    stimulus: Path
    start_s: float = 0.0
    duration_s: float | None = None
    whole_clips: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "stimulus": str(self.stimulus),
            "start_s": self.start_s,
            "duration_s": self.duration_s,
            "whole_clips": self.whole_clips,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Segment:
        return cls(**(values | {"stimulus": Path(values["stimulus"])}))

    def n_clips(self, stimulus: StimulusInfo, clip_s: float) -> int:
        """Clips of ``clip_s`` seconds in this segment of ``stimulus``.

        Parameters
        ----------
        stimulus : StimulusInfo
            The header of :attr:`stimulus`.
        clip_s : float, seconds
            Clip length.

        Returns
        -------
        int

        Raises
        ------
        DataError
            As :func:`clip_window`.
        """
        return clip_window(
            stimulus.n_frames,
            stimulus.fps,
            clip_s,
            start_s=self.start_s,
            duration_s=self.duration_s,
            whole_clips=self.whole_clips,
            path=stimulus.path,
            name=self.name,
        )[1]


def clip_window(
    n_frames: int,
    fps: Fraction,
    clip_s: float,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    whole_clips: bool = True,
    path: str | os.PathLike = "",
    name: str = "",
) -> tuple[int, int]:
    """The first frame and the number of clips of a segment of a video.

    Parameters
    ----------
    n_frames : int
        Frames in the video.
    fps : Fraction
        Its frame rate.
    clip_s : float, seconds
        Clip length.
    start_s : float, seconds
        Where the segment starts (rounded to the nearest frame).
    duration_s : float or None, seconds
        Its length; None: to the end of the video.
    whole_clips : bool
        Whether a length that is not a whole number of clips (one stray frame
        tolerated) is an error; else the last partial clip is left out.
    path : path, optional
    name : str, optional
        Named in error messages only.

    Returns
    -------
    first_frame : int
    n_clips : int

    Raises
    ------
    DataError
        If the segment reaches past the end of the video, holds no clip, or
        (``whole_clips``) is not a whole number of clips.
    """
    fps = Fraction(fps)
    first = round(Fraction(str(start_s)) * fps)
    available = n_frames - first
    length = available if duration_s is None else round(Fraction(str(duration_s)) * fps)
    what = f"segment {name}" if name else "the stimulus"
    if length > available + 1:
        raise DataError(
            f"{path}: {what} needs frames {first}..{first + length - 1} "
            f"({start_s:g} s + {length / fps:.3f} s), but the video holds {n_frames} "
            f"({n_frames / fps:.3f} s)"
        )
    per_clip = Fraction(str(clip_s)) * fps
    clips = Fraction(min(length, available)) / per_clip
    n_clips = int(clips)
    if whole_clips and clips - n_clips > 1 / per_clip:
        raise DataError(
            f"{path}: {what} lasts {float(length / fps):.3f} s, not a whole number of "
            f"{clip_s:g}-s clips"
        )
    if n_clips < 1:
        raise DataError(f"{path}: {what} is shorter than one {clip_s:g}-s clip")
    return first, n_clips


@dataclass(frozen=True)
class Presentation:
    """One showing of a segment in a run.

    Attributes
    ----------
    segment : str
    repetition : int
        1-based, unique per subject and segment.
    onset_s : float or None, seconds
        From the run's first volume. None: the segment ends ``trailing_volumes``
        before the run does (cc2017's rule, whose runs hold no onset).
    """

    segment: str
    repetition: int
    onset_s: float | None = None


@dataclass(frozen=True)
class Run:
    """One fMRI file and the segments it presents.

    Attributes
    ----------
    path : Path
        A CIFTI-2 dense time series.
    presentations : tuple of Presentation
    drop_volumes : int or None
        Leading volumes left out of detrending and everything after; None: every
        volume before the first onset.
    """

    path: Path
    presentations: tuple[Presentation, ...]
    drop_volumes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "drop_volumes": self.drop_volumes,
            "presentations": [[p.segment, p.repetition, p.onset_s] for p in self.presentations],
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Run:
        return cls(
            Path(values["path"]),
            tuple(Presentation(*p) for p in values["presentations"]),
            values["drop_volumes"],
        )


@dataclass
class Dataset:
    """What a dataset root holds: segments, subjects and their runs.

    Attributes
    ----------
    format : str
        The name of the :class:`DatasetFormat` that found it.
    root : Path
    segments : dict of str to Segment
        Training segments then test segments, each in natural order.
    runs : dict of str to list of Run
        Per subject, in the order the subject's files are read.
    warnings : list of str
        Missing repetitions, and what ``dataset.unmatched: drop`` left out:
        reported, not fatal.
    """

    format: str
    root: Path
    segments: dict[str, Segment]
    runs: dict[str, list[Run]]
    warnings: list[str] = field(default_factory=list)

    @property
    def subjects(self) -> list[str]:
        return list(self.runs)

    @property
    def segment_names(self) -> list[str]:
        return list(self.segments)

    @property
    def train_segments(self) -> list[str]:
        return [n for n, s in self.segments.items() if s.role == "train"]

    @property
    def test_segments(self) -> list[str]:
        return [n for n, s in self.segments.items() if s.role == "test"]

    def repetitions(self, subject: str, segment: str) -> list[int]:
        """The repetitions of ``segment`` that ``subject``'s runs present, ascending."""
        return sorted(
            p.repetition
            for run in self.runs[subject]
            for p in run.presentations
            if p.segment == segment
        )

    def run_files(self, subject: str) -> list[Path]:
        """Every run file of ``subject``, in reading order."""
        return [run.path for run in self.runs[subject]]

    def stimulus_files(self) -> list[Path]:
        """Every stimulus file once, in the order of the segments they hold."""
        return list(dict.fromkeys(s.stimulus for s in self.segments.values()))

    def stimulus(self, segment: str) -> Path:
        """The stimulus file of ``segment``."""
        return self.segments[segment].stimulus

    def with_subjects(self, subjects: list[str]) -> Dataset:
        """This dataset restricted to ``subjects`` (which it must hold)."""
        return replace(self, runs={s: self.runs[s] for s in subjects})

    def plan(self, subject: str) -> dict[str, Any]:
        """What preprocessing reads for ``subject``, as JSON-ready values.

        Returns
        -------
        dict
            ``format``, ``segments`` (every segment, :meth:`Segment.to_dict`) and
            ``runs`` (the subject's, :meth:`Run.to_dict`).
        """
        return {
            "format": self.format,
            "segments": [s.to_dict() for s in self.segments.values()],
            "runs": [run.to_dict() for run in self.runs[subject]],
        }


class DatasetFormat(Protocol):
    """A dataset layout the pipeline reads (``dataset.format``).

    Attributes
    ----------
    name : str
        The ``dataset.format`` value.
    subject_pattern : re.Pattern
        What a subject folder is named.
    tr_s : float, seconds
        The repetition time of its fMRI.
    demo_layout : {"segments", "movies"}
        How the demo writes it: one run per segment and repetition, each with its
        own stimulus file (``stimulus_path(root, segment)``, ``run_path(root,
        subject, segment, repetition)``); or runs that each show one movie of
        several clips (``stimulus_path(stimuli, run)``, ``run_path(root, subject,
        run)``, the run names in ``runs``).
    """

    name: str
    subject_pattern: re.Pattern
    tr_s: float
    demo_layout: str

    def discover(
        self, root: str | os.PathLike, settings: dict[str, Any], cache: Path | None = None
    ) -> Dataset:
        """Find the subjects, runs and segments under ``root`` (the ``dataset`` section);
        what is costly to read may be kept under ``cache``."""
        ...

    def demo_subject(self, index: int) -> str:
        """The demo's name of its subject ``index`` (1-based), one the format discovers."""
        ...


def onset_volume(
    n_volumes: int,
    n_clips: int,
    onset_s: float | None,
    *,
    tr_s: float,
    clip_s: float,
    n_trailing: int,
    max_leading: int,
    run_file: str | os.PathLike = "",
    stimulus: str = "",
) -> int:
    """The volume at which one presentation starts: ``onset_s / tr_s``, rounded.

    With ``onset_s`` None (cc2017) the presentation ends ``n_trailing`` volumes
    before the run, and the volumes before it must number 0..``max_leading``.

    Parameters
    ----------
    n_volumes : int
        Volumes in the run.
    n_clips : int
        Clips of the presented segment.
    onset_s : float or None, seconds
        From the run's first volume.
    tr_s, clip_s : float, seconds
        Repetition time and clip length (a whole number of TRs).
    n_trailing : int
        Volumes needed after the segment ends (for the hemodynamic delay).
    max_leading : int
        Most volumes accepted before a derived onset.
    run_file : path, optional
    stimulus : str, optional
        Named in error messages only.

    Returns
    -------
    int
        0-based volume index.

    Raises
    ------
    DataError
        If the run is too short for the presentation, or (derived onset) too long.
    """
    n_segment = n_clips * round(clip_s / tr_s)
    if onset_s is None:
        n_leading = n_volumes - n_segment - n_trailing
        if not 0 <= n_leading <= max_leading:
            raise DataError(
                f"{run_file}: {n_volumes} volumes do not fit stimulus {stimulus} "
                f"({n_clips} clips of {clip_s} s + {n_trailing} trailing volumes leaves "
                f"{n_leading} leading volumes; expected 0..{max_leading}): stimulus and fMRI "
                "lengths disagree"
            )
        return n_leading
    onset = round(onset_s / tr_s)
    if onset + n_segment + n_trailing > n_volumes:
        raise DataError(
            f"{run_file}: {n_volumes} volumes end before the presentation of {stimulus} does "
            f"(onset {onset_s:g} s = volume {onset}, then {n_clips} clips of {clip_s:g} s and "
            f"{n_trailing} trailing volumes): the run is shorter than its stimulus"
        )
    return onset
