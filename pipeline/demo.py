"""Synthetic demo dataset in a real raw layout (``dataset.format``), on the real fs_LR 32k cortex.

Stimuli are procedurally generated scenes rendered at the configured frame
rate and written as H.264 mp4 (PyAV): a textured background panned by a
moving camera, one to three objects of a few shape classes moving and
bouncing, and scene cuts every few seconds. The fMRI is written as CIFTI-2
dense time series (nibabel) whose cortical vertices are real vertices of the
fs_LR 32k mesh (:mod:`pipeline.anatomy`): all 29,696 + 29,716 cortical
grayordinates at ``scale: full``, a seeded sample of them otherwise. Some are
driven by the stimulus through a known linear encoding model:

``bold = baseline + scale * (snr * (hrf * (features @ W)) + drift + noise)``

with stimulus features per TR in four families — a coarse luminance grid (the
retinotopic part, ``luminance_grid`` cells a side), the mean colour, the area
of every object class and the motion energy. The driven vertices lie in the
visual areas of the MMP 1.0 parcellation, and follow the visual hierarchy:
each group of areas (:data:`pipeline.anatomy.VISUAL_AREAS`) gives each family
its share of the drive's variance (``area_shares``; by default early visual
cortex the luminance grid and colour, the MT+ complex motion, lateral and
ventral occipito-temporal cortex the objects). The drive is convolved with a
canonical (SPM double-gamma) HRF shifted so that its peak lies at the planted
delay; slow polynomial and cosine drifts and noise, drawn independently for
every repetition, are added. The ground truth (driven mask, SNR, weights, each
vertex's mesh index, area and group, HRF, delay, per-clip classes) is written
to ``ground_truth.zarr`` beside ``video_fmri_dataset/``, outside the raw
layout.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.anatomy import HEMISPHERES, VISUAL_AREAS
from pipeline.datasets import Dataset, dataset_format

# The Snakefile imports this module for DemoSettings and expected_dataset while it builds
# the DAG: the video, CIFTI and store libraries are imported where the files are written.
if TYPE_CHECKING:
    from nibabel import cifti2

__all__ = [
    "AREA_SHARES",
    "CLASSES",
    "FEATURE_FAMILIES",
    "FULL_SCALE",
    "VISUAL_SAMPLING",
    "DemoSettings",
    "area_shares",
    "canonical_hrf",
    "expected_dataset",
    "family_scales",
    "family_sizes",
    "generate_demo",
    "render_segment",
]


#: Object classes of the demo scenes (their area per clip is the semantic ground truth).
CLASSES = ("disc", "square", "triangle", "ring", "cross")

#: The encoding model's feature families, in the order of the feature vector.
FEATURE_FAMILIES = ("luminance", "colour", "objects", "motion")

#: Sizes of one cc2017 subject (Wen et al. 2018's release), used by ``demo.scale: full``:
#: every cortical grayordinate of the 91k space. A tenth of them driven, since the visual
#: areas of :data:`pipeline.anatomy.VISUAL_AREAS` hold 10.8 % (left) and 10.2 % (right).
FULL_SCALE = {
    "n_train_segments": 18,
    "n_test_segments": 5,
    "segment_duration_s": 480,
    "train_repetitions": 2,
    "test_repetitions": 10,
    "cortex_vertices": [29696, 29716],
    "subcortical_voxels": 31870,
    "driven_fraction": 0.1,
}

#: Default share of a driven vertex's drive per feature family, by the group of visual
#: areas it lies in: the luminance grid and colour in early visual cortex, motion energy
#: in the MT+ complex and V3A/B, the objects' classes in lateral and ventral
#: occipito-temporal cortex (``demo.area_shares``; the schema holds the same values).
AREA_SHARES = {
    "early": {"luminance": 0.7, "colour": 0.2, "objects": 0.05, "motion": 0.05},
    "motion": {"luminance": 0.1, "colour": 0.05, "objects": 0.05, "motion": 0.8},
    "object": {"luminance": 0.1, "colour": 0.05, "objects": 0.8, "motion": 0.05},
}


def _area_pairs(shares) -> tuple[tuple[str, tuple[tuple[str, float], ...]], ...]:
    """Group → family → share as nested (key, value) pairs (hashable, JSON-stable)."""
    items = shares.items() if isinstance(shares, dict) else shares
    out = []
    for group, families in items:
        pairs = families.items() if isinstance(families, dict) else families
        out.append((str(group), tuple((str(f), float(v)) for f, v in pairs)))
    return tuple(out)


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class DemoSettings:
    """Resolved demo configuration (``config['demo']`` plus the TR).

    Attributes
    ----------
    tr_s : float, seconds
        Repetition time.
    seed : int
        Seed of everything random in the dataset.
    n_subjects, n_train_segments, n_test_segments : int
        Subjects ``subject1..``, segments ``seg1..`` and ``test1..``.
    segment_duration_s : float, seconds
        Stimulus length of each segment; a multiple of ``tr_s``.
    train_repetitions, test_repetitions : int
        Runs written per segment.
    fps : int
        Stimulus frame rate, frames per second.
    frame_size : int
        Stimulus frame side, pixels.
    luminance_grid : int
        Cells per side of the luminance-grid features.
    area_shares : tuple of (str, tuple of (str, float)), or None
        For each group of :data:`pipeline.anatomy.VISUAL_AREAS`, the share of a
        driven vertex's drive carried by each feature family of
        :data:`FEATURE_FAMILIES` (normalised to sum to 1); None weighs every
        feature alike everywhere, so each family's share is its size's.
    object_speed, pan_speed : float
        Velocity standard deviations per axis, frame sizes per second.
    grating_cycles : tuple of float
        (low, high) range of the background gratings' spatial frequency, cycles
        per frame side (uniform).
    cortex_vertices : tuple of int
        (left, right) cortical vertices of the CIFTI brain model: fs_LR 32k mesh
        vertices, all 29,696 + 29,716 cortical grayordinates or a seeded sample.
    subcortical_voxels : int
        Voxels after the cortex in the CIFTI brain model.
    driven_fraction : float
        Fraction of each hemisphere's vertices driven by the stimulus, all of them in
        the visual areas of :data:`pipeline.anatomy.VISUAL_AREAS`.
    snr : tuple of float
        (low, high) range of the driven vertices' amplitude SNR (log-uniform).
    delay_s : float, seconds
        Planted hemodynamic delay (peak of the HRF).
    missing_runs : tuple of str
        Runs left out, as ``subjectN/segment/repetition``.
    trailing_volumes : int
        Volumes after each stimulus ends.
    train_prefix, test_prefix : str
        Segment name prefixes.
    format : str
        The layout written (``dataset.format``).
    rest_s : float, seconds
        ``hcp7t_movie``: the still grey screen before, between and after a movie's clips.
    stimuli : str
        ``hcp7t_movie``: the movie folder, relative to the root.
    """

    tr_s: float
    seed: int = 0
    n_subjects: int = 1
    n_train_segments: int = 12
    n_test_segments: int = 2
    segment_duration_s: float = 80
    train_repetitions: int = 2
    test_repetitions: int = 10
    fps: int = 30
    frame_size: int = 64
    luminance_grid: int = 8
    area_shares: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] | None = _area_pairs(
        AREA_SHARES
    )
    object_speed: float = 0.3
    pan_speed: float = 0.1
    grating_cycles: tuple[float, float] = (0.5, 2.0)
    cortex_vertices: tuple[int, int] = (1200, 1200)
    subcortical_voxels: int = 400
    driven_fraction: float = 0.2
    snr: tuple[float, float] = (1.5, 3.0)
    delay_s: float = 4.0
    missing_runs: tuple[str, ...] = ()
    trailing_volumes: int = 4
    train_prefix: str = "seg"
    test_prefix: str = "test"
    format: str = "cc2017"
    rest_s: float = 20.0
    stimuli: str = "Post_20140821_version"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DemoSettings:
        """Build from a validated pipeline config; ``scale: full`` applies cc2017 sizes.

        Parameters
        ----------
        config : dict
            A configuration validated by :func:`pipeline.config.validate_config`; its
            ``demo`` section and ``dataset.tr_s`` (seconds), ``trailing_volumes`` and
            segment prefixes are read.

        Returns
        -------
        DemoSettings
        """
        demo = dict(config["demo"])
        if demo.pop("scale") == "full":
            demo.update(FULL_SCALE)
        dataset = config["dataset"]
        return cls.from_dict(
            demo,
            tr_s=dataset["tr_s"],
            trailing_volumes=dataset["trailing_volumes"],
            train_prefix=dataset["train_prefix"],
            test_prefix=dataset["test_prefix"],
            format=dataset["format"],
            stimuli=dataset["hcp7t_movie"]["stimuli"],
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any], **extra: Any) -> DemoSettings:
        """Build from plain values (lists become tuples), e.g. parsed :meth:`to_json` output.

        Parameters
        ----------
        values : dict
            Field name to value.
        **extra
            Further fields, overriding ``values``.

        Returns
        -------
        DemoSettings
        """
        values = values | extra
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if values.get("area_shares") is not None:  # mappings, or pairs as to_json writes them
            values["area_shares"] = _area_pairs(values["area_shares"])
        return cls(**values)

    def to_json(self) -> str:
        """Every setting as JSON, in a stable key order.

        Returns
        -------
        str
            A JSON object; :meth:`from_dict` of its parsed value rebuilds the settings.
        """
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def subjects(self) -> list[str]:
        return [dataset_format(self.format).demo_subject(i + 1) for i in range(self.n_subjects)]

    def movie_clips(self) -> dict[str, list[tuple[float, float]]]:
        """Movie layouts: per run, the (onset, duration) of its clips, the test clip last.

        The training segments are dealt over the runs in turn; every clip lasts
        ``segment_duration_s`` and follows ``rest_s`` of still screen.

        Returns
        -------
        dict of str to list of (float, float)
        """
        runs = dataset_format(self.format).runs
        clips = {}
        for index, run in enumerate(runs):
            n_train = len(range(index, self.n_train_segments, len(runs)))
            onsets = [
                self.rest_s + k * (self.segment_duration_s + self.rest_s)
                for k in range(n_train + 1)
            ]
            clips[run] = [(float(t), float(self.segment_duration_s)) for t in onsets]
        return clips

    @property
    def train_segments(self) -> list[str]:
        return [f"{self.train_prefix}{i + 1}" for i in range(self.n_train_segments)]

    @property
    def test_segments(self) -> list[str]:
        return [f"{self.test_prefix}{i + 1}" for i in range(self.n_test_segments)]

    @property
    def n_clips(self) -> int:
        return round(self.segment_duration_s / self.tr_s)

    def leading_volumes(self, segment: str) -> int:
        """As in cc2017: 1 leading volume, 2 for the test segments after the first.

        Parameters
        ----------
        segment : str
            A segment name of these settings.

        Returns
        -------
        int
            Volumes before the stimulus onset in every run of ``segment``.
        """
        tests = self.test_segments
        return 2 if segment in tests and tests.index(segment) > 0 else 1

    def repetitions(self, subject: str, segment: str) -> list[int]:
        """Repetitions written for one subject and segment, ``missing_runs`` left out.

        Parameters
        ----------
        subject : str
            ``subjectN``.
        segment : str
            A training or test segment name.

        Returns
        -------
        list of int
            1-based repetition numbers, ascending.
        """
        n = self.train_repetitions if segment in self.train_segments else self.test_repetitions
        return [r for r in range(1, n + 1) if f"{subject}/{segment}/{r}" not in self.missing_runs]


def expected_dataset(settings: DemoSettings, root: str | os.PathLike) -> Dataset:
    """The :class:`~pipeline.datasets.Dataset` the demo generator will write under ``root``.

    Parameters
    ----------
    settings : DemoSettings
    root : path
        The dataset root (containing ``video_fmri_dataset/``).

    Returns
    -------
    Dataset
        Its ``warnings`` name the runs with repetitions left out by ``missing_runs``.

    Raises
    ------
    ValueError
        If ``missing_runs`` removes every repetition of a subject's segment.
    """
    layout = dataset_format(settings.format)
    if layout.demo_layout == "movies":
        return layout.layout_dataset(
            root, settings.subjects, settings.movie_clips(), settings.stimuli
        )
    runs = {
        subject: {
            seg: settings.repetitions(subject, seg)
            for seg in settings.train_segments + settings.test_segments
        }
        for subject in settings.subjects
    }
    warnings = []
    for subject, segs in runs.items():
        for seg, reps in segs.items():
            n = (
                settings.train_repetitions
                if seg in settings.train_segments
                else settings.test_repetitions
            )
            if not reps:
                raise ValueError(f"demo.missing_runs removes every repetition of {subject} {seg}")
            if len(reps) < n:
                warnings.append(f"{subject} {seg}: {len(reps)} of {n} repetitions present")
    return dataset_format(settings.format).layout_dataset(
        root, settings.train_segments, settings.test_segments, runs, warnings
    )


def canonical_hrf(tr_s: float, delay_s: float, length_s: float = 32.0) -> np.ndarray:
    """SPM canonical double-gamma HRF sampled every TR, shifted so that it peaks at ``delay_s``.

    SPM's canonical HRF is ``Gamma(t; 6) - Gamma(t; 16) / 6`` (peak near 5 s);
    the time axis is shifted so that the peak falls on ``delay_s``.

    Parameters
    ----------
    tr_s : float, seconds
        Sampling step.
    delay_s : float, seconds
        Where the peak is placed.
    length_s : float, seconds
        Duration sampled; ``n_lags = ceil(length_s / tr_s)``.

    Returns
    -------
    ndarray of shape (n_lags,)
        Response at lags 0, TR, 2 TR, ...; maximum 1.
    """
    from scipy import stats  # here, not at import: the Snakefile imports this module

    fine = np.linspace(0, 40, 40001)
    spm = stats.gamma.pdf(fine, 6) - stats.gamma.pdf(fine, 16) / 6
    peak = fine[np.argmax(spm)]
    t = np.arange(0, length_s, tr_s) + peak - delay_s
    h = np.where(t >= 0, stats.gamma.pdf(t, 6) - stats.gamma.pdf(t, 16) / 6, 0.0)
    return h / h.max()


# --------------------------------------------------------------------------- stimuli


@dataclass
class _Object:
    cls: int
    color: np.ndarray
    radius: float
    pos: np.ndarray
    vel: np.ndarray


@dataclass
class _Scene:
    start: int  # first frame
    grating: tuple[
        np.ndarray, np.ndarray, float, float
    ]  # (base colour, stripe colour, freq, angle)
    pan: np.ndarray  # pixels per frame
    objects: list[_Object]


def _draw_scenes(
    rng: np.random.Generator,
    n_frames: int,
    fps: int,
    size: int,
    object_speed: float,
    pan_speed: float,
    grating_cycles: tuple[float, float],
) -> list[_Scene]:
    scenes, frame = [], 0
    while frame < n_frames:
        objects = [
            _Object(
                cls=int(rng.integers(len(CLASSES))),
                color=rng.uniform(0.15, 1.0, 3).astype(np.float32),
                radius=float(rng.uniform(0.10, 0.22) * size),
                pos=rng.uniform(0.25, 0.75, 2) * size,
                vel=rng.normal(0, object_speed, 2) * size / fps,
            )
            for _ in range(int(rng.integers(1, 4)))
        ]
        grating = (
            rng.uniform(0.0, 0.5, 3).astype(np.float32),
            rng.uniform(0.0, 0.5, 3).astype(np.float32),
            float(rng.uniform(*grating_cycles) / size),
            float(rng.uniform(0, np.pi)),
        )
        pan = rng.normal(0, pan_speed, 2) * size / fps
        scenes.append(_Scene(frame, grating, pan, objects))
        frame += int(rng.uniform(3.0, 7.0) * fps)
    return scenes


def _shape_mask(cls: int, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    name = CLASSES[cls]
    if name == "disc":
        return dx * dx + dy * dy < r * r
    if name == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) < 0.85 * r
    if name == "triangle":
        return (dy < 0.5 * r) & (dy > -r) & (np.abs(dx) < (dy + r) * 0.577)
    if name == "ring":
        d2 = dx * dx + dy * dy
        return (d2 < r * r) & (d2 > 0.36 * r * r)
    if name == "cross":
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax < r) & (ay < 0.3 * r)) | ((ay < r) & (ax < 0.3 * r))
    raise ValueError(f"unknown demo class {cls}")


def render_segment(
    rng: np.random.Generator,
    n_frames: int,
    fps: int,
    size: int,
    grid: int = 8,
    object_speed: float = 0.3,
    pan_speed: float = 0.1,
    grating_cycles: tuple[float, float] = (0.5, 2.0),
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Render a segment frame by frame.

    ``grid`` is the side of the luminance grid in the features; ``object_speed``
    and ``pan_speed`` are the standard deviations of the object and camera
    velocities per axis, in frame sizes per second; ``grating_cycles`` is the
    range of the background gratings' frequency, cycles per frame side.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the scenes (cuts every 3 to 7 s, one to three objects each).
    n_frames : int
        Frames to render.
    fps : int
        Frame rate, frames per second.
    size : int
        Frame side, pixels (frames are square).
    grid : int
        Cells per side of the luminance grid, in [1, size].
    object_speed, pan_speed : float
        Velocity standard deviations, frame sizes per second.
    grating_cycles : tuple of float
        (low, high) background grating frequency, cycles per frame side.

    Returns
    -------
    frames : iterator of ndarray of shape (size, size, 3), uint8
        Lazily rendered frames (consume before using the other outputs).
    features : ndarray of shape (n_frames, n_features), float32
        Filled while ``frames`` is consumed: luminance grid, mean RGB,
        area of each class, motion energy.
    class_area : ndarray of shape (n_frames, n_classes), float32
        Fraction of the frame covered by each class (filled while consuming).

    Raises
    ------
    ValueError
        If ``grid`` does not lie in [1, size].
    """
    if not 1 <= grid <= size:
        raise ValueError(f"luminance grid {grid} must lie in [1, frame size {size}]")
    scenes = _draw_scenes(rng, n_frames, fps, size, object_speed, pan_speed, grating_cycles)
    n_cells = grid * grid
    n_features = n_cells + 3 + len(CLASSES) + 1
    features = np.zeros((n_frames, n_features), np.float32)
    class_area = np.zeros((n_frames, len(CLASSES)), np.float32)
    axis = np.arange(size, dtype=np.float32)
    cell = size // grid

    def frames():
        previous = None
        scene_index = 0
        for f in range(n_frames):
            while scene_index + 1 < len(scenes) and scenes[scene_index + 1].start <= f:
                scene_index += 1
            scene = scenes[scene_index]
            age = f - scene.start
            base, stripe, freq, angle = scene.grating
            ox, oy = scene.pan * age
            # sin(a(x) + b(y)) as a sum of two outer products: no per-pixel sin
            ax = 2 * np.pi * freq * np.cos(angle) * (axis + ox)
            by = 2 * np.pi * freq * np.sin(angle) * (axis + oy)
            wave = 0.5 + 0.5 * (np.outer(np.cos(by), np.sin(ax)) + np.outer(np.sin(by), np.cos(ax)))
            img = base + wave[..., None] * stripe
            for obj in scene.objects:
                # bounce off the walls: reflect the unbounded trajectory
                p = obj.pos + obj.vel * age - obj.radius
                span = size - 2 * obj.radius
                cx, cy = np.abs((p + span) % (2 * span) - span) + obj.radius
                x0, x1 = int(max(cx - obj.radius - 1, 0)), int(min(cx + obj.radius + 2, size))
                y0, y1 = int(max(cy - obj.radius - 1, 0)), int(min(cy + obj.radius + 2, size))
                dx = (axis[x0:x1] - cx)[None, :]
                dy = (axis[y0:y1] - cy)[:, None]
                mask = _shape_mask(obj.cls, dx, dy, obj.radius)
                img[y0:y1, x0:x1][mask] = obj.color
                class_area[f, obj.cls] += mask.sum() / (size * size)
            np.clip(img, 0, 1, out=img)
            # single-axis reductions only: no BLAS calls, which oversubscribe the cores
            # when the encoder's threads run beside them
            luma = img[..., 0] * _LUMA[0] + img[..., 1] * _LUMA[1] + img[..., 2] * _LUMA[2]
            rows = luma[: cell * grid].reshape(grid, cell, size).sum(1)
            cells = rows[:, : cell * grid].reshape(grid, grid, cell).sum(2) / (cell * cell)
            motion = 0.0 if previous is None else float(np.abs(luma - previous).mean())
            features[f, :n_cells] = cells.ravel()
            features[f, n_cells : n_cells + 3] = img.sum(0).sum(0) / (size * size)
            features[f, n_cells + 3 : -1] = class_area[f]
            features[f, -1] = motion
            previous = luma
            yield (img * 255 + 0.5).astype(np.uint8)

    return frames(), features, class_area


