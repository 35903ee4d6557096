"""Command line: one subcommand per stage (what the Snakemake rules call) plus ``inspect``.

Run ``python -m pipeline --help`` (or ``pipeline --help`` once installed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import sys
from pathlib import Path

from pipeline.errors import PipelineError, StoreError
from pipeline.stores import WarningCollector

__all__ = ["main"]

log = logging.getLogger("pipeline")


def _cmd_demo(args: argparse.Namespace) -> None:
    from pipeline.demo import DemoSettings, generate_demo

    generate_demo(DemoSettings.from_dict(json.loads(args.settings)), args.root)


def _cmd_preprocess(args: argparse.Namespace) -> None:
    from pipeline.preprocess import preprocess_subject

    preprocess_subject(
        args.runs,
        args.stimuli,
        args.output,
        subject=args.subject,
        tr_s=args.tr_s,
        trailing_volumes=args.trailing_volumes,
        max_leading_volumes=args.max_leading_volumes,
        detrend_order=args.detrend_order,
        max_dropped_fraction=args.max_dropped_fraction,
        accept_tr_mismatch=args.accept_tr_mismatch == "true",
        threads=args.threads,
    )


def _cmd_select(args: argparse.Namespace) -> None:
    from pipeline.selection import select_vertices

    select_vertices(
        args.preprocessed,
        args.output,
        train_segments=args.train_segments,
        alpha=args.alpha,
        alternative=args.alternative,
    )


def _cmd_align(args: argparse.Namespace) -> None:
    from pipeline.alignment import align_subject

    align_subject(
        args.preprocessed,
        args.selection,
        args.output,
        train_segments=args.train_segments,
        test_segments=args.test_segments,
        shift_s=args.shift_s,
        tr_s=args.tr_s,
    )


def _cmd_frames(args: argparse.Namespace) -> None:
    from pipeline.frames import extract_frames

    extract_frames(
        args.video, args.output, tr_s=args.tr_s, fps=args.fps, size=args.size, threads=args.threads
    )


def _model_args(args: argparse.Namespace) -> dict:
    from pipeline.models.loading import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    return {"model": args.model, "device": device, "dtype": resolve_dtype(args.dtype, device)}


def _cmd_tiny_models(args: argparse.Namespace) -> None:
    from pipeline.models.tiny import write_tiny_models

    write_tiny_models(args.output, args.frames, seed=args.seed, vae_steps=args.vae_steps)


def _cmd_download_models(args: argparse.Namespace) -> None:
    from pipeline.models.download import download_set

    download_set(args.set, args.preset, args.root, generator=args.generator)


def _cmd_cache(args: argparse.Namespace) -> None:
    from pipeline import caches

    model = _model_args(args)
    if args.kind == "vae":
        caches.cache_vae_latents(args.frames, args.output, batch_size=args.batch_size, **model)
    elif args.kind == "clip-images":
        caches.cache_clip_images(
            args.frames,
            args.output,
            candidates=args.candidates,
            batch_size=args.batch_size,
            **model,
        )
    elif args.kind == "captions":
        caches.cache_captions(
            args.frames,
            args.output,
            candidates=args.candidates,
            max_new_tokens=args.max_new_tokens,
            min_new_tokens=args.min_new_tokens,
            num_beams=args.num_beams,
            batch_size=args.batch_size,
            **model,
        )
    else:
        caches.cache_clip_text(args.captions, args.output, **model)


def _cmd_train_perception(args: argparse.Namespace) -> None:
    from pipeline.reconstructors.stages import train_perception

    rows = train_perception(
        args.aligned,
        args.vae_cache,
        args.output,
        settings=json.loads(args.settings),
        checkpoint_dir=args.checkpoints,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        stop_after_epoch=args.stop_after_epoch,
    )
    _stopped_early(rows)


def _stopped_early(rows: list | None) -> None:
    """A training stopped by --stop-after-epoch exits 3: no output yet, only the checkpoint."""
    if rows is None:
        log.warning("stopped before the last epoch; rerun the same command to resume")
        raise SystemExit(3)


def _cmd_predict_perception(args: argparse.Namespace) -> None:
    from pipeline.models.loading import resolve_device, resolve_dtype
    from pipeline.reconstructors.stages import predict_perception

    device = resolve_device(args.device)
    predict_perception(
        args.model_dir,
        args.aligned,
        args.vae,
        args.output,
        device=device,
        dtype=resolve_dtype(args.dtype, device),
        batch_size=args.batch_size,
    )


def _cmd_train_semantic(args: argparse.Namespace) -> None:
    from pipeline.reconstructors.stages import train_semantic

    rows = train_semantic(
        args.aligned,
        args.clip_cache,
        args.text_cache,
        args.output,
        settings=json.loads(args.settings),
        checkpoint_dir=args.checkpoints,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        stop_after_epoch=args.stop_after_epoch,
    )
    _stopped_early(rows)


def _cmd_predict_semantic(args: argparse.Namespace) -> None:
    from pipeline.reconstructors.stages import predict_semantic

    predict_semantic(
        args.model_dir,
        args.aligned,
        args.clip_cache,
        args.output,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
    )


def _devices(args: argparse.Namespace) -> dict:
    from pipeline.models.loading import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    return {"device": device, "dtype": resolve_dtype(args.dtype, device)}


def _cmd_tiny_generation_models(args: argparse.Namespace) -> None:
    from pipeline.models.tiny_generation import write_tiny_generation

    write_tiny_generation(args.output, args.encoders, seed=args.seed)


def _cmd_fit_keyframe_embedder(args: argparse.Namespace) -> None:
    from pipeline.generation.stages import fit_keyframe_embedder

    settings = json.loads(args.settings)
    fit_keyframe_embedder(
        args.aligned,
        args.frames_dir,
        args.generation,
        args.output,
        generator=settings["generator"],
        frame=settings["frame"],
        alphas=settings["embedder_alphas"],
        **_devices(args),
    )


def _cmd_generate_keyframes(args: argparse.Namespace) -> None:
    from pipeline.generation.stages import generate_keyframes

    generate_keyframes(
        args.blurry,
        args.generation,
        args.output,
        settings=json.loads(args.settings),
        aligned=args.aligned,
        embedder=args.embedder,
        semantic=args.semantic,
        batch_size=args.batch_size,
        **_devices(args),
    )


def _cmd_caption_keyframes(args: argparse.Namespace) -> None:
    from pipeline.generation.stages import caption_keyframes

    caption_keyframes(
        args.keyframes,
        args.captioner,
        args.output,
        generation=json.loads(args.settings) | {"do_sample": False},
        batch_size=args.batch_size,
        **_devices(args),
    )


def _cmd_synthesize_videos(args: argparse.Namespace) -> None:
    from pipeline.generation.stages import synthesize_videos

    synthesize_videos(
        args.blurry,
        args.keyframes,
        args.captions,
        args.generation,
        args.output,
        settings=json.loads(args.settings),
        batch_size=args.batch_size,
        **_devices(args),
    )


def _cmd_tiny_classifiers(args: argparse.Namespace) -> None:
    from pipeline.models.tiny_classifiers import write_tiny_classifiers

    write_tiny_classifiers(
        args.output, args.frames, seed=args.seed, steps=args.steps, classes=args.classes
    )


def _cmd_train_fusion(args: argparse.Namespace) -> None:
    from pipeline.generation.fusion import fit_fusion

    fit_fusion(
        args.clip_images,
        args.frames,
        args.classifier,
        args.output,
        settings=json.loads(args.settings),
        **_devices(args),
    )


def _cmd_fuse_videos(args: argparse.Namespace) -> None:
    from pipeline.generation.fusion import fuse_videos

    fuse_videos(
        args.videos,
        args.blurry,
        args.clip,
        args.generation,
        args.fusion,
        args.output,
        threshold=args.threshold,
        max_chain=args.max_chain,
        batch_size=args.batch_size,
        **_devices(args),
    )


def _evaluation_settings(args: argparse.Namespace) -> dict:
    return json.loads(args.settings) | {"batch_size": args.batch_size}


def _cmd_evaluate_videos(args: argparse.Namespace) -> None:
    from pipeline.evaluation.evaluate import evaluate, pipeline_reconstructions

    evaluate(
        pipeline_reconstructions(args.videos, args.frames_dir),
        args.output,
        classifiers=args.classifiers,
        clip=args.clip,
        settings=_evaluation_settings(args),
        **_devices(args),
    )


def _cmd_evaluate_external(args: argparse.Namespace) -> None:
    from pipeline.evaluation.evaluate import evaluate, external_reconstructions

    data = external_reconstructions(
        args.folder,
        layout=args.layout,
        panels=args.panels,
        gt_panel=args.gt_panel,
        pred_panel=args.pred_panel,
        border=args.border,
        frames_dir=args.frames_dir,
    )
    evaluate(
        data,
        args.output,
        classifiers=args.classifiers,
        clip=args.clip,
        settings=_evaluation_settings(args),
        stage="evaluate_external",
        **_devices(args),
    )


def _cmd_evaluate_retrieval(args: argparse.Namespace) -> None:
    from pipeline.evaluation.evaluate import evaluate_retrieval

    evaluate_retrieval(
        args.semantic, args.clip_images, args.output, settings=json.loads(args.settings)
    )


def _cmd_evaluation_tables(args: argparse.Namespace) -> None:
    from pipeline.evaluation.tables import write_tables

    write_tables(
        args.results,
        args.output,
        subjects=args.subjects,
        ablation_subjects=args.ablation_subjects,
        ablations=args.ablations,
        external=args.external,
        settings=json.loads(args.settings),
    )


def _cmd_report(args: argparse.Namespace) -> None:
    from pipeline.evaluation.report import write_report

    results = Path(args.results)
    subjects = {
        s: {
            "selection": results / s / "selection.zarr",
            "perception": results / s / "perception" / "model",
            "semantic": results / s / "semantic" / "model",
            "blurry": results / s / "perception" / "blurry.zarr",
            "keyframes": results / s / "keyframes" / "keyframes.zarr",
            "videos": results / s / "videos",
            "evaluation": results / s / "evaluation" / "videos",
        }
        for s in args.subjects
    }
    write_report(
        args.output,
        tables=args.tables,
        subjects={s: {k: str(v) for k, v in p.items()} for s, p in subjects.items()},
        fusion=args.fusion,
        frames_dir=args.frames_dir,
        config=json.loads(args.config),
        n_clips=args.clips,
        figures=args.figures,
        methods=args.methods,
        results=results,
    )


def _cmd_inspect(args: argparse.Namespace) -> None:
    from pipeline.stores import inspect_store

    print(inspect_store(args.path, show_provenance=args.provenance))


def _cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.verify import find_stores, load_rule_params, verify_stores

    if args.directory:
        os.chdir(args.directory)
    if not args.no_config:
        load_rule_params(Path(args.snakefile), args.configfile)
    paths = [Path(p) for p in args.paths] if args.paths else list(find_stores())
    failed = 0
    for path, problems in verify_stores(paths).items():
        if problems:
            failed += 1
            print(f"FAILED  {path}: " + "; ".join(p.removeprefix(f"{path}: ") for p in problems))
        else:
            print(f"ok      {path}")
    print(f"{len(paths) - failed} of {len(paths)} stores verified", file=sys.stderr)
    return 1 if failed else 0


def _cmd_versions(args: argparse.Namespace) -> None:
    from pipeline.environment import LOCK, lock_drift, versions_table

    print(versions_table(lock=LOCK if LOCK.exists() else None))
    if args.check:
        drift = lock_drift(LOCK)
        if drift:
            raise PipelineError(
                f"{len(drift)} installed packages differ from {LOCK.name}: " + "; ".join(drift)
            )
        print(f"every installed package of {LOCK.name} is at its locked version")


def _cmd_memory_budget(args: argparse.Namespace) -> None:
    import yaml

    from pipeline.models.budget import paper_budgets, table

    profile = yaml.safe_load(Path(args.profile).read_text())
    mem_mb = {rule: r["mem_mb"] for rule, r in profile["set-resources"].items() if "mem_mb" in r}
    print(table(paper_budgets(), mem_mb))


def _cmd_sync_envs(args: argparse.Namespace) -> None:
    from pipeline.environment import LOCK, env_file_text

    for path in args.env_files:
        text = env_file_text(path, LOCK)
        if Path(path).read_text() != text:
            Path(path).write_text(text)
            log.info("%s: pinned from %s", path, LOCK.name)


def _cmd_lag_scan(args: argparse.Namespace) -> None:
    from pipeline.analysis import lag_profile_from_stores

    stores = {Path(p).name.removesuffix(".zarr"): p for p in args.frames}
    scores = lag_profile_from_stores(args.preprocessed, args.selection, stores, args.lags)
    print("lag_volumes\tcv_correlation")
    for lag, score in zip(args.lags, scores, strict=True):
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


def _cmd_rerun_table(args: argparse.Namespace) -> None:
    from pipeline.rerun import markdown, rerun_table

    table = markdown(rerun_table(Path(args.snakefile).resolve()))
    _write_or_print(table, args.write, "rerun-table")


def _cmd_config_docs(args: argparse.Namespace) -> None:
    from pipeline.config import load_schema
    from pipeline.docs import config_markdown

    _write_or_print(config_markdown(load_schema()), args.write, "config-keys")


def _cmd_rulegraph(args: argparse.Namespace) -> None:
    from pipeline.docs import parse_rulegraph, rulegraph, rulegraph_markdown

    graph = parse_rulegraph(rulegraph(args.snakefile, tuple(args.configfile)))
    _write_or_print(rulegraph_markdown(graph), args.write, "rulegraph")


def _training_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by the reconstructor training subcommands."""
    p.add_argument("--output", required=True, help="model directory to write")
    p.add_argument("--settings", required=True, help="effective settings, JSON")
    p.add_argument("--checkpoints", required=True, help="checkpoint directory (resumed from)")
    p.add_argument(
        "--checkpoint-every", type=int, default=1, help="epochs between checkpoints (default 1)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--stop-after-epoch",
        type=int,
        help="stop after this epoch (exit status 3), leaving the checkpoint to resume from",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="generate the synthetic demo dataset (cc2017 layout)")
    p.add_argument("--root", required=True, help="dataset root to create")
    p.add_argument("--settings", required=True, help="JSON of pipeline.demo.DemoSettings fields")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("preprocess", help="trim, detrend and z-score the runs of one subject")
    p.add_argument("--subject", required=True)
    p.add_argument("--runs", nargs="+", required=True, help="CIFTI dtseries files")
    p.add_argument("--stimuli", nargs="+", required=True, help="stimulus mp4 files")
    p.add_argument("--output", required=True)
    p.add_argument("--tr-s", type=float, required=True)
    p.add_argument("--trailing-volumes", type=int, required=True)
    p.add_argument("--max-leading-volumes", type=int, required=True)
    p.add_argument("--detrend-order", type=int, required=True)
    p.add_argument(
        "--max-dropped-fraction",
        type=float,
        default=0.05,
        help="largest share of a run's vertices dropped as non-finite or constant",
    )
    p.add_argument(
        "--accept-tr-mismatch",
        type=str.lower,
        choices=["true", "false"],
        default="false",
        help="true: a CIFTI time step other than --tr-s is a warning, not an error",
    )
    p.add_argument("--threads", type=int, default=1, help="> 1: read runs in parallel")
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("select", help="reliability t-test with Bonferroni correction")
    p.add_argument("--preprocessed", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--train-segments", nargs="+", required=True)
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--alternative", choices=["two-sided", "greater"], default="two-sided")
    p.set_defaults(func=_cmd_select)

    p = sub.add_parser("align", help="hemodynamic shift and train/test samples")
    p.add_argument("--preprocessed", required=True)
    p.add_argument("--selection", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--train-segments", nargs="+", required=True)
    p.add_argument("--test-segments", nargs="+", required=True)
    p.add_argument("--shift-s", type=float, required=True)
    p.add_argument("--tr-s", type=float, required=True)
    p.set_defaults(func=_cmd_align)

    p = sub.add_parser("frames", help="extract clip frames from one stimulus video")
    p.add_argument("--video", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--tr-s", type=float, required=True)
    p.add_argument("--fps", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_cmd_frames)

    p = sub.add_parser("tiny-models", help="write the tiny preset (VAE fitted to the frames)")
    p.add_argument("--output", required=True)
    p.add_argument("--frames", nargs="+", required=True, help="frame stores to fit the VAE on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=600)
    p.set_defaults(func=_cmd_tiny_models)

    p = sub.add_parser(
        "tiny-classifiers", help="write the tiny classifiers (fitted to k-means of the frames)"
    )
    p.add_argument("--output", required=True)
    p.add_argument("--frames", nargs="+", required=True, help="training frame stores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--classes", type=int, default=8)
    p.set_defaults(func=_cmd_tiny_classifiers)

    p = sub.add_parser("download-models", help="fetch a preset's models from the hub (network)")
    p.add_argument("--preset", required=True)
    p.add_argument("--root", required=True)
    p.add_argument(
        "--set",
        choices=["encoders", "generation", "classifiers"],
        default="encoders",
        help="which models",
    )
    p.add_argument("--generator", help="keyframe generator whose roles to fetch (generation)")
    p.set_defaults(func=_cmd_download_models)

    p = sub.add_parser("cache", help="a feature cache: vae, clip-images, captions, clip-text")
    p.add_argument("kind", choices=["vae", "clip-images", "captions", "clip-text"])
    p.add_argument("--output", required=True)
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--frames", nargs="+", help="frame stores, in sample order")
    p.add_argument("--captions", help="captions store (clip-text)")
    p.add_argument("--candidates", nargs="+", type=int, help="keyframe candidate frame indices")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--min-new-tokens", type=int, default=3)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=_cmd_cache)

    p = sub.add_parser("train-perception", help="train a subject's Perception Reconstructor")
    p.add_argument("--aligned", required=True, help="the subject's aligned store")
    p.add_argument("--vae-cache", required=True, help="the VAE latents cache")
    _training_arguments(p)
    p.set_defaults(func=_cmd_train_perception)

    p = sub.add_parser("predict-perception", help="blurry videos of a subject's test clips")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--aligned", required=True)
    p.add_argument("--vae", required=True, help="VAE model directory (decodes the latents)")
    p.add_argument("--output", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=_cmd_predict_perception)

    p = sub.add_parser("train-semantic", help="train a subject's Semantic Reconstructor")
    p.add_argument("--aligned", required=True, help="the subject's aligned store")
    p.add_argument("--clip-cache", required=True, help="the CLIP image-token cache")
    p.add_argument("--text-cache", required=True, help="the CLIP caption-embedding cache")
    _training_arguments(p)
    p.set_defaults(func=_cmd_train_semantic)

    p = sub.add_parser("predict-semantic", help="fMRI and prior CLIP embeddings of test clips")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--aligned", required=True)
    p.add_argument("--clip-cache", required=True, help="the CLIP image-token cache (targets)")
    p.add_argument("--output", required=True)
    p.add_argument("--steps", type=int, default=20, help="prior sampling steps")
    p.add_argument("--guidance", type=float, default=1.0, help="prior guidance scale")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior's noise")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", help="autocast precision (float32: none)")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=_cmd_predict_semantic)

    p = sub.add_parser("tiny-generation-models", help="write the tiny preset's generation models")
    p.add_argument("--output", required=True)
    p.add_argument("--encoders", required=True, help="the tiny preset's directory (fitted VAE)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_tiny_generation_models)

    def generation_parser(name: str, help: str, settings: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--output", required=True)
        p.add_argument("--settings", required=True, help=f"JSON of the {settings}")
        p.add_argument("--device", default="auto")
        p.add_argument("--dtype", default="float32")
        return p

    p = generation_parser(
        "fit-keyframe-embedder",
        "ridge fMRI -> a diffusers unCLIP generator's image embedding",
        "effective keyframes settings",
    )
    p.add_argument("--aligned", required=True)
    p.add_argument("--frames-dir", required=True, help="directory of the frame stores")
    p.add_argument("--generation", required=True, help="the preset's generation model directory")
    p.set_defaults(func=_cmd_fit_keyframe_embedder)

    p = generation_parser(
        "generate-keyframes", "one keyframe per test clip", "effective keyframes settings"
    )
    p.add_argument("--blurry", required=True, help="the subject's blurry videos")
    p.add_argument("--generation", required=True, help="the preset's generation model directory")
    p.add_argument("--aligned", help="aligned store (generators conditioned on image embeddings)")
    p.add_argument("--embedder", help="fitted keyframe embedder directory")
    p.add_argument("--semantic", help="SR embeddings store (generators on prior tokens)")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=_cmd_generate_keyframes)

    p = generation_parser(
        "caption-keyframes", "BLIP-2 captions of the generated keyframes", "captions section"
    )
    p.add_argument("--keyframes", required=True)
    p.add_argument("--captioner", required=True, help="BLIP-2 model directory")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=_cmd_caption_keyframes)

    p = generation_parser(
        "synthesize-videos", "AnimateDiff + SparseCtrl videos", "effective video settings"
    )
    p.add_argument("--blurry", required=True)
    p.add_argument("--keyframes", required=True)
    p.add_argument("--captions", required=True, help="keyframe captions store")
    p.add_argument("--generation", required=True, help="the preset's generation model directory")
    p.add_argument("--batch-size", type=int, default=4)
    p.set_defaults(func=_cmd_synthesize_videos)

    p = generation_parser(
        "train-fusion", "the multi-fMRI fusion pair classifier", "fusion training settings"
    )
    p.add_argument("--clip-images", required=True, help="CLIP image cache store")
    p.add_argument("--frames", nargs="+", required=True, help="training frame stores")
    p.add_argument("--classifier", required=True, help="frame classifier directory")
    p.set_defaults(func=_cmd_train_fusion)

    p = sub.add_parser("fuse-videos", help="chain neighbouring test clips into longer videos")
    p.add_argument("--videos", required=True, help="the subject's videos directory")
    p.add_argument("--blurry", required=True)
    p.add_argument("--clip", required=True, help="OpenCLIP model directory")
    p.add_argument("--generation", required=True, help="the preset's generation model directory")
    p.add_argument("--fusion", required=True, help="the trained fusion classifier")
    p.add_argument("--output", required=True)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--max-chain", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.set_defaults(func=_cmd_fuse_videos)

    def evaluation_parser(name: str, help: str) -> argparse.ArgumentParser:
        p = generation_parser(name, help, "evaluation settings")
        p.add_argument("--frames-dir", required=True, help="directory of the frame stores")
        p.add_argument("--classifiers", required=True, help="the preset's classifier directory")
        p.add_argument(
            "--clip", required=True, help="the preset's OpenCLIP directory (neuroclips CLIP-pcc)"
        )
        p.add_argument("--batch-size", type=int, default=32)
        return p

    p = evaluation_parser("evaluate-videos", "the field's metrics of a videos directory")
    p.add_argument("--videos", required=True, help="synthesize_videos or fuse_videos output")
    p.set_defaults(func=_cmd_evaluate_videos)

    p = evaluation_parser("evaluate-external", "the same metrics of a folder made elsewhere")
    p.add_argument("--folder", required=True, help="one GIF or video per clip")
    p.add_argument("--layout", choices=("side_by_side", "separate"), default="side_by_side")
    p.add_argument("--panels", type=int, default=2, help="side_by_side: panels per file")
    p.add_argument("--gt-panel", type=int, default=0)
    p.add_argument("--pred-panel", type=int, default=1)
    p.add_argument(
        "--border", default="auto", help="grid border around the panels (pixels) or auto"
    )
    p.set_defaults(func=_cmd_evaluate_external)

    p = sub.add_parser("evaluate-retrieval", help="keyframe and fMRI retrieval top-1 among 300")
    p.add_argument("--semantic", required=True, help="predict_semantic's embeddings store")
    p.add_argument("--clip-images", required=True, help="CLIP image cache store")
    p.add_argument("--output", required=True)
    p.add_argument("--settings", required=True, help="JSON of the retrieval settings")
    p.set_defaults(func=_cmd_evaluate_retrieval)

    p = sub.add_parser("evaluation-tables", help="Table 1, Table 2 and retrieval across subjects")
    p.add_argument("--results", required=True, help="the results directory")
    p.add_argument("--output", required=True)
    p.add_argument("--subjects", nargs="+", required=True)
    p.add_argument("--ablation-subjects", nargs="*", default=[])
    p.add_argument("--ablations", nargs="*", default=[])
    p.add_argument("--external", nargs="*", default=[], help="names of external folders")
    p.add_argument(
        "--settings", required=True, help="JSON: protocols, n_way, bootstrap_resamples, seed"
    )
    p.set_defaults(func=_cmd_evaluation_tables)

    p = sub.add_parser("report", help="the self-contained HTML report of a run")
    p.add_argument("--output", required=True, help="the HTML file")
    p.add_argument("--methods", help="the methods text (default: methods.md beside --output)")
    p.add_argument("--figures", help="directory for the figures as separate files")
    p.add_argument("--results", required=True, help="the results directory")
    p.add_argument("--tables", required=True, help="evaluation_tables output")
    p.add_argument("--subjects", nargs="+", required=True)
    p.add_argument("--fusion", required=True, help="the fusion classifier directory")
    p.add_argument("--frames-dir", required=True, help="directory of the frame stores")
    p.add_argument("--config", required=True, help="the run's configuration as JSON")
    p.add_argument("--clips", type=int, default=6, help="test clips shown as animated grids")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("inspect", help="tree, shapes, dtypes, chunks and attributes of a store")
    p.add_argument("path")
    p.add_argument("--provenance", action="store_true", help="show the full provenance record")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("lag-scan", help="cross-validated encoding accuracy per BOLD delay")
    p.add_argument("--preprocessed", required=True)
    p.add_argument("--selection", required=True)
    p.add_argument("--frames", nargs="+", required=True, help="frame stores, one per segment")
    p.add_argument("--lags", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.set_defaults(func=_cmd_lag_scan)

    p = sub.add_parser("versions", help="installed and locked versions of the key packages")
    p.add_argument(
        "--check",
        action="store_true",
        help="fail when an installed package differs from requirements.lock",
    )
    p.set_defaults(func=_cmd_versions)

    p = sub.add_parser(
        "memory-budget", help="host and GPU memory of the model stages at paper size (estimates)"
    )
    p.add_argument("--profile", default="profiles/slurm/config.yaml")
    p.set_defaults(func=_cmd_memory_budget)

    p = sub.add_parser("sync-envs", help="pin the conda env files from requirements.lock")
    p.add_argument(
        "env_files",
        nargs="*",
        default=sorted(str(f) for f in (Path(__file__).parents[1] / "envs").glob("*.yaml")),
    )
    p.set_defaults(func=_cmd_sync_envs)

    p = sub.add_parser(
        "verify",
        help="read every chunk of the stores and check them against their records and "
        "the current config; one line per store",
    )
    p.add_argument("paths", nargs="*", help="stores (default: all under results/, resources/)")
    p.add_argument("--directory", "-d", help="the workflow's working directory (default: here)")
    p.add_argument("--snakefile", default=str(Path(__file__).parents[1] / "Snakefile"))
    p.add_argument(
        "--configfile", nargs="*", default=[], help="config files of the run, as given to Snakemake"
    )
    p.add_argument(
        "--no-config", action="store_true", help="skip the comparison with the current config"
    )
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("rerun-table", help="config key -> rules that rerun, from the workflow")
    p.add_argument("--snakefile", default="Snakefile")
    p.add_argument(
        "--write", metavar="PAGE", help="write the table between the page's markers (else print)"
    )
    p.set_defaults(func=_cmd_rerun_table)

    p = sub.add_parser("config-docs", help="every config key, from the schema, as Markdown")
    p.add_argument(
        "--write", metavar="PAGE", help="write the keys between the page's markers (else print)"
    )
    p.set_defaults(func=_cmd_config_docs)

    p = sub.add_parser("rulegraph", help="the rule graph as a Mermaid flowchart")
    p.add_argument("--snakefile", default="Snakefile")
    p.add_argument(
        "--configfile", nargs="*", default=[], help="config files merged over the default"
    )
    p.add_argument(
        "--write", metavar="PAGE", help="write the graph between the page's markers (else print)"
    )
    p.set_defaults(func=_cmd_rulegraph)
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
