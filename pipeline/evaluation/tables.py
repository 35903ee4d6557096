"""Tables across subjects: Table 1 (our videos and their fusion) and Table 2 (ablations) in
the layout of the paper, every protocol's columns for every system, the retrieval table and
paired tests between systems scored on the same clips; as CSV and Markdown."""

from __future__ import annotations

import csv
import itertools
import logging
import os
from pathlib import Path

import numpy as np

from pipeline.evaluation.evaluate import read_summary
from pipeline.evaluation.protocols import PROTOCOLS, main_protocol, protocols
from pipeline.evaluation.summary import paired_test
from pipeline.reconstructors.training import write_metrics
from pipeline.stores import atomic_output

__all__ = [
    "PUBLISHED",
    "TABLE_LABELS",
    "label",
    "main_protocol",
    "table1_columns",
    "write_tables",
]

log = logging.getLogger(__name__)

#: Rows of the tables per evaluated system.
SYSTEM_LABELS = {"videos": "NeuroClips (this run)", "fused": "NeuroClips + fusion (this run)"}

#: Column headings of the metrics (the protocol is added in brackets).
TABLE_LABELS = {
    "clip_pcc_adjacent": "CLIP-pcc",
    "clip_pcc_all_pairs": "CLIP-pcc (all pairs)",
    "ssim_rgb_uniform": "SSIM",
    "ssim_gray_gaussian": "SSIM (gray, Gaussian, 2-D)",
    "ssim_gray_columns": "SSIM (gray, Gaussian, columns)",
    "psnr": "PSNR",
    "epe": "EPE ↓",
    "hue_pcc": "Hue-pcc",
    "keyframe_top1": "keyframe retrieval",
    "fmri_top1": "fMRI retrieval",
}

#: Subject averages on cc2017 as published (paper Table 1), by metric; real models and data,
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

#: What the ± and the intervals of every table are.
PM_NOTE = (
    "± is what the field prints: for N-way top-1 the mean over samples of each sample's "
    "binomial sd over the trials (a statement about the random distractors, not the clips); "
    "for the other metrics the sd over clips. The interval in brackets is the 95 % bootstrap "
    "CI of the mean over clips, the honest one."
)
RETRIEVAL_NOTE = (
    "MindEye2's `batchwise_cosine_similarity` (src/utils.py) returns the transpose of its "
    "arguments' similarity, so what MindEye2's and the official NeuroClips code print as "
    '"fwd" is fMRI retrieval here, and "bwd" keyframe retrieval.'
)


def table1_columns(protocol: str, n_way: list[int]) -> list[str]:
    """A protocol's columns in Table 1's order: video N-way, CLIP-pcc, frame N-way, SSIM,
    PSNR (those it has), then the rest.

    Parameters
    ----------
    protocol : str
        A key of :data:`~pipeline.evaluation.protocols.PROTOCOLS`.
    n_way : list of int
        The N of the N-way metrics.

    Returns
    -------
    list of str
        Columns ``{protocol}.{metric}``.
    """
    metrics = PROTOCOLS[protocol].video_metrics(n_way)
    paper = [f"video_{n}way" for n in n_way] + ["clip_pcc_adjacent"]
    paper += [f"frame_{n}way" for n in n_way] + ["ssim_rgb_uniform", "psnr"]
    first = [m for m in paper if m in metrics]
    return [f"{protocol}.{m}" for m in first + [m for m in metrics if m not in first]]


def label(column: str) -> str:
    """Heading of a column (``neuroclips.video_2way`` → ``video 2-way [neuroclips]``).

    Parameters
    ----------
    column : str
        A column ``{protocol}.{metric}``, or a bare metric.

    Returns
    -------
    str
        The heading.
    """
    protocol, _, metric = column.rpartition(".")
    if metric.endswith("way"):
        kind, n = metric.removesuffix("way").rsplit("_", 1)
        text = f"{kind} {n}-way"
    else:
        text = TABLE_LABELS.get(metric, metric)
    return f"{text} [{protocol}]" if protocol else text


