"""Configuration: JSON-schema validation with defaults, and cross-key checks.

The schema (``pipeline/schemas/config.schema.yaml``) types, describes and
defaults every key. :func:`validate_config` fills the defaults in place and
raises :class:`ConfigError` naming the offending key, so the Snakefile can
validate at DAG time and the command line can validate the same way.
"""

from __future__ import annotations

import copy
import functools
import os
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from pipeline.errors import ConfigError

__all__ = [
    "DEMO_ROOT",
    "REGISTRY_KEY",
    "ConfigError",
    "default_config",
    "load_schema",
    "registries",
    "uses_demo",
    "validate_config",
]

#: Where the ``demo_dataset`` rule writes the synthetic dataset (relative to the workdir).
DEMO_ROOT = os.path.join("resources", "demo")


def load_schema() -> dict:
    """Return (a copy of) the configuration JSON schema shipped with the package.

    Returns
    -------
    dict
        ``pipeline/schemas/config.schema.yaml`` as a new deep copy, with the ``enum`` of
        every ``x-registry`` node filled from :func:`registries`.
    """
    return copy.deepcopy(_schema())


#: Schema key naming the registry a node's ``enum`` is taken from.
REGISTRY_KEY = "x-registry"


def registries() -> dict[str, list[str]]:
    """Every registry a schema enum derives from: name → its entries' names.

    Returns
    -------
    dict of str to list of str
        ``keyframe_generators`` (:data:`pipeline.generation.registry.KEYFRAME_GENERATORS`),
        ``model_presets`` (:data:`pipeline.models.presets.PRESETS`),
        ``evaluation_protocols`` (:data:`pipeline.evaluation.protocols.PROTOCOLS`),
        ``dataset_formats`` (:data:`pipeline.datasets.FORMATS`) and
        ``selection_methods`` (:data:`pipeline.selection.SELECTION_METHODS`).
    """
    from pipeline.datasets import FORMATS
    from pipeline.evaluation.protocols import PROTOCOLS
    from pipeline.generation.registry import KEYFRAME_GENERATORS
    from pipeline.models.presets import PRESETS
    from pipeline.selection import SELECTION_METHODS

    return {
        "keyframe_generators": list(KEYFRAME_GENERATORS),
        "model_presets": list(PRESETS),
        "evaluation_protocols": list(PROTOCOLS),
        "dataset_formats": list(FORMATS),
        "selection_methods": list(SELECTION_METHODS),
    }


def _fill_registry_enums(node: Any, names: dict[str, list[str]]) -> None:
    """Set the ``enum`` of every node marked ``x-registry`` (null too where its type allows)."""
    if isinstance(node, dict):
        if REGISTRY_KEY in node:
            types = node.get("type", [])
            nullable = "null" in (types if isinstance(types, list) else [types])
            node["enum"] = [*names[node[REGISTRY_KEY]], *([None] if nullable else [])]
        for value in node.values():
            _fill_registry_enums(value, names)
    elif isinstance(node, list):
        for value in node:
            _fill_registry_enums(value, names)


@functools.cache
def _schema() -> dict:
    text = resources.files("pipeline").joinpath("schemas/config.schema.yaml").read_text()
    schema = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    _fill_registry_enums(schema, registries())
    return schema


def _with_defaults(validator_class):
    """Extend a jsonschema validator so that it fills ``default`` values in place."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _key_name(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        prefix = f"{path}." if path else ""
        return ", ".join(f"{prefix}{u}" for u in unknown)
    return path or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return "unknown key (not in the configuration schema; check its spelling)"
    if error.validator == "type":
        return f"{error.instance!r} is not of type {error.validator_value!r}"
    return error.message


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate ``config`` against the schema, filling defaults in place.

    Parameters
    ----------
    config : dict
        The configuration as loaded from YAML (Snakemake's ``config``).

    Returns
    -------
    dict
        The same object, with every default filled in, and ``frames.size`` resolved
        from the preset when null.

    Raises
    ------
    ConfigError
        Naming the key and the problem, for unknown keys, wrong types,
        out-of-range values and inconsistent combinations.
    """
    validator = _Validator(_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  config key '{_key_name(e)}': {_describe(e)}" for e in errors]
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))
    if config["frames"]["size"] is None:
        from pipeline.models.presets import FRAME_SIZES

        config["frames"]["size"] = FRAME_SIZES[config["models"]["preset"]]
    _check_consistency(config)
    return config


