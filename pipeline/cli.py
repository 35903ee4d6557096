"""Command line: one subcommand per stage (what the Snakemake rules call) plus utilities.

Run ``python -m pipeline --help`` (or ``pipeline --help`` once installed).

Every subcommand is one :class:`Command` of :data:`COMMANDS`, and every option one
:class:`Option` of it; :func:`_parser` builds the parser from that table. An option that
stands for a configuration key (``config="section.key"``) takes its default, type, choices
and help from the schema (``pipeline/schemas/config.schema.yaml``), so that running a
stage by hand with an option left out does what the workflow's default configuration
does.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import importlib
import json
import logging
import os
import re
import select
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, StoreError
from pipeline.stores import WarningCollector

__all__ = ["COMMANDS", "Command", "Option", "main"]

log = logging.getLogger("pipeline")

#: An option's ``default`` when the table gives none (argparse's own: ``None``).
_UNSET: Any = object()


@dataclasses.dataclass(frozen=True)
class Option:
    """One command-line option of a :class:`Command`, and the keyword it becomes.

    Attributes
    ----------
    flags : tuple of str
        ``("--tr-s",)``, ``("--directory", "-d")``, or ``("path",)`` for a positional.
    help : str, optional
        Help text; an option with ``config`` and no help shows the key's description.
    config : str, optional
        ``"section.key"`` of the configuration schema (``*`` stands for any name of a
        mapping, as in ``evaluation.external.*.layout``). The option's default is the
        key's schema default, and its type, ``nargs`` and choices follow the key's type and
        enum unless given here; ``default`` must then stay unset.
    type, nargs, choices, required, default, action, metavar
        As :meth:`argparse.ArgumentParser.add_argument`.
    keyword : str, optional
        The target's keyword argument (default: the option's name, dashes as underscores).
    convert : callable, optional
        Applied to a given value before the call (e.g. ``json.loads`` of a JSON option);
        at call time, so that a bad value is a one-line ``error:`` like any bad input.
    """

    flags: tuple[str, ...]
    help: str | None = None
    config: str | None = None
    type: Callable[[str], Any] | None = None
    nargs: str | int | None = None
    choices: Sequence[Any] | None = None
    required: bool = False
    default: Any = _UNSET
    action: str | None = None
    metavar: str | None = None
    keyword: str | None = None
    convert: Callable[[Any], Any] | None = None

    @property
    def dest(self) -> str:
        """The attribute of the parsed namespace."""
        name = next((f for f in self.flags if f.startswith("--")), self.flags[-1])
        return name.lstrip("-").replace("-", "_")

    def but(self, **changes: Any) -> Option:
        """This option with some fields changed (the same option in another command)."""
        return dataclasses.replace(self, **changes)


def option(*flags: str, **fields: Any) -> Option:
    """An :class:`Option` with these flags (``option("--tr-s", config="dataset.tr_s")``)."""
    return Option(flags, **fields)


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: its name, the function it runs and that function's options.

    Attributes
    ----------
    name : str
        The subcommand (``python -m pipeline NAME``).
    help : str
        One line for ``--help``.
    target : str or callable
        ``"module:function"``, imported when the command runs (the command line imports
        no model library before a model stage runs), or a function of this module (an
        adapter, for a command that does more than one call). It is called with one
        keyword argument per option.
    options : tuple of Option
    devices : bool
        Resolve the ``device`` and ``dtype`` keywords to a ``torch.device`` and
        ``torch.dtype`` (:func:`pipeline.models.loading.resolve_device`,
        :func:`~pipeline.models.loading.resolve_dtype`) before the call.
    utility : bool
        A command for people, not called by a rule of the workflow.
    status : bool
        The target returns the exit status; otherwise what it returns is dropped (a stage's
        return value is for callers in Python) and the command exits 0.
    """

    name: str
    help: str
    target: str | Callable[..., Any]
    options: tuple[Option, ...]
    devices: bool = False
    utility: bool = False
    status: bool = False

    def function(self) -> Callable[..., Any]:
        """The target, imported."""
        if callable(self.target):
            return self.target
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)

    def keywords(self, args: argparse.Namespace) -> dict[str, Any]:
        """The target's keyword arguments from the parsed ``args``."""
        kwargs = {}
        for opt in self.options:
            value = getattr(args, opt.dest)
            if opt.convert is not None and value is not None:
                value = opt.convert(value)
            kwargs[opt.keyword or opt.dest] = value
        if self.devices:
            from pipeline.models.loading import resolve_device, resolve_dtype

            kwargs["device"] = resolve_device(kwargs["device"])
            kwargs["dtype"] = resolve_dtype(kwargs["dtype"], kwargs["device"])
        return kwargs

    def __call__(self, args: argparse.Namespace) -> int | None:
        result = self.function()(**self.keywords(args))
        return result if self.status else None