def _write_video(path: Path, frames, fps: int, size: int) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for array in frames:
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


# --------------------------------------------------------------------------- fMRI


#: Visual-area vertices in the small demo's vertex sample per driven vertex (the rest of the
#: sample comes from the other cortical grayordinates): each subject's driven vertices are
#: drawn from them, and the visual vertices left undriven are noise as elsewhere.
VISUAL_SAMPLING = 2


@dataclass(frozen=True)
class _Cortex:
    """The demo's cortical vertices on the fs_LR 32k mesh, left then right."""

    vertices: tuple[np.ndarray, np.ndarray]  # mesh vertex indices per hemisphere, sorted
    area: np.ndarray  # (n_cortex,) MMP 1.0 area name of each vertex
    group: np.ndarray  # (n_cortex,) its group of VISUAL_AREAS, "" outside them
    n_driven: tuple[int, int]  # driven vertices per hemisphere

    @property
    def hemisphere(self) -> np.ndarray:
        """(n_cortex,) ``left`` or ``right``."""
        return np.repeat(np.array(HEMISPHERES, dtype=object), [len(v) for v in self.vertices])


def _cortex(settings: DemoSettings) -> _Cortex:
    """Real fs_LR 32k vertices: every cortical grayordinate when ``cortex_vertices`` asks for
    all of them (``scale: full``), else a seeded sample in which the visual areas hold
    :data:`VISUAL_SAMPLING` vertices per driven vertex."""
    from pipeline.anatomy import CORTEX_GRAYORDINATES, VISUAL_AREAS, cortex_vertices, vertex_areas

    group_of = {area: group for group, areas in VISUAL_AREAS.items() for area in areas}
    rng = np.random.default_rng([settings.seed, 3])
    chosen, areas, n_driven = [], [], []
    for h, (hemisphere, mesh) in enumerate(zip(HEMISPHERES, cortex_vertices(), strict=True)):
        n = settings.cortex_vertices[h]
        if n > CORTEX_GRAYORDINATES[h]:
            raise ValueError(
                f"demo.cortex_vertices: {n} {hemisphere} vertices; the fs_LR 32k cortex has "
                f"{CORTEX_GRAYORDINATES[h]} grayordinates there"
            )
        area = vertex_areas(hemisphere, mesh)
        visual = np.isin(area, list(group_of))
        driven = max(1, round(settings.driven_fraction * n))
        if driven > visual.sum():
            raise ValueError(
                f"demo.driven_fraction {settings.driven_fraction}: {driven} driven {hemisphere} "
                f"vertices, but the visual areas {sorted(group_of)} hold {visual.sum()}"
            )
        if n == len(mesh):
            keep = np.arange(len(mesh))
        else:
            n_visual = min(int(visual.sum()), VISUAL_SAMPLING * driven, n)
            keep = np.concatenate(
                [
                    rng.choice(np.flatnonzero(visual), n_visual, replace=False),
                    rng.choice(np.flatnonzero(~visual), n - n_visual, replace=False),
                ]
            )
            keep.sort()
        chosen.append(mesh[keep])
        areas.append(area[keep])
        n_driven.append(driven)
    area = np.concatenate(areas)
    group = np.array([group_of.get(a, "") for a in area], dtype=object)
    return _Cortex(tuple(chosen), area, group, tuple(n_driven))