def _check_consistency(config: dict[str, Any]) -> None:
    """Checks that involve more than one key (the schema checks single keys)."""
    from pipeline.datasets import dataset_format

    fmt = dataset_format(config["dataset"]["format"])
    foreign = [s for s in config["dataset"]["subjects"] if not fmt.subject_pattern.match(s)]
    if foreign:
        raise ConfigError(
            f"config key 'dataset.subjects': {foreign} are not {fmt.name} subject names "
            f"(pattern {fmt.subject_pattern.pattern})"
        )
    tr = Fraction(str(config["dataset"]["tr_s"]))
    shift = Fraction(str(config["alignment"]["shift_s"]))
    if (shift / tr).denominator != 1:
        raise ConfigError(
            f"config key 'alignment.shift_s': {float(shift)} s is not a whole number of "
            f"TRs (dataset.tr_s = {float(tr)} s)"
        )
    if shift / tr > config["dataset"]["trailing_volumes"]:
        raise ConfigError(
            f"config key 'alignment.shift_s': a shift of {float(shift)} s needs "
            f"{int(shift / tr)} trailing volumes but dataset.trailing_volumes is "
            f"{config['dataset']['trailing_volumes']}; the last clips would lose their response"
        )
    clip = Fraction(str(config["alignment"]["clip_s"]))
    if (clip / tr).denominator != 1:
        raise ConfigError(
            f"config key 'alignment.clip_s': {float(clip)} s is not a whole number of TRs "
            f"(dataset.tr_s = {float(tr)} s)"
        )
    if (clip * config["frames"]["fps"]).denominator != 1:
        raise ConfigError(
            f"config key 'frames.fps': {config['frames']['fps']} frames/s does not give a whole "
            f"number of frames per clip of {float(clip)} s (alignment.clip_s)"
        )
    per_clip = clip * config["frames"]["fps"]
    too_late = [k for k in config["keyframes"]["candidates"] if k >= per_clip]
    if too_late:
        raise ConfigError(
            f"config key 'keyframes.candidates': frame indices {too_late} do not exist in a clip "
            f"of {int(per_clip)} frames"
        )
    if config["captions"]["min_new_tokens"] > config["captions"]["max_new_tokens"]:
        raise ConfigError("config key 'captions.min_new_tokens': exceeds captions.max_new_tokens")
    from pipeline.models.presets import reconstructor_settings

    for name in ("perception", "semantic"):
        try:
            reconstructor_settings(config, name)
        except ValueError as exc:
            raise ConfigError(f"config key '{name}.architecture': {exc}") from None
    _check_generation(config)
    demo = config["demo"]
    if (Fraction(str(demo["segment_duration_s"])) / clip).denominator != 1:
        raise ConfigError(
            f"config key 'demo.segment_duration_s': {demo['segment_duration_s']} s is not a "
            f"whole number of clips (alignment.clip_s = {float(clip)} s)"
        )
    for key in ("snr", "grating_cycles"):
        low, high = demo[key]
        if low > high:
            raise ConfigError(f"config key 'demo.{key}': low {low} exceeds high {high}")
    low, high = config["interpretation"]["colour_range"]
    if low >= high:
        raise ConfigError(
            f"config key 'interpretation.colour_range': low {low} is not below high {high}"
        )
    if demo["luminance_grid"] > demo["frame_size"]:
        raise ConfigError(
            f"config key 'demo.luminance_grid': {demo['luminance_grid']} cells a side exceed "
            f"the frame size demo.frame_size = {demo['frame_size']}"
        )
    for group, shares in (demo["area_shares"] or {}).items():
        if not any(shares.values()):
            raise ConfigError(
                f"config key 'demo.area_shares.{group}': every share is 0, so no feature "
                "drives the responses of its areas"
            )
    if uses_demo(config) and fmt.demo_layout == "movies":
        rest = Fraction(str(demo["rest_s"]))
        if (rest / tr).denominator != 1 or rest < config["dataset"]["trailing_volumes"] * tr:
            raise ConfigError(
                f"config key 'demo.rest_s': {demo['rest_s']} s must be a whole number of TRs "
                f"and hold the dataset.trailing_volumes = {config['dataset']['trailing_volumes']} "
                "volumes that follow every clip"
            )
        if Path(config["dataset"]["hcp7t_movie"]["stimuli"]).is_absolute():
            raise ConfigError(
                "config key 'dataset.hcp7t_movie.stimuli': the demo writes its movies inside "
                "dataset.root; give a relative folder"
            )
    if uses_demo(config) and demo["fps"] % config["frames"]["fps"] != 0:
        raise ConfigError(
            f"config key 'frames.fps': {config['frames']['fps']} does not divide the demo "
            f"stimulus rate demo.fps = {demo['fps']}"
        )
    _check_evaluation(config, int(per_clip))


