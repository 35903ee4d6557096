"""The run's HTML report: one self-contained file (images inlined), viewable offline.

Sections: the metric tables (paper Table 1, Table 2, retrieval); voxel
selection (t-map histogram and counts); training curves of the reconstructors
and the fusion classifier; per-metric distributions against the
shuffled-pairing control; animated grids ground truth | blurry video |
keyframe | final video for a sample of test clips; the methods text written from
the stores' provenance (:mod:`pipeline.evaluation.methods`, also written as
``methods.md`` beside the report); the configuration and the provenance of every
store shown. The figures are also written as files so Snakemake's ``report()`` can
register them.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import zarr

from pipeline.evaluation.evaluate import resize_frames
from pipeline.evaluation.methods import methods_html, methods_text
from pipeline.evaluation.tables import (
    PM_NOTE,
    PUBLISHED,
    RETRIEVAL_NOTE,
    label,
    main_protocol,
    table1_columns,
)
from pipeline.stores import open_store

__all__ = ["clip_grid", "write_report"]

#: side of each panel of the animated grids (pixels)
PANEL = 128
GRID_COLUMNS = ("ground truth", "blurry video", "keyframe", "video")


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _img(data: bytes, mime: str, alt: str, css: str = "") -> str:
    encoded = base64.b64encode(data).decode()
    return f'<img class="{css}" alt="{html.escape(alt)}" src="data:{mime};base64,{encoded}">'


def clip_grid(
    ground_truth: np.ndarray,
    blurry: np.ndarray,
    keyframe: np.ndarray,
    video: np.ndarray,
    *,
    gt_fps: float,
    video_fps: float,
    side: int = PANEL,
) -> bytes:
    """An animated GIF of one clip: ground truth | blurry | keyframe | video, in step.

    The grid advances at the video's frame rate; the ground truth and the
    blurry video (at ``gt_fps``) show the frame of the same moment.

    Parameters
    ----------
    ground_truth : ndarray of shape (gt_frames, h, w, 3), uint8
        The clip's frames, at ``gt_fps``.
    blurry : ndarray of shape (n_blurry, h, w, 3), uint8
        The Perception Reconstructor's blurry video, at ``gt_fps``.
    keyframe : ndarray of shape (h, w, 3), uint8
        The generated keyframe.
    video : ndarray of shape (n_frames, h, w, 3), uint8
        The reconstructed video, at ``video_fps``.
    gt_fps, video_fps : float
        Frame rates, in frames per second.
    side : int
        Side of each square panel, in pixels.

    Returns
    -------
    bytes
        The GIF: ``n_frames`` frames of ``side`` x ``4 * side`` pixels (height x width),
        looping.
    """
    from PIL import Image

    frames = []
    for i in range(len(video)):
        t = i / video_fps
        k = min(int(t * gt_fps), len(ground_truth) - 1)
        row = [ground_truth[k], blurry[min(k, len(blurry) - 1)], keyframe, video[i]]
        frames.append(
            Image.fromarray(np.concatenate([resize_frames(p, (side, side)) for p in row], axis=1))
        )
    buffer = io.BytesIO()
    frames[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=round(1000 / video_fps),
        loop=0,
    )
    return buffer.getvalue()


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(value) -> float | None:
    return None if value in (None, "") else float(value)


def _html_table(rows: list[dict], columns: list[str], published: dict | None = None) -> str:
    head = "".join(f"<th>{html.escape(label(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            mean = _number(row.get(c))
            if mean is None:
                cells.append("<td>–</td>")
                continue
            pm = _number(row.get(f"{c}_pm"))
            low, high = _number(row.get(f"{c}_ci_low")), _number(row.get(f"{c}_ci_high"))
            control = _number(row.get(f"{c}_control"))
            title = f"95 % CI [{low:.3f}, {high:.3f}]" if low is not None else ""
            if control is not None:
                title += f"; shuffled control {control:.3f}"
            cells.append(f'<td title="{title}">{mean:.3f} ± {pm:.3f}</td>')
        name = html.escape(f"{row['system']}")
        body.append(
            f"<tr><th>{name}</th><td>{html.escape(row['subject'])}</td>{''.join(cells)}</tr>"
        )
    for name, values in (published or {}).items():
        bare = [c.rpartition(".")[2] for c in columns]
        cells = "".join(f"<td>{values[m]:.3f}</td>" if m in values else "<td>–</td>" for m in bare)
        body.append(
            f'<tr class="published"><th>{html.escape(name)}</th><td>average</td>{cells}</tr>'
        )
    return (
        f'<table class="metrics"><thead><tr><th>system</th><th>subject</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def selection_figure(selections: dict[str, str | os.PathLike]) -> bytes:
    """Histogram of the voxel-selection statistic per subject, selected vertices marked."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(selections), figsize=(5 * len(selections), 3.2), squeeze=False)
    for ax, (subject, path) in zip(axes[0], selections.items(), strict=True):
        store = open_store(path, stage="select_voxels")
        mask, method = store["mask"][:], store.attrs.get("method", "repetition_ttest")
        statistic = store.attrs.get("statistic", "t")
        title = f"{subject}: {int(mask.sum())} of {len(mask)} vertices ({method})"
        if not statistic:  # an atlas selection: nothing to histogram
            ax.text(0.5, 0.5, title, ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        values = store[statistic][:]
        bins = np.linspace(np.nanmin(values), np.nanmax(values), 60)
        ax.hist(values[~mask], bins=bins, color="0.6", label="not selected")
        ax.hist(values[mask], bins=bins, color="tab:red", label="selected")
        xlabel = {
            "t": "t (Fisher z across training segments)",
            "r": "cross-validated encoding r",
        }.get(statistic, statistic)
        ax.set(title=title, xlabel=xlabel, ylabel="vertices")
        ax.legend()
    return _png(fig)


def training_figure(models: dict[str, str | os.PathLike]) -> bytes:
    """Loss curves per epoch of every trained model (``metrics.csv`` of its directory)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.2), squeeze=False)
    for ax, (name, directory) in zip(axes[0], models.items(), strict=True):
        rows = _read_csv(Path(directory) / "metrics.csv")
        phases = list(dict.fromkeys(r.get("phase", "") for r in rows))
        for column in [c for c in rows[0] if c.endswith("loss") or c.endswith("prior")]:
            for phase in phases:  # the Semantic Reconstructor's alignment, then its prior
                values = [
                    (i, _number(r[column]))
                    for i, r in enumerate(rows, 1)
                    if r.get("phase", "") == phase
                ]
                values = [(i, v) for i, v in values if v is not None]
                if values:
                    ax.plot(*zip(*values, strict=True), label=f"{phase} {column}".strip())
        ax.set(title=name, xlabel="epoch (all phases in order)", ylabel="loss", yscale="log")
        ax.legend(fontsize=7)
    return _png(fig)


def metrics_figure(evaluation: str | os.PathLike) -> bytes:
    """Per-clip distribution of every metric beside its shuffled-pairing control."""
    import matplotlib.pyplot as plt

    store = open_store(Path(evaluation) / "metrics.zarr")
    summary = store.attrs["summary"]
    # the first protocol's metrics (the others repeat them in their variants)
    metrics = [row["metric"] for row in summary if row["protocol"] == summary[0]["protocol"]]
    cols = 4
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        values = store[metric][:]
        ax.hist(values, bins=20, alpha=0.7, label="matched")
        if f"control_{metric}" in store:
            ax.hist(store[f"control_{metric}"][:], bins=20, alpha=0.5, label="shuffled")
        ax.set_title(label(metric), fontsize=9)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _grids(subject: str, paths: dict, frames_dir: Path, n_clips: int) -> list[tuple[str, bytes]]:
    videos = open_store(Path(paths["videos"]) / "frames.zarr")
    blurry = open_store(paths["blurry"], stage="predict_perception")
    keyframes = open_store(paths["keyframes"], stage="generate_keyframes")
    segments = videos["segment"][:].tolist()
    clips = videos["clip"][:]
    fps = float(videos.attrs["settings"]["fps"])
    out = []
    for i in np.unique(np.linspace(0, len(segments) - 1, n_clips).round().astype(int)):
        frames = open_store(frames_dir / f"{segments[i]}.zarr", stage="extract_frames")
        gif = clip_grid(
            frames["frames"][int(clips[i])],
            blurry["frames"][i],
            keyframes["keyframes"][i],
            videos["videos"][i],
            gt_fps=float(frames.attrs["fps"]),
            video_fps=fps,
        )
        out.append((f"{subject} {segments[i]} clip {int(clips[i])}", gif))
    return out


def qc_section(results: Path, subjects: Iterable[str]) -> str:
    """Per subject (and for the stores all subjects share), every store whose stage
    warned, with its warnings (:data:`pipeline.stores.WARNINGS_ATTR`)."""
    from pipeline.stores import WARNINGS_ATTR
    from pipeline.verify import find_stores

    subjects = list(subjects)
    groups: dict[str, list[Path]] = {s: [] for s in [*subjects, "all subjects"]}
    for store in find_stores([results]) if results.is_dir() else []:
        subject = store.relative_to(results).parts[0]
        groups[subject if subject in groups else "all subjects"].append(store)
    parts = []
    for group, stores in groups.items():
        rows, count = [], 0
        for store in stores:
            attrs = zarr.open_group(store, mode="r").attrs
            warned = attrs.get(WARNINGS_ATTR) or []
            if warned:
                count += len(warned)
                stage = attrs.get("provenance", {}).get("stage", "?")
                items = "".join(f"<li>{html.escape(w)}</li>" for w in warned)
                rows.append(
                    f"<tr><td>{html.escape(str(store.relative_to(results)))}</td>"
                    f"<td>{html.escape(stage)}</td><td><ul>{items}</ul></td></tr>"
                )
        if rows:
            # folded, with the count in view: the warnings are one click away and the
            # results stay on the first screen however many there are
            summary = (
                f"{count} warning{'s' * (count != 1)} from {len(rows)} of {len(stores)} stores"
            )
            body = (
                f"<details><summary>{summary}</summary>"
                '<table class="qc"><tr><th>store</th><th>stage</th><th>warnings</th></tr>'
                + "".join(rows)
                + "</table></details>"
            )
        else:
            body = f"<p>No stage warned ({len(stores)} stores).</p>"
        parts.append(f'<div class="qc-group"><h3>{html.escape(group)}</h3>{body}</div>')
    return '<div class="qc">' + "".join(parts) + "</div>"


def _provenance(paths: list[str]) -> str:
    items = []
    for path in paths:
        p = Path(path)
        store = p / "frames.zarr" if (p / "frames.zarr").exists() else p / "metrics.zarr"
        store = p if p.suffix == ".zarr" else store
        if not store.exists():
            continue
        record = dict(zarr.open_group(store, mode="r").attrs.get("provenance", {}))
        stage = html.escape(record.get("stage", "?"))
        text = html.escape(json.dumps(record, indent=1, default=str))
        items.append(
            f"<details><summary>{html.escape(str(store))} — {stage}</summary>"
            f"<pre>{text}</pre></details>"
        )
    return "".join(items)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table.metrics { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; }
table.metrics th, table.metrics td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
table.metrics thead th { background: #eef; }
tr.published { color: #666; font-style: italic; }
.note { background: #fff6d6; padding: 0.6em 1em; border-left: 4px solid #e0b400; }
figure.grid { display: inline-block; margin: 0.4em; }
figure.grid img { image-rendering: pixelated; }
div.flatmaps { display: flex; gap: 0.5em; }
figure.flatmap { display: inline-block; margin: 0.2em; max-width: 49%; }
figure.flatmap img { max-width: 100%; }
table.qc td, table.qc th { border: 1px solid #ccc; padding: 3px 7px; text-align: left; }
table.qc { border-collapse: collapse; font-size: 13px; }
div.qc { display: flex; flex-wrap: wrap; gap: 1.5em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 12px; }
div.methods { max-width: 60em; line-height: 1.45; }
div.methods ol { font-size: 13px; }
"""


#: The ROI table's columns shown in the report (the groups of visual areas).
_ROI_COLUMNS = ("n_selected", "perception", "semantic", "difference", "p", "p_shuffled_labels")


def _flatmap(path: Path, caption: str) -> str:
    """A flat-map PNG as a figure ('' when the file is absent)."""
    if not path.is_file():
        return ""
    image = _img(path.read_bytes(), "image/png", caption)
    return (
        f'<figure class="flatmap">{image}<figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def _cell(row: dict, column: str) -> str:
    value = row.get(column)
    if value in (None, "") or column == "n_selected":
        return f"<td>{html.escape(str(value or ''))}</td>"
    return f"<td>{float(value):.3g}</td>"


def interpretation_section(subjects: dict[str, dict[str, str]]) -> str:
    """Where in the brain (paper §7, Figure 12): per importance method, each subject's
    Perception and Semantic Reconstructor flat maps side by side, and the groups' rows of
    its ROI table; then each subject's selection t map and mask. Subjects without an
    ``interpretation`` folder are left out.

    Parameters
    ----------
    subjects : dict of str to dict of str to str
        Per subject its paths, ``interpretation`` among them.

    Returns
    -------
    str
        HTML (empty when no subject has the folder).
    """
    folders = {
        s: Path(p["interpretation"])
        for s, p in subjects.items()
        if p.get("interpretation") and Path(p["interpretation"]).is_dir()
    }
    if not folders:
        return ""
    tables = {f.stem for d in folders.values() for f in d.glob("roi_table_*.csv")}
    parts = [
        "<h2>Where in the brain (paper §7)</h2><p>Voxel importance of each reconstructor on "
        "the fs_LR 32k flat maps (HCP S1200), scaled to 0–1 over the selected voxels; borders "
        "of MMP 1.0 areas in white. The ROI rows compare the two maps, each z-scored over the "
        "selected voxels (difference: perception − semantic; p of a permutation of the area "
        "labels; the same after shuffling the area labels, a control that must find "
        "nothing). Files: "
        "<code>results/{subject}/interpretation/</code> (maps.dscalar.nii opens in "
        "Connectome Workbench).</p>"
    ]
    head = "".join(f"<th>{c}</th>" for c in _ROI_COLUMNS)
    for method in sorted(t.removeprefix("roi_table_") for t in tables):
        parts.append(f"<h3>{html.escape(method.replace('_', ' '))}</h3>")
        for subject, folder in folders.items():
            images = "".join(
                _flatmap(folder / f"flatmap_{name}_{method}.png", f"{subject}: {name}")
                for name in ("perception", "semantic")
            )
            table = folder / f"roi_table_{method}.csv"
            rows = [r for r in _read_csv(table) if r["kind"] == "group"] if table.is_file() else []
            body = "".join(
                f"<tr><th>{html.escape(r['roi'])}</th>"
                + "".join(_cell(r, c) for c in _ROI_COLUMNS)
                + "</tr>"
                for r in rows
            )
            parts.append(
                f'<div class="flatmaps">{images}</div><table class="metrics"><thead><tr>'
                f"<th>{html.escape(subject)}</th>{head}</tr></thead><tbody>{body}</tbody></table>"
            )
    parts.append("<h3>Voxel selection</h3>")
    parts += [
        _flatmap(folder / f"flatmap_{name}.png", f"{subject}: {name.replace('_', ' ')}")
        for subject, folder in folders.items()
        for name in ("selection_t", "selection_mask")
    ]
    return '<section id="interpretation">' + "\n".join(parts) + "</section>"


def write_report(
    output: str | os.PathLike,
    *,
    tables: str | os.PathLike,
    subjects: dict[str, dict[str, str]],
    fusion: str | os.PathLike,
    frames_dir: str | os.PathLike,
    config: dict,
    n_clips: int = 6,
    figures: str | os.PathLike | None = None,
    results: str | os.PathLike = "results",
    methods: str | os.PathLike | None = None,
) -> Path:
    """Write ``output`` (index.html) and, in ``figures``, the figures as separate files.

    ``subjects`` maps each subject to its paths: ``selection``, ``perception``,
    ``semantic`` (model directories), ``blurry``, ``keyframes``, ``videos``,
    ``evaluation`` (its videos' evaluation directory) and, where the stage ran,
    ``interpretation`` (its flat maps and ROI tables). The quality-control section
    lists the warnings every stage recorded in its store under ``results``; the methods
    section is written from the provenance of those stores and of the trained models
    (:func:`pipeline.evaluation.methods.methods_text`), and its Markdown goes to
    ``methods`` (default: ``methods.md`` beside ``output``).

    Parameters
    ----------
    output : str or PathLike
        The HTML file.
    tables : str or PathLike
        The :func:`~pipeline.evaluation.tables.write_tables` directory.
    subjects : dict of str to dict of str to str
        Per subject, its paths (see above).
    fusion : str or PathLike
        The fusion classifier's model directory (its training curve).
    frames_dir : str or PathLike
        The extracted frames, one ``{segment}.zarr`` per segment.
    config : dict
        The validated workflow configuration (shown in the report).
    n_clips : int
        Sample clips shown per subject.
    figures : str or PathLike, optional
        Folder for the figures as PNG and one grid as GIF; none written when None.
    results : str or PathLike
        The workflow's ``results/`` folder.
    methods : str or PathLike, optional
        Where the methods Markdown goes.

    Returns
    -------
    Path
        ``output``.
    """
    output, tables = Path(output), Path(tables)
    methods = output.with_name("methods.md") if methods is None else Path(methods)
    methods_md = methods_text(Path(results), subjects)
    n_way = config["evaluation"]["n_way"]
    main = main_protocol(config["evaluation"]["protocols"], n_way)
    columns = table1_columns(main, n_way)
    retrieval = _read_csv(tables / "retrieval.csv") if (tables / "retrieval.csv").is_file() else []
    retrieval_columns = [c for c in (retrieval[0] if retrieval else {}) if c.endswith("top1")]
    first = next(iter(subjects))
    images = {
        "selection.png": selection_figure({s: p["selection"] for s, p in subjects.items()}),
        "training.png": training_figure(
            {
                f"{first} perception": subjects[first]["perception"],
                f"{first} semantic": subjects[first]["semantic"],
                "fusion classifier": fusion,
            }
        ),
        "metrics.png": metrics_figure(subjects[first]["evaluation"]),
    }
    grids = [g for s, p in subjects.items() for g in _grids(s, p, Path(frames_dir), n_clips)]
    tiny = config["models"]["preset"] == "tiny"
    sections = [
        f"<h1>NeuroClips pipeline report</h1><p>Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"model preset <b>{html.escape(config['models']['preset'])}</b>, dataset "
        f"<code>{html.escape(config['dataset']['root'])}</code>, "
        f"subjects {', '.join(subjects)}.</p>",
        '<p class="note">Tiny preset: small random-architecture models fitted on this dataset. '
        "The numbers test the pipeline, not the method; the published rows are for the real "
        "models on cc2017.</p>"
        if tiny
        else "",
        "<h2>Quality control: the stages' warnings</h2>" + qc_section(Path(results), subjects),
        f"<h2>Table 1: video reconstruction ({html.escape(main)} protocol)</h2>"
        f"<p>{html.escape(PM_NOTE)} Hover a cell for its bootstrap 95 % CI and the "
        "shuffled-pairing control. Every protocol's columns: protocols.md beside the tables.</p>",
        _html_table(_read_csv(tables / "table1.csv"), columns, PUBLISHED),
        "<h2>Table 2: ablations</h2>",
        _html_table(_read_csv(tables / "table2.csv"), columns),
        "<h2>Retrieval (top-1, appendix C.6)</h2>",
        _html_table(retrieval, retrieval_columns) + f"<p>{html.escape(RETRIEVAL_NOTE)}</p>",
        "<h2>Sample clips</h2><p>" + " | ".join(GRID_COLUMNS) + "</p>",
        "".join(
            f'<figure class="grid">{_img(gif, "image/gif", name, "grid")}'
            f"<figcaption>{html.escape(name)}</figcaption></figure>"
            for name, gif in grids
        ),
        "<h2>Voxel selection</h2>",
        _img(images["selection.png"], "image/png", "t-map histogram"),
        interpretation_section(subjects),
        "<h2>Training curves</h2>",
        _img(images["training.png"], "image/png", "training curves"),
        f"<h2>Metric distributions ({html.escape(first)}, per clip)</h2>",
        _img(images["metrics.png"], "image/png", "metric distributions"),
        f'<div class="methods">{methods_html(methods_md)}</div>',
        "<h2>Configuration</h2><pre>" + html.escape(_yaml(config)) + "</pre>",
        "<h2>Provenance</h2>"
        + _provenance(
            [
                p[k]
                for p in subjects.values()
                for k in ("selection", "blurry", "keyframes", "videos", "evaluation")
            ]
        ),
    ]
    document = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>NeuroClips report</title><style>{STYLE}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    if figures is not None:
        figures = Path(figures)
        figures.mkdir(parents=True, exist_ok=True)
        for name, data in images.items():
            (figures / name).write_bytes(data)
        (figures / "grid.gif").write_bytes(grids[0][1])
    for path, text in ((methods, methods_md), (output, document)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return output


def _yaml(config: dict) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False)