def _brain_model(settings: DemoSettings, cortex: _Cortex) -> cifti2.BrainModelAxis:
    from nibabel import cifti2

    from pipeline.anatomy import MESH_VERTICES

    left, right = cortex.vertices
    axis = cifti2.BrainModelAxis.from_surface(left, MESH_VERTICES, "CortexLeft")
    axis += cifti2.BrainModelAxis.from_surface(right, MESH_VERTICES, "CortexRight")
    n_sub = settings.subcortical_voxels
    side = int(np.ceil(n_sub ** (1 / 3))) + 2
    mask = np.zeros((side, side, side), bool)
    mask.reshape(-1)[:n_sub] = True
    return axis + cifti2.BrainModelAxis.from_mask(mask, affine=np.eye(4), name="thalamus_left")


def _tr_features(features: np.ndarray, frames_per_tr: int, n_clips: int) -> np.ndarray:
    return features[: n_clips * frames_per_tr].reshape(n_clips, frames_per_tr, -1).mean(1)


def _family_sizes(grid: int) -> dict[str, int]:
    return {"luminance": grid * grid, "colour": 3, "objects": len(CLASSES), "motion": 1}


def family_sizes(settings: DemoSettings) -> dict[str, float]:
    """Each feature family's share of the drive when every feature weighs the same.

    Parameters
    ----------
    settings : DemoSettings

    Returns
    -------
    dict of str to float
        Family → its number of features over the total, summing to 1.
    """
    sizes = _family_sizes(settings.luminance_grid)
    total = sum(sizes.values())
    return {family: sizes[family] / total for family in FEATURE_FAMILIES}