def _table(entries: list[tuple[str, str, Path]], columns: list[str]) -> list[dict]:
    """Rows ``system, subject, {column}, {column}_pm, {column}_ci_low, ...``; then, per
    system with several subjects, the mean over subjects."""
    rows = []
    for system, subject, directory in entries:
        summary = read_summary(directory)
        row = {"system": system, "subject": subject}
        for column in columns:
            s = summary.get(column)
            row |= {
                column: s["mean"] if s else None,
                f"{column}_pm": s["field_pm"] if s else None,
                f"{column}_ci_low": s["ci_low"] if s else None,
                f"{column}_ci_high": s["ci_high"] if s else None,
                f"{column}_control": s["control_mean"] if s else None,
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
            if row[c] is None:
                cells.append("–")
                continue
            cells.append(
                f"{row[c]:.3f} ± {row[f'{c}_pm']:.3f} "
                f"[{row[f'{c}_ci_low']:.3f}, {row[f'{c}_ci_high']:.3f}]"
            )
        lines.append("| " + " | ".join(cells) + " |")
    for name, values in (published or {}).items():
        bare = [c.rpartition(".")[2] for c in columns]
        cells = [name, "average", *(f"{values[m]:.3f}" if m in values else "–" for m in bare)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _clips(directory: Path) -> dict[str, dict[str, float]]:
    """``clips.csv`` of an evaluation: clip name → {column: value}."""
    with open(directory / "clips.csv", newline="") as f:
        return {r.pop("clip"): {k: float(v) for k, v in r.items()} for r in csv.DictReader(f)}


def comparisons(entries: list[tuple[str, str, Path]], *, n_resamples: int, seed: int) -> list[dict]:
    """Paired tests of every pair of systems scored on the same clips, per shared column:
    a paired bootstrap of the mean difference and the Wilcoxon signed-rank test.

    Our systems are compared within a subject, and external folders with every system.
    Pairs whose clip sets differ (an external folder of other clips) are skipped, with a
    log line.
    """
    clips = {(system, subject): _clips(directory) for system, subject, directory in entries}
    rows = []
    for (a, sub_a), (b, sub_b) in itertools.combinations(clips, 2):
        if sub_a != sub_b and "external" not in (sub_a, sub_b):
            continue  # one system across subjects is not a comparison of systems
        x, y = clips[(a, sub_a)], clips[(b, sub_b)]
        if set(x) != set(y):
            log.info("%s/%s and %s/%s: different clips, not compared", a, sub_a, b, sub_b)
            continue
        names = sorted(x)
        shared = [c for c in next(iter(x.values())) if c in next(iter(y.values()))]
        for column in shared:
            result = paired_test(
                np.array([x[n][column] for n in names]),
                np.array([y[n][column] for n in names]),
                n_resamples=n_resamples,
                seed=seed,
            )
            rows.append(
                {"system_a": a, "subject_a": sub_a, "system_b": b, "subject_b": sub_b}
                | {"metric": column, "protocol": column.split(".", 1)[0]}
                | result
            )
    return rows


def _comparisons_markdown(rows: list[dict]) -> str:
    heading = ["a", "b", "metric", "a − b", "95 % CI", "p (bootstrap)", "p (Wilcoxon)", "n"]
    lines = ["| " + " | ".join(heading) + " |", "|" + "---|" * len(heading)]
    for r in rows:
        lines.append(
            f"| {r['system_a']} ({r['subject_a']}) | {r['system_b']} ({r['subject_b']}) | "
            f"{label(r['metric'])} | {r['difference']:.4f} | "
            f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}] | {r['p_bootstrap']:.4g} | "
            f"{r['p_wilcoxon']:.4g} | {r['n']} |"
        )
    return "\n".join(lines) + "\n"