def _check_generation(config: dict[str, Any]) -> None:
    from pipeline.generation.registry import keyframe_generator
    from pipeline.models.presets import GENERATION, generation_settings

    preset = config["models"]["preset"]
    generator = generation_settings(config, "keyframes")["generator"]
    entry = keyframe_generator(generator)
    if preset not in entry.presets or entry.role not in GENERATION[preset]:
        raise ConfigError(
            f"config key 'keyframes.generator': {generator!r} is not available in the "
            f"{preset!r} model preset (models.preset)"
        )
    classes = config["models"]["tiny_classifier_classes"]
    if preset == "tiny" and config["fusion"]["label_top_k"] >= classes:
        raise ConfigError(
            f"config key 'fusion.label_top_k': {config['fusion']['label_top_k']} is not below the "
            f"tiny frame classifier's {classes} classes (models.tiny_classifier_classes); every "
            "pair would be labelled the same"
        )


def _check_evaluation(config: dict[str, Any], frames_per_clip: int) -> None:
    from pipeline.models.presets import CLASSIFIER_CLASSES

    evaluation = config["evaluation"]
    preset = config["models"]["preset"]
    classes = CLASSIFIER_CLASSES.get(preset) or {
        role: config["models"]["tiny_classifier_classes"] for role in ("frame", "video")
    }
    fewest = min(classes.values())
    too_many = [n for n in evaluation["n_way"] if n + 2 > fewest]
    if too_many:
        source = (
            "models.tiny_classifier_classes"
            if preset == "tiny"
            else f"the {preset!r} preset's classifiers"
        )
        raise ConfigError(
            f"config key 'evaluation.n_way': {too_many} needs a ground-truth set of 3 plus N - 1 "
            f"distractors, more than the {fewest} classes of {source}"
        )
    n_frames = config["video"]["n_frames"]
    if evaluation["frame_sampling"] == "neurons" and n_frames < 2 * frames_per_clip:
        raise ConfigError(
            f"config key 'evaluation.frame_sampling': 'neurons' takes every 2nd of the last "
            f"{2 * frames_per_clip} generated frames (twice the {frames_per_clip} frames per "
            f"clip of frames.fps = {config['frames']['fps']}), but video.n_frames is "
            f"{n_frames}; lower frames.fps (it must also divide the stimulus frame rate), "
            "raise video.n_frames or choose evaluation.frame_sampling: uniform"
        )
    ablations = {k for k, v in evaluation["ablations"].items() if v is not None}
    reserved = {"videos", "fused", "retrieval"} & ablations
    if reserved:
        raise ConfigError(
            f"config key 'evaluation.ablations': {sorted(reserved)} name other evaluations "
            "(results/{subject}/evaluation/...); choose another name"
        )
    chosen = evaluation["ablation_protocols"] or []
    outside = [name for name in chosen if name not in evaluation["protocols"]]
    if outside:
        raise ConfigError(
            f"config key 'evaluation.ablation_protocols': {outside} are not among "
            f"evaluation.protocols {evaluation['protocols']}"
        )
    from pipeline.evaluation.protocols import protocols

    if chosen and not any(p.video_metrics(evaluation["n_way"]) for p in protocols(chosen)):
        raise ConfigError(
            f"config key 'evaluation.ablation_protocols': none of {chosen} scores videos"
        )
    for name, folder in evaluation["external"].items():
        panels = folder["panels"]
        for key in ("gt_panel", "pred_panel"):
            if folder[key] >= panels:
                raise ConfigError(
                    f"config key 'evaluation.external.{name}.{key}': panel {folder[key]} does "
                    f"not exist among {panels} panels"
                )
        if folder["gt_panel"] == folder["pred_panel"]:
            raise ConfigError(
                f"config key 'evaluation.external.{name}.pred_panel': same panel as gt_panel"
            )


def uses_demo(config: dict[str, Any]) -> bool:
    """True when ``dataset.root`` is where the demo rule writes the synthetic dataset.

    Parameters
    ----------
    config : dict
        A configuration with ``dataset.root``.

    Returns
    -------
    bool
        Whether ``dataset.root`` normalises to :data:`DEMO_ROOT`.
    """
    return os.path.normpath(config["dataset"]["root"]) == DEMO_ROOT


def default_config() -> dict[str, Any]:
    """Return the configuration with every key at its schema default.

    Returns
    -------
    dict
        A new configuration, validated by :func:`validate_config`.
    """
    return validate_config({})