def area_shares(settings: DemoSettings) -> dict[str, dict[str, float]]:
    """Each group of visual areas' shares of the drive per feature family, normalised.

    Parameters
    ----------
    settings : DemoSettings

    Returns
    -------
    dict
        Group of :data:`pipeline.anatomy.VISUAL_AREAS` → family → share (summing to 1);
        :func:`family_sizes` for every group when ``area_shares`` is None.
    """
    if settings.area_shares is None:
        return {group: family_sizes(settings) for group in VISUAL_AREAS}
    out = {}
    for group, pairs in settings.area_shares:
        total = sum(v for _, v in pairs)
        out[group] = {family: v / total for family, v in pairs}
    return out


def family_scales(grid: int, shares: dict[str, float]) -> np.ndarray:
    """Per-feature factors that give each family its share of the drive's variance.

    With independent standard-normal weights, a standardised feature scaled by
    ``c`` adds ``c**2`` to each vertex's drive variance in expectation; a family
    of ``n`` features scaled by ``sqrt(share / n)`` adds ``share``.

    Parameters
    ----------
    grid : int
        Cells per side of the luminance grid.
    shares : dict of str to float
        Share per family of :data:`FEATURE_FAMILIES`, non-negative, normalised here.

    Returns
    -------
    ndarray of shape (n_features,), float32
        Factors in the order of the feature vector of :func:`render_segment`.

    Raises
    ------
    ValueError
        If a family is missing or unknown, or all shares are zero.
    """
    if set(shares) != set(FEATURE_FAMILIES):
        raise ValueError(f"feature shares {sorted(shares)}; need exactly {list(FEATURE_FAMILIES)}")
    total = float(sum(shares.values()))
    if total <= 0:
        raise ValueError("feature shares are all zero: no feature drives the responses")
    sizes = _family_sizes(grid)
    return np.concatenate(
        [
            np.full(sizes[f], np.sqrt(shares[f] / total / sizes[f]), np.float32)
            for f in FEATURE_FAMILIES
        ]
    )