# -- the schema behind the options ---------------------------------------------------


@functools.cache
def _schema() -> dict:
    from pipeline.config import load_schema

    return load_schema()


def config_node(key: str) -> dict:
    """The schema node of a configuration key ``"section.key"`` (``*``: any name)."""
    node = _schema()
    for part in key.split("."):
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
    return node


def _config_default(key: str) -> Any:
    """The default of a configuration key as the validated default config has it (a null
    that the preset resolves, such as ``frames.size``, resolved); ``*`` keys: the schema's."""
    if "*" in key:
        return config_node(key).get("default")
    value = _default_config()
    for part in key.split("."):
        value = value[part]
    return copy.deepcopy(value)


@functools.cache
def _default_config() -> dict:
    from pipeline.config import default_config

    return default_config()


def _true_false(value: str) -> bool:
    """``true`` / ``false`` (any case) as a bool: how a rule passes a boolean key."""
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")
    return value.lower() == "true"


#: The argument type of a schema type.
_SCHEMA_TYPES = {"integer": int, "number": float, "string": str, "boolean": _true_false}


def _schema_type(node: dict) -> Callable[[str], Any] | None:
    types = node.get("type", [])
    names = [t for t in ([types] if isinstance(types, str) else types) if t != "null"]
    return _SCHEMA_TYPES.get(names[0]) if names else None