def write_tables(
    results: str | os.PathLike,
    output: str | os.PathLike,
    *,
    subjects: list[str],
    ablation_subjects: list[str],
    ablations: list[str],
    settings: dict,
    external: list[str] = (),
) -> dict[str, list[dict]]:
    """Read every evaluation summary under ``results``; write the tables to ``output``.

    * ``table1.csv/.md``: our videos and their fusion per subject, the mean
      over subjects and, in Markdown, the published rows; ``table2``: the full
      model and each ablation. Both in the main protocol's columns
      (:func:`main_protocol`).
    * ``protocols.csv/.md``: every system (ours, ablations, external folders)
      in every protocol's columns.
    * ``retrieval.csv/.md``: each retrieval protocol's keyframe and fMRI top-1.
    * ``comparisons.csv/.md``: paired tests between the systems scored on the
      same clips (:func:`comparisons`).

    Each cell has its mean, the field's ± (``_pm``), the bootstrap CI and the
    shuffled control.

    Parameters
    ----------
    results : str or PathLike
        The workflow's ``results/`` folder, with ``{subject}/evaluation/{system}`` and
        ``external/{name}/evaluation`` directories.
    output : str or PathLike
        The tables' directory (written atomically).
    subjects : list of str
        Subjects of Table 1 and of the retrieval table.
    ablation_subjects : list of str
        Subjects of Table 2.
    ablations : list of str
        Names of the ablation variants (their evaluation directories).
    settings : dict
        The ``evaluation`` configuration: ``protocols``, ``n_way``,
        ``bootstrap_resamples``, ``seed``.
    external : list of str
        Names of the external reconstruction folders.

    Returns
    -------
    dict of str to list of dict
        Per table (``table1``, ``table2``, ``protocols``, ``retrieval``, ``comparisons``,
        those that apply), its rows as written to CSV.
    """
    results = Path(results)
    names, n_way = settings["protocols"], settings["n_way"]
    chosen = protocols(names)
    scores_videos = any(p.video_metrics(n_way) for p in chosen)
    tables, markdown = {}, {}
    systems = []
    if scores_videos:
        main = main_protocol(names, n_way)
        columns = table1_columns(main, n_way)
        table1_entries = [
            (SYSTEM_LABELS[s], subject, results / subject / "evaluation" / s)
            for s in ("videos", "fused")
            for subject in subjects
        ]
        table2_entries = [
            (name, subject, results / subject / "evaluation" / name)
            for subject in ablation_subjects
            for name in ablations
        ]
        external_entries = [
            (f"{name} (external)", "external", results / "external" / name / "evaluation")
            for name in external
        ]
        tables["table1"] = _table(table1_entries, columns)
        markdown["table1"] = _markdown(tables["table1"], columns, PUBLISHED)
        full = [("full model", s, results / s / "evaluation" / "videos") for s in ablation_subjects]
        tables["table2"] = _table(full + table2_entries, columns)
        markdown["table2"] = _markdown(tables["table2"], columns)
        systems = table1_entries + table2_entries + external_entries
        every = [c for p in chosen for c in table1_columns(p.name, n_way)]
        tables["protocols"] = _table(systems, every)
        sections = []
        for p in chosen:
            own = table1_columns(p.name, n_way)
            if own:
                sections.append(
                    f"## {p.name}\n\nReproduces {p.reproduces}. {p.notes}.\n\n"
                    + _markdown(tables["protocols"], own)
                )
        markdown["protocols"] = "\n".join(sections)
    retrieval_columns = [f"{p.name}.{m}" for p in chosen for m in p.retrieval_metrics()]
    if retrieval_columns:
        entries = [
            ("Semantic Reconstructor", s, results / s / "evaluation" / "retrieval")
            for s in subjects
        ]
        tables["retrieval"] = _table(entries, retrieval_columns)
        for row, subject in zip(tables["retrieval"], subjects, strict=False):
            summary = read_summary(results / subject / "evaluation" / "retrieval")
            row |= {f"{c}_chance": summary[c]["chance"] for c in retrieval_columns}
        markdown["retrieval"] = _markdown(tables["retrieval"], retrieval_columns)
        markdown["retrieval"] += f"\n{RETRIEVAL_NOTE}\n"
    tables["comparisons"] = comparisons(
        systems, n_resamples=settings["bootstrap_resamples"], seed=settings["seed"]
    )
    markdown["comparisons"] = _comparisons_markdown(tables["comparisons"])
    with atomic_output(output) as tmp:
        tmp.mkdir(parents=True)
        for name, rows in tables.items():
            write_metrics(rows, tmp / f"{name}.csv")
        for name, text in markdown.items():
            note = "" if name == "comparisons" else f"\n{PM_NOTE}\n"
            (tmp / f"{name}.md").write_text(text + note)
    return tables