@dataclass
class _SubjectModel:
    driven: np.ndarray  # (n_cortex,) bool
    snr: np.ndarray  # (n_cortex,) float32, 0 where not driven
    weights: np.ndarray  # (n_features, n_driven) float32
    baseline: np.ndarray  # (n_grayordinates,) float32


def _subject_model(
    settings: DemoSettings, subject_index: int, n_features: int, n_gray: int, cortex: _Cortex
) -> _SubjectModel:
    """A subject's driven vertices (in the visual areas, per hemisphere), their SNRs and
    encoding weights, each scaled by the shares of its group of areas."""
    rng = np.random.default_rng([settings.seed, 1, subject_index])
    n_cortex = len(cortex.area)
    driven = np.zeros(n_cortex, bool)
    offset = 0
    for vertices, n_driven in zip(cortex.vertices, cortex.n_driven, strict=True):
        visual = offset + np.flatnonzero(cortex.group[offset : offset + len(vertices)] != "")
        driven[rng.choice(visual, n_driven, replace=False)] = True
        offset += len(vertices)
    n_driven = int(driven.sum())
    low, high = np.log(settings.snr[0]), np.log(settings.snr[1])
    snr = np.zeros(n_cortex, np.float32)
    snr[driven] = np.exp(rng.uniform(low, high, n_driven))
    weights = rng.normal(0, 1, (n_features, n_driven)).astype(np.float32)
    if settings.area_shares is not None:
        scales = {
            group: family_scales(settings.luminance_grid, dict(shares))
            for group, shares in settings.area_shares
        }
        weights *= np.stack([scales[g] for g in cortex.group[driven]], axis=1)
    baseline = rng.uniform(8000, 12000, n_gray).astype(np.float32)
    return _SubjectModel(driven, snr, weights, baseline)