def argument(opt: Option) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The flags and keyword arguments of :meth:`~argparse.ArgumentParser.add_argument`
    for ``opt``, with the default, type, choices and help of its configuration key."""
    fields = {
        "help": opt.help,
        "type": opt.type,
        "nargs": opt.nargs,
        "choices": opt.choices,
        "action": opt.action,
        "metavar": opt.metavar,
    }
    if opt.config is not None:
        if opt.default is not _UNSET:
            raise ValueError(f"{opt.flags[0]}: a default beside config={opt.config!r}")
        node = config_node(opt.config)
        fields["default"] = _config_default(opt.config)
        if node.get("type") == "array":
            fields["nargs"] = fields["nargs"] or "+"
            node = node["items"]
        fields["type"] = fields["type"] or _schema_type(node)
        enum = [v for v in node.get("enum", ()) if v is not None]
        fields["choices"] = fields["choices"] or enum or None
        if fields["type"] is _true_false:
            fields["metavar"] = fields["metavar"] or "{true,false}"
        if fields["help"] is None:
            fields["help"] = " ".join(node.get("description", "").split())
        fields["help"] = f"{fields['help']} (config {opt.config}; default %(default)s)"
    elif opt.default is not _UNSET:
        fields["default"] = opt.default
    if fields["help"]:
        fields["help"] = re.sub(r"%(?!\(default\)s)", "%%", fields["help"])
    if opt.flags[0].startswith("-"):
        fields["dest"] = opt.dest
        fields["required"] = opt.required or None
    return opt.flags, {k: v for k, v in fields.items() if v is not None}


def _add(parser: argparse.ArgumentParser, opt: Option) -> None:
    """Add ``opt`` to ``parser``: the one place an option is added."""
    flags, fields = argument(opt)
    parser.add_argument(*flags, **fields)


# -- adapters: commands that do more than one call -------------------------------------


def _demo_settings(text: str) -> Any:
    from pipeline.demo import DemoSettings

    return DemoSettings.from_dict(json.loads(text))


def _greedy(text: str) -> dict:
    """The captions section (JSON) with sampling off: a caption is a function of its keyframe."""
    return json.loads(text) | {"do_sample": False}


def _stopped_early(rows: list | None) -> None:
    """A training stopped by --stop-after-epoch exits 3: no output yet, only the checkpoint."""
    if rows is None:
        log.warning("stopped before the last epoch; rerun the same command to resume")
        raise SystemExit(3)


def _train_perception(**kwargs: Any) -> None:
    from pipeline.reconstructors.stages import train_perception

    _stopped_early(train_perception(**kwargs))


def _train_semantic(**kwargs: Any) -> None:
    from pipeline.reconstructors.stages import train_semantic

    _stopped_early(train_semantic(**kwargs))


def _cache(
    kind: str,
    *,
    frames: list[str] | None,
    captions: str | None,
    output: str,
    candidates: list[int],
    max_new_tokens: int,
    min_new_tokens: int,
    num_beams: int,
    batch_size: int,
    **model: Any,
) -> None:
    """One feature cache; ``model`` holds the model directory, device and dtype."""
    from pipeline import caches

    if kind == "vae":
        caches.cache_vae_latents(frames, output, batch_size=batch_size, **model)
    elif kind == "clip-images":
        caches.cache_clip_images(
            frames, output, candidates=candidates, batch_size=batch_size, **model
        )
    elif kind == "captions":
        caches.cache_captions(
            frames,
            output,
            candidates=candidates,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            num_beams=num_beams,
            batch_size=batch_size,
            **model,
        )
    else:
        caches.cache_clip_text(captions, output, **model)


def _fit_keyframe_embedder(*, settings: dict, **kwargs: Any) -> None:
    from pipeline.generation.stages import fit_keyframe_embedder

    fit_keyframe_embedder(
        generator=settings["generator"],
        frame=settings["frame"],
        alphas=settings["embedder_alphas"],
        **kwargs,
    )


def _evaluate_videos(
    *, videos: str, frames_dir: str, settings: dict, batch_size: int, **kw: Any
) -> None:
    from pipeline.evaluation.evaluate import evaluate, pipeline_reconstructions

    data = pipeline_reconstructions(videos, frames_dir)
    evaluate(data, settings=settings | {"batch_size": batch_size}, **kw)


def _evaluate_external(
    *,
    folder: str,
    layout: str,
    panels: int,
    gt_panel: int,
    pred_panel: int,
    border: str,
    frames_dir: str,
    settings: dict,
    batch_size: int,
    **kw: Any,
) -> None:
    from pipeline.evaluation.evaluate import evaluate, external_reconstructions

    data = external_reconstructions(
        folder,
        layout=layout,
        panels=panels,
        gt_panel=gt_panel,
        pred_panel=pred_panel,
        border=border,
        frames_dir=frames_dir,
    )
    evaluate(data, settings=settings | {"batch_size": batch_size}, stage="evaluate_external", **kw)


def _report(*, results: str, subjects: list[str], clips: int, **kwargs: Any) -> None:
    """The report of ``subjects``, their stores found under ``results``."""
    from pipeline.evaluation.report import write_report

    results = Path(results)
    paths = {
        "selection": ("selection.zarr",),
        "perception": ("perception", "model"),
        "semantic": ("semantic", "model"),
        "blurry": ("perception", "blurry.zarr"),
        "keyframes": ("keyframes", "keyframes.zarr"),
        "videos": ("videos",),
        "evaluation": ("evaluation", "videos"),
        "interpretation": ("interpretation",),
    }
    write_report(
        subjects={s: {k: str(results.joinpath(s, *p)) for k, p in paths.items()} for s in subjects},
        n_clips=clips,
        results=results,
        **kwargs,
    )


def _inspect(path: str, provenance: bool) -> None:
    from pipeline.stores import inspect_store

    print(inspect_store(path, show_provenance=provenance))


def _verify(
    paths: list[str], directory: str | None, snakefile: str, configfile: list[str], no_config: bool
) -> int:
    from pipeline.verify import find_stores, load_rule_params, verify_stores

    if directory:
        os.chdir(directory)
    if not no_config:
        load_rule_params(Path(snakefile), configfile)
    stores = [Path(p) for p in paths] if paths else list(find_stores())
    failed = 0
    for path, problems in verify_stores(stores).items():
        if problems:
            failed += 1
            print(f"FAILED  {path}: " + "; ".join(p.removeprefix(f"{path}: ") for p in problems))
        else:
            print(f"ok      {path}")
    print(f"{len(stores) - failed} of {len(stores)} stores verified", file=sys.stderr)
    return 1 if failed else 0


def _versions(check: bool) -> None:
    from pipeline.environment import LOCK, lock_drift, versions_table

    print(versions_table(lock=LOCK if LOCK.exists() else None))
    if check:
        drift = lock_drift(LOCK)
        if drift:
            raise PipelineError(
                f"{len(drift)} installed packages differ from {LOCK.name}: " + "; ".join(drift)
            )
        print(f"every installed package of {LOCK.name} is at its locked version")


def _memory_budget(profile: str) -> None:
    import yaml

    from pipeline.models.budget import paper_budgets, table

    resources = yaml.safe_load(Path(profile).read_text())["set-resources"]
    mem_mb = {rule: r["mem_mb"] for rule, r in resources.items() if "mem_mb" in r}
    print(table(paper_budgets(), mem_mb))


def _sync_envs(env_files: list[str]) -> None:
    from pipeline.environment import LOCK, env_file_text

    for path in env_files:
        text = env_file_text(path, LOCK)
        if Path(path).read_text() != text:
            Path(path).write_text(text)
            log.info("%s: pinned from %s", path, LOCK.name)


def _select(
    preprocessed: str,
    output: str,
    train_segments: list[str],
    settings: dict,
    frames: list[str] | None,
    run: str | None,
) -> None:
    from pipeline.selection import select_vertices

    select_vertices(
        preprocessed,
        output,
        train_segments=train_segments,
        frames=frames,
        run=run,
        **settings,
    )


def _lag_scan(preprocessed: str, selection: str, frames: list[str], lags: list[int]) -> None:
    from pipeline.analysis import lag_profile_from_stores

    stores = {Path(p).name.removesuffix(".zarr"): p for p in frames}
    scores = lag_profile_from_stores(preprocessed, selection, stores, lags)
    print("lag_volumes\tcv_correlation")
    for lag, score in zip(lags, scores, strict=True):
        print(f"{lag}\t{score:.4f}")


def _write_or_print(content: str, page: str | None, name: str) -> None:
    """Print a generated section, or write it between the markers ``name`` of ``page``."""
    from pipeline.docs import write_between

    if not page:
        print(content)
    elif write_between(page, content, name):
        log.info("%s: %s written", page, name)
    else:
        log.info("%s: %s already up to date", page, name)


def _rerun_table(snakefile: str, write: str | None) -> None:
    from pipeline.rerun import markdown, rerun_table

    _write_or_print(markdown(rerun_table(Path(snakefile).resolve())), write, "rerun-table")


def _config_docs(write: str | None) -> None:
    from pipeline.config import load_schema
    from pipeline.docs import config_markdown

    _write_or_print(config_markdown(load_schema()), write, "config-keys")


def _rulegraph(snakefile: str, configfile: list[str], write: str | None) -> None:
    from pipeline.docs import parse_rulegraph, rulegraph, rulegraph_markdown

    graph = parse_rulegraph(rulegraph(snakefile, tuple(configfile)))
    _write_or_print(rulegraph_markdown(graph), write, "rulegraph")


# -- the table of commands -----------------------------------------------------------

OUTPUT = option("--output", required=True)
SETTINGS = option("--settings", required=True, convert=json.loads, help="JSON of the settings")
DEVICE = option("--device", config="models.device")
DTYPE = option(
    "--dtype",
    default="float32",
    help="floating-point type of the model computations (the precision section)",
)
TR_S = option("--tr-s", config="dataset.tr_s")
CLIP_S = option("--clip-s", config="alignment.clip_s")
TINY_SEED = option("--seed", config="models.tiny_seed")
CACHE_BATCH = option("--batch-size", config="models.batch_size")
FRAMES_DIR = option("--frames-dir", required=True, help="directory of the frame stores")
GENERATION = option(
    "--generation",
    required=True,
    keyword="generation_dir",
    help="the preset's generation model directory",
)
TRAIN_SEGMENTS = option("--train-segments", nargs="+", required=True)
FRAME_STORES = option("--frames", nargs="+", required=True, keyword="frame_stores")
WRITE = option("--write", metavar="PAGE", help="write it between the page's markers (else print)")
SNAKEFILE = option("--snakefile", default="Snakefile")
CONFIGFILE = option(
    "--configfile", nargs="*", default=[], help="config files merged over the default"
)


def _training(section: str) -> tuple[Option, ...]:
    """Options shared by the reconstructor trainings (``section``: their config section)."""
    return (
        OUTPUT.but(help="model directory to write"),
        SETTINGS.but(help="effective settings, JSON"),
        option(
            "--checkpoints",
            required=True,
            keyword="checkpoint_dir",
            help="checkpoint directory (resumed from)",
        ),
        option("--checkpoint-every", config=f"{section}.checkpoint_every"),
        DEVICE,
        option(
            "--stop-after-epoch",
            type=int,
            help="stop after this epoch (exit status 3), leaving the checkpoint to resume from",
        ),
    )


def _evaluation(*options: Option) -> tuple[Option, ...]:
    """Options shared by the evaluation of our videos and of folders made elsewhere."""
    return (
        *options,
        OUTPUT,
        SETTINGS.but(help="JSON of the evaluation settings"),
        FRAMES_DIR,
        option("--classifiers", required=True, help="the preset's classifier directory"),
        option(
            "--clip", required=True, help="the preset's OpenCLIP directory (neuroclips CLIP-pcc)"
        ),
        option("--batch-size", config="evaluation.batch_size"),
        DEVICE,
        DTYPE,
    )


def _external(key: str, **fields: Any) -> Option:
    """An option of one folder of ``evaluation.external``."""
    return option(f"--{key.replace('_', '-')}", config=f"evaluation.external.*.{key}", **fields)


#: Every subcommand. Rules call the stage commands (tests/test_cli.py checks that each
#: planned shell command parses); the utilities are for people.
COMMANDS: tuple[Command, ...] = (
    Command(
        "demo",
        "generate the synthetic demo dataset (in demo.format's layout)",
        "pipeline.demo:generate_demo",
        (
            option("--root", required=True, help="dataset root to create"),
            SETTINGS.but(convert=_demo_settings, help="JSON of pipeline.demo.DemoSettings fields"),
        ),
    ),
    Command(
        "preprocess",
        "trim, detrend and z-score the runs of one subject",
        "pipeline.preprocess:preprocess_subject",
        (
            option("--subject", required=True),
            option(
                "--plan",
                required=True,
                convert=json.loads,
                help="JSON of the subject's runs and segments (pipeline.datasets.Dataset.plan)",
            ),
            OUTPUT,
            TR_S,
            CLIP_S,
            option("--trailing-volumes", config="dataset.trailing_volumes"),
            option("--max-leading-volumes", config="dataset.max_leading_volumes"),
            option("--detrend-order", config="preprocess.detrend_order"),
            option("--max-dropped-fraction", config="preprocess.max_dropped_fraction"),
            option("--accept-tr-mismatch", config="preprocess.accept_tr_mismatch"),
            option("--threads", type=int, default=1, help="> 1: read runs in parallel"),
        ),
    ),
    Command(
        "select",
        "select the vertices (selection.method)",
        _select,
        (
            option("--preprocessed", required=True),
            OUTPUT,
            TRAIN_SEGMENTS,
            SETTINGS.but(
                help="JSON of the method and its selection keys (plus shift_s and tr_s for "
                "encoding)"
            ),
            option("--frames", nargs="*", help="encoding: the training segments' frame stores"),
            option("--run", help="roi: one CIFTI run of the subject (its brain model)"),
        ),
    ),
    Command(
        "align",
        "hemodynamic shift and train/test samples",
        "pipeline.alignment:align_subject",
        (
            option("--preprocessed", required=True),
            option("--selection", required=True),
            OUTPUT,
            TRAIN_SEGMENTS,
            option("--test-segments", nargs="+", required=True),
            option("--shift-s", config="alignment.shift_s"),
            TR_S,
            CLIP_S,
            option("--combine", config="alignment.combine"),
        ),
    ),
    Command(
        "frames",
        "extract clip frames from one stimulus video",
        "pipeline.frames:extract_frames",
        (
            option("--video", required=True),
            OUTPUT,
            CLIP_S,
            option("--fps", config="frames.fps"),
            option("--size", config="frames.size"),
            option("--threads", type=int, default=1),
            option(
                "--window",
                convert=json.loads,
                help="JSON of the segment (pipeline.datasets.Segment.to_dict); default the "
                "whole video",
            ),
        ),
    ),
    Command(
        "tiny-models",
        "write the tiny preset (VAE fitted to the frames)",
        "pipeline.models.tiny:write_tiny_models",
        (
            OUTPUT,
            FRAME_STORES.but(help="frame stores to fit the VAE on"),
            TINY_SEED,
            option("--vae-steps", config="models.tiny_vae_steps"),
        ),
    ),
    Command(
        "tiny-classifiers",
        "write the tiny classifiers (fitted to k-means of the frames)",
        "pipeline.models.tiny_classifiers:write_tiny_classifiers",
        (
            OUTPUT,
            FRAME_STORES.but(help="training frame stores"),
            TINY_SEED,
            option("--steps", config="models.tiny_classifier_steps"),
            option("--classes", config="models.tiny_classifier_classes"),
        ),
    ),
    Command(
        "download-models",
        "fetch a preset's models from the hub (network)",
        "pipeline.models.download:download_set",
        (
            option("--preset", required=True),
            option("--root", required=True),
            option(
                "--set",
                choices=["encoders", "generation", "classifiers"],
                default="encoders",
                keyword="name",
                help="which models",
            ),
            option(
                "--generator",
                config="keyframes.generator",
                help="keyframe generator whose roles to fetch (generation)",
            ),
        ),
    ),
    Command(
        "cache",
        "a feature cache: vae, clip-images, captions, clip-text",
        _cache,
        (
            option("kind", choices=["vae", "clip-images", "captions", "clip-text"]),
            OUTPUT,
            option("--model", required=True, help="model directory"),
            option("--frames", nargs="+", help="frame stores, in sample order"),
            option("--captions", help="captions store (clip-text)"),
            option("--candidates", config="keyframes.candidates"),
            option("--max-new-tokens", config="captions.max_new_tokens"),
            option("--min-new-tokens", config="captions.min_new_tokens"),
            option("--num-beams", config="captions.num_beams"),
            DEVICE,
            DTYPE,
            CACHE_BATCH,
        ),
        devices=True,
    ),
    Command(
        "train-perception",
        "train a subject's Perception Reconstructor",
        _train_perception,
        (
            option("--aligned", required=True, help="the subject's aligned store"),
            option("--vae-cache", required=True, help="the VAE latents cache"),
            *_training("perception"),
        ),
    ),
    Command(
        "predict-perception",
        "blurry videos of a subject's test clips",
        "pipeline.reconstructors.stages:predict_perception",
        (
            option("--model-dir", required=True),
            option("--aligned", required=True),
            option("--vae", required=True, help="VAE model directory (decodes the latents)"),
            OUTPUT,
            DEVICE,
            DTYPE,
            CACHE_BATCH,
        ),
        devices=True,
    ),
    Command(
        "train-semantic",
        "train a subject's Semantic Reconstructor",
        _train_semantic,
        (
            option("--aligned", required=True, help="the subject's aligned store"),
            option("--clip-cache", required=True, help="the CLIP image-token cache"),
            option("--text-cache", required=True, help="the CLIP caption-embedding cache"),
            *_training("semantic"),
        ),
    ),
    Command(
        "predict-semantic",
        "fMRI and prior CLIP embeddings of test clips",
        "pipeline.reconstructors.stages:predict_semantic",
        (
            option("--model-dir", required=True),
            option("--aligned", required=True),
            option("--clip-cache", required=True, help="the CLIP image-token cache (targets)"),
            OUTPUT,
            option("--steps", config="semantic.sampling_steps"),
            option("--guidance", config="semantic.guidance"),
            option("--seed", config="semantic.seed"),
            DEVICE,
            DTYPE.but(help="autocast precision (float32: none)"),
            CACHE_BATCH,
        ),
    ),
    Command(
        "interpret",
        "voxel importance of both reconstructors on the cortex (flat maps, ROI table)",
        "pipeline.interpretation:interpret_subject",
        (
            option("--perception", required=True, help="the trained PR's model directory"),
            option("--semantic", required=True, help="the trained SR's model directory"),
            option("--aligned", required=True),
            option("--selection", required=True, help="the subject's voxel-selection store"),
            option("--run", required=True, help="one CIFTI run of the subject (its grayordinates)"),
            OUTPUT,
            option("--methods", config="interpretation.methods"),
            option("--colour-range", config="interpretation.colour_range", convert=tuple),
            option("--border-areas", config="interpretation.border_areas"),
            option("--permutations", config="interpretation.permutations"),
            option("--seed", config="interpretation.seed"),
            DEVICE,
        ),
    ),
    Command(
        "tiny-generation-models",
        "write the tiny preset's generation models",
        "pipeline.models.tiny_generation:write_tiny_generation",
        (
            OUTPUT,
            option("--encoders", required=True, help="the tiny preset's directory (fitted VAE)"),
            FRAME_STORES.but(help="frame stores to fit the UNets on"),
            TINY_SEED,
            option("--steps", config="models.tiny_generation_steps"),
        ),
    ),
    Command(
        "fit-keyframe-embedder",
        "ridge fMRI -> a diffusers unCLIP generator's image embedding",
        _fit_keyframe_embedder,
        (
            OUTPUT,
            SETTINGS.but(help="JSON of the effective keyframes settings"),
            DEVICE,
            DTYPE,
            option("--aligned", required=True),
            FRAMES_DIR.but(keyword="frame_dir"),
            GENERATION,
        ),
        devices=True,
    ),
    Command(
        "generate-keyframes",
        "one keyframe per test clip",
        "pipeline.generation.stages:generate_keyframes",
        (
            OUTPUT,
            SETTINGS.but(help="JSON of the effective keyframes settings"),
            DEVICE,
            DTYPE,
            option("--blurry", required=True, help="the subject's blurry videos"),
            GENERATION,
            option("--aligned", help="aligned store (generators conditioned on image embeddings)"),
            option("--embedder", help="fitted keyframe embedder directory"),
            option("--semantic", help="SR embeddings store (generators on prior tokens)"),
            option("--batch-size", config="keyframes.batch_size"),
        ),
        devices=True,
    ),
    Command(
        "caption-keyframes",
        "BLIP-2 captions of the generated keyframes",
        "pipeline.generation.stages:caption_keyframes",
        (
            OUTPUT,
            SETTINGS.but(
                convert=_greedy, keyword="generation", help="JSON of the captions section"
            ),
            DEVICE,
            DTYPE,
            option("--keyframes", required=True),
            option("--captioner", required=True, help="BLIP-2 model directory"),
            CACHE_BATCH,
        ),
        devices=True,
    ),
    Command(
        "synthesize-videos",
        "AnimateDiff + SparseCtrl videos",
        "pipeline.generation.stages:synthesize_videos",
        (
            OUTPUT,
            SETTINGS.but(help="JSON of the effective video settings"),
            DEVICE,
            DTYPE,
            option("--blurry", required=True),
            option("--keyframes", required=True),
            option("--captions", required=True, help="keyframe captions store"),
            GENERATION,
            option("--batch-size", config="video.batch_size"),
        ),
        devices=True,
    ),
    Command(
        "train-fusion",
        "the multi-fMRI fusion pair classifier",
        "pipeline.generation.fusion:fit_fusion",
        (
            OUTPUT,
            SETTINGS.but(help="JSON of the fusion training settings"),
            DEVICE,
            DTYPE,
            option("--clip-images", required=True, help="CLIP image cache store"),
            FRAME_STORES.but(help="training frame stores"),
            option(
                "--classifier",
                required=True,
                keyword="classifier_dir",
                help="frame classifier directory",
            ),
        ),
        devices=True,
    ),
    Command(
        "fuse-videos",
        "chain neighbouring test clips into longer videos",
        "pipeline.generation.fusion:fuse_videos",
        (
            option("--videos", required=True, help="the subject's videos directory"),
            option("--blurry", required=True),
            option("--clip", required=True, keyword="clip_model", help="OpenCLIP model directory"),
            GENERATION,
            option("--fusion", required=True, help="the trained fusion classifier"),
            OUTPUT,
            option("--threshold", config="fusion.threshold"),
            option("--max-chain", config="fusion.max_chain"),
            option("--batch-size", config="video.batch_size"),
            DEVICE,
            DTYPE,
        ),
        devices=True,
    ),
    Command(
        "evaluate-videos",
        "the field's metrics of a videos directory",
        _evaluate_videos,
        _evaluation(
            option("--videos", required=True, help="synthesize_videos or fuse_videos output")
        ),
        devices=True,
    ),
    Command(
        "evaluate-external",
        "the same metrics of a folder made elsewhere",
        _evaluate_external,
        _evaluation(
            option("--folder", required=True, help="one GIF or video per clip"),
            _external("layout"),
            _external("panels", help="side_by_side: panels per file"),
            _external("gt_panel", help="side_by_side: the ground truth's panel"),
            _external("pred_panel", help="side_by_side: the prediction's panel"),
            _external("border", help="grid border around the panels (pixels) or auto"),
        ),
        devices=True,
    ),
    Command(
        "evaluate-retrieval",
        "keyframe and fMRI retrieval top-1 among 300",
        "pipeline.evaluation.evaluate:evaluate_retrieval",
        (
            option("--semantic", required=True, help="predict_semantic's embeddings store"),
            option(
                "--clip-images", required=True, keyword="clip_cache", help="CLIP image cache store"
            ),
            OUTPUT,
            SETTINGS.but(help="JSON of the retrieval settings"),
        ),
    ),
    Command(
        "evaluation-tables",
        "Table 1, Table 2 and retrieval across subjects",
        "pipeline.evaluation.tables:write_tables",
        (
            option("--results", required=True, help="the results directory"),
            OUTPUT,
            option("--subjects", nargs="+", required=True),
            option("--ablation-subjects", nargs="*", default=[]),
            option("--ablations", nargs="*", default=[]),
            option("--external", nargs="*", default=[], help="names of external folders"),
            SETTINGS.but(help="JSON: protocols, n_way, bootstrap_resamples, seed"),
        ),
    ),
    Command(
        "report",
        "the self-contained HTML report of a run",
        _report,
        (
            OUTPUT.but(help="the HTML file"),
            option("--methods", help="the methods text (default: methods.md beside --output)"),
            option("--figures", help="directory for the figures as separate files"),
            option("--results", required=True, help="the results directory"),
            option("--tables", required=True, help="evaluation_tables output"),
            option("--subjects", nargs="+", required=True),
            option("--fusion", required=True, help="the fusion classifier directory"),
            FRAMES_DIR,
            option(
                "--config",
                required=True,
                convert=json.loads,
                help="the run's configuration as JSON",
            ),
            option("--clips", config="evaluation.report_clips"),
        ),
    ),
    Command(
        "inspect",
        "tree, shapes, dtypes, chunks and attributes of a store",
        _inspect,
        (
            option("path"),
            option("--provenance", action="store_true", help="show the full provenance record"),
        ),
        utility=True,
    ),
    Command(
        "lag-scan",
        "cross-validated encoding accuracy per BOLD delay",
        _lag_scan,
        (
            option("--preprocessed", required=True),
            option("--selection", required=True),
            option("--frames", nargs="+", required=True, help="frame stores, one per segment"),
            option("--lags", nargs="+", type=int, default=[0, 1, 2, 3, 4]),
        ),
        utility=True,
    ),
    Command(
        "versions",
        "installed and locked versions of the key packages",
        _versions,
        (
            option(
                "--check",
                action="store_true",
                help="fail when an installed package differs from requirements.lock",
            ),
        ),
        utility=True,
    ),
    Command(
        "memory-budget",
        "host and GPU memory of the model stages at paper size (estimates)",
        _memory_budget,
        (option("--profile", default="profiles/slurm/config.yaml"),),
        utility=True,
    ),
    Command(
        "sync-envs",
        "pin the conda env files from requirements.lock",
        _sync_envs,
        (
            option(
                "env_files",
                nargs="*",
                default=sorted(str(f) for f in (Path(__file__).parents[1] / "envs").glob("*.yaml")),
            ),
        ),
        utility=True,
    ),
    Command(
        "verify",
        "read every chunk of the stores and check them against their records and "
        "the current config; one line per store",
        _verify,
        (
            option("paths", nargs="*", help="stores (default: all under results/, resources/)"),
            option("--directory", "-d", help="the workflow's working directory (default: here)"),
            SNAKEFILE.but(default=str(Path(__file__).parents[1] / "Snakefile")),
            CONFIGFILE.but(help="config files of the run, as given to Snakemake"),
            option(
                "--no-config",
                action="store_true",
                help="skip the comparison with the current config",
            ),
        ),
        utility=True,
        status=True,
    ),
    Command(
        "rerun-table",
        "config key -> rules that rerun, from the workflow",
        _rerun_table,
        (SNAKEFILE, WRITE.but(help="write the table between the page's markers (else print)")),
        utility=True,
    ),
    Command(
        "config-docs",
        "every config key, from the schema, as Markdown",
        _config_docs,
        (WRITE.but(help="write the keys between the page's markers (else print)"),),
        utility=True,
    ),
    Command(
        "rulegraph",
        "the rule graph as a Mermaid flowchart",
        _rulegraph,
        (
            SNAKEFILE,
            CONFIGFILE,
            WRITE.but(help="write the graph between the page's markers (else print)"),
        ),
        utility=True,
    ),
)

#: The top-level options.
VERBOSE = option("-v", "--verbose", action="store_true", help="debug logging")


def _parser() -> argparse.ArgumentParser:
    """The parser of every command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__)
    _add(parser, VERBOSE)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help)
        for opt in command.options:
            _add(p, opt)
        p.set_defaults(func=command)
    return parser


