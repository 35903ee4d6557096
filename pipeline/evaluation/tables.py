"""Tables across subjects in the layout of the paper: Table 1 (our videos and their fusion),
Table 2 (ablations) and the retrieval table, as CSV and Markdown."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.evaluation.evaluate import read_summary
from pipeline.reconstructors.training import write_metrics
from pipeline.stores import atomic_output

__all__ = ["PUBLISHED", "TABLE_LABELS", "table1_columns", "write_tables"]

#: Rows of the tables per evaluated system.
SYSTEM_LABELS = {"videos": "NeuroClips (this run)", "fused": "NeuroClips + fusion (this run)"}

#: Column headings.
TABLE_LABELS = {
    "clip_pcc_adjacent": "CLIP-pcc",
    "clip_pcc_all_pairs": "CLIP-pcc (all pairs)",
    "ssim_rgb_uniform": "SSIM",
    "ssim_gray_gaussian": "SSIM (gray, Gaussian)",
    "psnr": "PSNR",
    "epe": "EPE ↓",
    "hue_pcc": "Hue-pcc",
    "keyframe_top1": "keyframe retrieval",
    "fmri_top1": "fMRI retrieval",
}

#: Subject averages on cc2017 as published (paper Table 1, SPEC §4); real models and data,
#: so only comparable with a ``paper``-preset run on the real dataset.
PUBLISHED = {
    "MinD-Video (published)": {
        "video_2way": 0.839,
        "video_50way": 0.197,
        "clip_pcc_adjacent": 0.408,
        "frame_2way": 0.796,
        "frame_50way": 0.174,
        "ssim_rgb_uniform": 0.171,
        "psnr": 8.662,
    },
    "NeuroClips (published)": {
        "video_2way": 0.834,
        "video_50way": 0.220,
        "clip_pcc_adjacent": 0.738,
        "frame_2way": 0.806,
        "frame_50way": 0.203,
        "ssim_rgb_uniform": 0.390,
        "psnr": 9.211,
    },
}

EXTRA_COLUMNS = ["ssim_gray_gaussian", "clip_pcc_all_pairs", "epe", "hue_pcc"]


def table1_columns(n_way) -> list[str]:
    """Table 1's metric columns: video N-way, CLIP-pcc, frame N-way, SSIM, PSNR, then ours."""
    return [
        *(f"video_{n}way" for n in n_way),
        "clip_pcc_adjacent",
        *(f"frame_{n}way" for n in n_way),
        "ssim_rgb_uniform",
        "psnr",
        *EXTRA_COLUMNS,
    ]


def label(metric: str) -> str:
    """Column heading of a metric (``video_2way`` → ``video 2-way``)."""
    if metric.endswith("way"):
        kind, n = metric.removesuffix("way").rsplit("_", 1)
        return f"{kind} {n}-way"
    return TABLE_LABELS.get(metric, metric)


def _spread(row: dict) -> float:
    """The ± of a cell: binomial for N-way accuracies (the field's), else the sd over clips."""
    return row["binomial_se"] if row.get("binomial_se") is not None else row["std"]


def _table(entries: list[tuple[str, str, Path]], columns: list[str]) -> list[dict]:
    """Rows ``system, subject, {metric}, {metric}_pm, {metric}_ci_low, ...``; then, per system
    with several subjects, the mean over subjects."""
    rows = []
    for system, subject, directory in entries:
        summary = read_summary(directory)
        row = {"system": system, "subject": subject}
        for metric in columns:
            s = summary.get(metric)
            row |= {
                metric: s["mean"] if s else None,
                f"{metric}_pm": _spread(s) if s else None,
                f"{metric}_ci_low": s["ci_low"] if s else None,
                f"{metric}_ci_high": s["ci_high"] if s else None,
                f"{metric}_control": s["control_mean"] if s else None,
            }
        rows.append(row)
    for system in dict.fromkeys(r["system"] for r in rows):
        own = [r for r in rows if r["system"] == system]
        if len(own) < 2:
            continue
        mean = {"system": system, "subject": "mean"}
        for key in own[0]:
            if key not in mean:
                values = [r[key] for r in own if r[key] is not None]
                mean[key] = float(np.mean(values)) if values else None
        rows.append(mean)
    return rows


def _markdown(rows: list[dict], columns: list[str], published: dict | None = None) -> str:
    heading = ["system", "subject", *(label(c) for c in columns)]
    lines = ["| " + " | ".join(heading) + " |", "|" + "---|" * len(heading)]
    for row in rows:
        cells = [row["system"], row["subject"]]
        for c in columns:
            cells.append("–" if row[c] is None else f"{row[c]:.3f} ± {row[f'{c}_pm']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    for name, values in (published or {}).items():
        cells = [name, "average", *(f"{values[c]:.3f}" if c in values else "–" for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(
    results: str | os.PathLike,
    output: str | os.PathLike,
    *,
    subjects: list[str],
    ablation_subjects: list[str],
    ablations: list[str],
    n_way: list[int],
) -> dict[str, list[dict]]:
    """Read every subject's evaluation summaries under ``results``; write the tables.

    ``output``: ``table1.csv/.md`` (per subject and system, plus the mean over
    subjects and, in Markdown, the published rows), ``table2.csv/.md`` (the
    full model and each ablation) and ``retrieval.csv/.md``. Each metric has
    its mean, ± (binomial for N-way, else sd), bootstrap CI and shuffled control.
    """
    results = Path(results)
    columns = table1_columns(n_way)
    table1 = _table(
        [
            (SYSTEM_LABELS[s], subject, results / subject / "evaluation" / s)
            for s in ("videos", "fused")
            for subject in subjects
        ],
        columns,
    )
    table2 = _table(
        [
            (
                name if name != "videos" else "full model",
                subject,
                results / subject / "evaluation" / name,
            )
            for subject in ablation_subjects
            for name in ("videos", *ablations)
        ],
        columns,
    )
    retrieval_columns = ["keyframe_top1", "fmri_top1"]
    retrieval = _table(
        [("Semantic Reconstructor", s, results / s / "evaluation" / "retrieval") for s in subjects],
        retrieval_columns,
    )
    for row, subject in zip(retrieval, subjects, strict=False):
        row["chance"] = read_summary(results / subject / "evaluation" / "retrieval")[
            "keyframe_top1"
        ]["chance"]
    tables = {"table1": table1, "table2": table2, "retrieval": retrieval}
    with atomic_output(output) as tmp:
        tmp.mkdir(parents=True)
        for name, rows in tables.items():
            write_metrics(rows, tmp / f"{name}.csv")
        (tmp / "table1.md").write_text(_markdown(table1, columns, PUBLISHED))
        (tmp / "table2.md").write_text(_markdown(table2, columns))
        (tmp / "retrieval.md").write_text(_markdown(retrieval, retrieval_columns))
    return tables