def _run_bold(
    model: _SubjectModel,
    response: np.ndarray,
    n_leading: int,
    n_gray: int,
    seed: list[int],
) -> np.ndarray:
    """One run: baseline + 1 % scale * (snr * response + drift + noise), (n_volumes, n_gray)."""
    rng = np.random.default_rng(seed)
    n_volumes = n_leading + response.shape[0]
    noise = rng.standard_normal((n_volumes, n_gray), dtype=np.float32)
    t = np.linspace(-1, 1, n_volumes, dtype=np.float32)[:, None]
    coef = rng.normal(0, 1.0, (4, n_gray)).astype(np.float32)
    # slow drifts: a cubic plus a cosine of 1/3 to 1 half-cycle per run
    period = rng.uniform(1.0, 3.0, n_gray).astype(np.float32)
    drift = coef[0] * t + coef[1] * t**2 + coef[2] * t**3 + coef[3] * np.cos(np.pi * t / period)
    total = noise + drift
    total[n_leading:, np.flatnonzero(model.driven)] += model.snr[model.driven] * response
    return model.baseline + 0.01 * model.baseline * total


def _write_cifti(path: Path, bold: np.ndarray, axis: cifti2.BrainModelAxis, tr_s: float) -> None:
    from nibabel import cifti2

    series = cifti2.SeriesAxis(start=0.0, step=tr_s, size=bold.shape[0], unit="SECOND")
    path.parent.mkdir(parents=True, exist_ok=True)
    cifti2.Cifti2Image(bold.astype(np.float32), header=(series, axis)).to_filename(str(path))


def _write_model(ground_truth: Any, subject: str, model: _SubjectModel) -> None:
    """A subject's encoding model in the ground-truth store."""
    from pipeline.stores import create_array

    g = ground_truth.create_group(subject)
    create_array(g, "driven", data=model.driven, dims=["vertex"])
    create_array(g, "snr", data=model.snr, dims=["vertex"])
    create_array(g, "weights", data=model.weights, dims=["feature", "driven_vertex"])