def _stdout_closed() -> bool:
    """Whether nobody reads standard output any more (the reader of its pipe has exited)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll, or no descriptor behind stdout
        return False


def _silence_stdout() -> None:
    """Point standard output at the null device, so that the flush at exit cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a descriptor
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _collect_warnings() -> None:
    """Keep this command's warnings for the stores it writes (one collector, emptied: a
    process may run several commands, e.g. the tests)."""
    from pipeline.stores import WARNINGS

    WARNINGS.clear()
    root = logging.getLogger()
    if not any(isinstance(h, WarningCollector) for h in root.handlers):
        root.addHandler(WarningCollector())


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after ``python -m pipeline`` (default: the process's own).

    Returns
    -------
    int
        0 on success, also when the reader of standard output stopped reading early
        (``pipeline inspect STORE | head -1``); 1 with a one-line ``error:`` message
        for bad input.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)
    _collect_warnings()
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here rather than at interpreter exit
    except BrokenPipeError:
        if not _stdout_closed():  # a pipe of the stage's own, not standard output
            raise
        # the reader has what it wanted, as with `head`: stop quietly
        _silence_stdout()
        return 0
    except (PipelineError, ValueError) as exc:
        exc = _name_corrupt_store(exc)
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return status or 0


def _name_corrupt_store(exc: Exception) -> Exception:
    """A chunk that failed its checksum (zarr's crc32c codec raises a ValueError that
    names no file) as a :class:`StoreError` naming the store and the chunk."""
    if not isinstance(exc, ValueError) or "checksum" not in str(exc):
        return exc
    from pipeline.stores import OPENED, corrupt_chunk

    for path in dict.fromkeys(OPENED):
        problem = corrupt_chunk(path)
        if problem:
            return StoreError(
                f"{path}: {problem}; the store was damaged after it was written. Delete it "
                "and rerun the stage that wrote it"
            )
    return exc