def _write_segments(
    settings: DemoSettings,
    tmp: Path,
    dataset: Dataset,
    cortex: _Cortex,
    axis: cifti2.BrainModelAxis,
    hrf: np.ndarray,
    ground_truth: Any,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One stimulus per segment and one run per segment and repetition (cc2017's layout);
    the subjects' encoding models in ``ground_truth``. Returns each segment's features and
    class areas per TR."""
    from scipy import signal
    from tqdm.auto import tqdm

    layout = dataset_format(settings.format)
    frames_per_tr = round(settings.fps * settings.tr_s)
    n_frames = settings.n_clips * frames_per_tr
    n_gray = axis.size
    # 1. stimuli, and their features per TR
    tr_features, clip_classes = {}, {}
    segments = dataset.segment_names
    for index, segment in enumerate(tqdm(segments, desc="demo stimuli", unit="video")):
        rng = np.random.default_rng([settings.seed, 0, index])
        frames, features, area = render_segment(
            rng,
            n_frames,
            settings.fps,
            settings.frame_size,
            settings.luminance_grid,
            settings.object_speed,
            settings.pan_speed,
            settings.grating_cycles,
        )
        path = layout.stimulus_path(tmp, segment)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_video(path, frames, settings.fps, settings.frame_size)
        tr_features[segment] = _tr_features(features, frames_per_tr, settings.n_clips)
        clip_classes[segment] = _tr_features(area, frames_per_tr, settings.n_clips)
    train = np.concatenate([tr_features[s] for s in dataset.train_segments])
    mean, std = train.mean(0), train.std(0) + 1e-6

    # 2. neural responses per segment: features @ W, convolved with the HRF over the
    #    clips and the trailing volumes, normalised to unit variance on training data
    n_features = train.shape[1]
    for s_index, subject in enumerate(dataset.subjects):
        model = _subject_model(settings, s_index, n_features, n_gray, cortex)
        responses = {}
        for segment in segments:
            drive = ((tr_features[segment] - mean) / std) @ model.weights
            padded = np.concatenate([drive, np.zeros((settings.trailing_volumes, drive.shape[1]))])
            responses[segment] = signal.lfilter(hrf, [1.0], padded, axis=0)
        scale = np.concatenate([responses[s] for s in dataset.train_segments]).std(0)
        runs = [(seg, rep) for seg in segments for rep in dataset.repetitions(subject, seg)]
        for seg, rep in tqdm(runs, desc=f"demo fMRI {subject}", unit="run"):
            seg_index = segments.index(seg)
            bold = _run_bold(
                model,
                (responses[seg] / scale).astype(np.float32),
                settings.leading_volumes(seg),
                n_gray,
                [settings.seed, 2, s_index, seg_index, rep],
            )
            _write_cifti(layout.run_path(tmp, subject, seg, rep), bold, axis, settings.tr_s)
        _write_model(ground_truth, subject, model)
    return tr_features, clip_classes


def _grey_features(settings: DemoSettings, level: float) -> np.ndarray:
    """The features of a uniform grey frame of ``level`` (0-1): no object, no motion."""
    n_cells = settings.luminance_grid**2
    features = np.zeros(n_cells + 3 + len(CLASSES) + 1, np.float32)
    features[:n_cells] = level * _LUMA.sum()
    features[n_cells : n_cells + 3] = level
    return features


def _write_movies(
    settings: DemoSettings,
    tmp: Path,
    dataset: Dataset,
    cortex: _Cortex,
    axis: cifti2.BrainModelAxis,
    hrf: np.ndarray,
    ground_truth: Any,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One movie per run, clips between still grey rest blocks and the same test clip at
    the end of every movie (the HCP 7T movie layout); each run's BOLD follows its whole
    movie, rest included. The subjects' encoding models go to ``ground_truth``. Returns each
    segment's features and class areas per TR."""
    from scipy import signal
    from tqdm.auto import tqdm

    layout = dataset_format(settings.format)
    fps, size, tr = settings.fps, settings.frame_size, settings.tr_s
    frames_per_tr = round(fps * tr)
    clip_frames, rest_frames = (
        round(settings.segment_duration_s * fps),
        round(settings.rest_s * fps),
    )
    grey = np.full((size, size, 3), 128, np.uint8)
    grey_features = _grey_features(settings, 128 / 255)
    layouts = settings.movie_clips()
    names = {
        run: [p.segment for p in r.presentations]
        for run, r in zip(layout.runs, next(iter(dataset.runs.values())), strict=True)
    }

    def clip(index: int):
        rng = np.random.default_rng([settings.seed, 0, index])
        return render_segment(
            rng,
            clip_frames,
            fps,
            size,
            settings.luminance_grid,
            settings.object_speed,
            settings.pan_speed,
            settings.grating_cycles,
        )

    # 1. the movies, and their features per TR (rest blocks included)
    movie_features, movie_classes, rows = {}, {}, {}  # rows: segment -> TR range in its run
    for r, run in enumerate(tqdm(layout.runs, desc="demo movies", unit="movie")):
        parts = []  # (frames, features, class areas) in movie order, rest as grey

        def rest():
            return (
                (grey for _ in range(rest_frames)),
                np.tile(grey_features, (rest_frames, 1)),
                np.zeros((rest_frames, len(CLASSES)), np.float32),
            )

        n_train = len(layouts[run]) - 1
        for k in range(n_train + 1):
            # training clips dealt over the runs in turn; the test clip drawn alike everywhere
            index = r + k * len(layout.runs) if k < n_train else settings.n_train_segments
            parts += [rest(), clip(index)]
            name = names[run][k]
            start = round(layouts[run][k][0] / tr)
            rows.setdefault(name, slice(start, start + round(settings.segment_duration_s / tr)))
        parts.append(rest())
        path = layout.stimulus_path(tmp / settings.stimuli, run)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_video(path, (f for part in parts for f in part[0]), fps, size)
        features = np.concatenate([part[1] for part in parts])
        n_volumes = len(features) // frames_per_tr
        movie_features[run] = _tr_features(features, frames_per_tr, n_volumes)
        movie_classes[run] = _tr_features(
            np.concatenate([part[2] for part in parts]), frames_per_tr, n_volumes
        )
    first = {name: run for run in reversed(layout.runs) for name in names[run]}
    tr_features = {n: movie_features[first[n]][rows[n]] for n in dataset.segment_names}
    clip_classes = {n: movie_classes[first[n]][rows[n]] for n in dataset.segment_names}
    train = np.concatenate([tr_features[s] for s in dataset.train_segments])
    mean, std = train.mean(0), train.std(0) + 1e-6
    train_rows = {
        run: np.concatenate(
            [np.arange(rows[n].start, rows[n].stop) for n in names[run][:-1]] or [[]]
        ).astype(int)
        for run in layout.runs
    }

    # 2. the responses to each whole movie, normalised to unit variance on the training clips
    n_gray = axis.size
    for s_index, subject in enumerate(dataset.subjects):
        model = _subject_model(settings, s_index, train.shape[1], n_gray, cortex)
        responses = {
            run: signal.lfilter(hrf, [1.0], ((x - mean) / std) @ model.weights, axis=0)
            for run, x in movie_features.items()
        }
        scale = np.concatenate([responses[run][train_rows[run]] for run in layout.runs]).std(0)
        for r, run in enumerate(tqdm(layout.runs, desc=f"demo fMRI {subject}", unit="run")):
            bold = _run_bold(
                model,
                (responses[run] / scale).astype(np.float32),
                0,
                n_gray,
                [settings.seed, 2, s_index, r],
            )
            _write_cifti(layout.run_path(tmp, subject, run), bold, axis, tr)
        _write_model(ground_truth, subject, model)
    return tr_features, clip_classes


def generate_demo(settings: DemoSettings, root: str | os.PathLike) -> Dataset:
    """Generate the demo dataset under ``root`` (``video_fmri_dataset/`` + ``ground_truth.zarr``).

    The whole root is written to a temporary directory first and renamed into
    place at the end, so an interrupted generation leaves nothing behind.

    Parameters
    ----------
    settings : DemoSettings
        Sizes, seed and encoding model of the synthetic data.
    root : path
        The dataset root to create.

    Returns
    -------
    Dataset
        What was written, as :func:`expected_dataset` describes it.
    """
    import zarr

    from pipeline.stores import atomic_output, create_array, provenance

    root = Path(root)
    dataset = expected_dataset(settings, root)
    layout = dataset_format(settings.format)
    hrf = canonical_hrf(settings.tr_s, settings.delay_s)
    cortex = _cortex(settings)
    axis = _brain_model(settings, cortex)
    with atomic_output(root) as tmp:
        ground_truth = zarr.open_group(tmp / "ground_truth.zarr", mode="w")
        write = _write_movies if layout.demo_layout == "movies" else _write_segments
        tr_features, clip_classes = write(settings, tmp, dataset, cortex, axis, hrf, ground_truth)
        segments = dataset.segment_names

        left, right = cortex.vertices
        create_array(ground_truth, "vertex", data=np.concatenate([left, right]), dims=["vertex"])
        for name, values in (
            ("hemisphere", cortex.hemisphere),
            ("area", cortex.area),
            ("area_group", cortex.group),
        ):
            create_array(ground_truth, name, data=values.astype(str), dims=["vertex"])
        for segment in segments:
            g = ground_truth.require_group(f"stimulus/{segment}")
            create_array(g, "features", data=tr_features[segment], dims=["clip", "feature"])
            create_array(g, "class_area", data=clip_classes[segment], dims=["clip", "class"])
        create_array(ground_truth, "hrf", data=hrf, dims=["lag"])
        ground_truth.attrs.update(
            {
                "delay_s": settings.delay_s,
                "tr_s": settings.tr_s,
                "classes": list(CLASSES),
                "feature_names": [
                    f"luma_{i}_{j}"
                    for i in range(settings.luminance_grid)
                    for j in range(settings.luminance_grid)
                ]
                + ["mean_r", "mean_g", "mean_b"]
                + [f"area_{c}" for c in CLASSES]
                + ["motion"],
                "area_shares": area_shares(settings),
                "visual_areas": {group: list(areas) for group, areas in VISUAL_AREAS.items()},
                "vertex_order": (
                    "cortical vertices, CORTEX_LEFT then CORTEX_RIGHT; 'vertex' holds their "
                    "fs_LR 32k mesh indices, 'area' their MMP 1.0 area"
                ),
                "provenance": provenance("demo_dataset", asdict(settings)),
            }
        )
    return dataset
