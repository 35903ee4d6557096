"""The registries are the one place of each extension point: the schema's enums, the model
presets, the generator classes, the rules and the command line agree with them."""

from __future__ import annotations

import importlib
import re
import shlex
from importlib import resources

import pytest
import yaml

from pipeline import cli
from pipeline.config import REGISTRY_KEY, default_config, load_schema, registries
from pipeline.evaluation.protocols import PROTOCOLS
from pipeline.generation.registry import CONDITIONING_INPUTS, KEYFRAME_GENERATORS
from pipeline.models import presets
from tests.conftest import snakemake


def _nodes(node, path=""):
    """Every (dotted path, schema node) of the schema."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _nodes(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _nodes(value, f"{path}[{i}]")


def _raw_schema() -> dict:
    text = resources.files("pipeline").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def test_every_registry_enum_is_filled_from_its_registry():
    names = registries()
    marked = {p: n for p, n in _nodes(load_schema()) if REGISTRY_KEY in n}
    assert {n[REGISTRY_KEY] for n in marked.values()} == set(names)
    for path, node in marked.items():
        assert [e for e in node["enum"] if e is not None] == names[node[REGISTRY_KEY]], path


def test_no_schema_enum_repeats_a_registry_by_hand():
    """An enum written out in the schema that lists a registry's entries would drift."""
    for path, node in _nodes(_raw_schema()):
        if "enum" in node:
            assert REGISTRY_KEY not in node, path
            for name, entries in registries().items():
                assert not set(entries) <= set(node["enum"]), (path, name)


def test_a_registry_name_is_validated_and_others_are_refused():
    from pipeline.config import ConfigError, validate_config

    for name in KEYFRAME_GENERATORS:
        entry = KEYFRAME_GENERATORS[name]
        config = validate_config(
            {"models": {"preset": entry.presets[0]}, "keyframes": {"generator": name}}
        )
        assert config["keyframes"]["generator"] == name
    with pytest.raises(ConfigError, match="keyframes.generator"):
        validate_config({"keyframes": {"generator": "dalle"}})
    with pytest.raises(ConfigError, match="models.preset"):
        validate_config({"models": {"preset": "huge"}})


def test_protocol_defaults_and_names_are_registered():
    assert all(PROTOCOLS[name].name == name for name in PROTOCOLS)
    assert set(default_config()["evaluation"]["protocols"]) <= set(PROTOCOLS)


# -- keyframe generators ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(KEYFRAME_GENERATORS))
def test_a_generator_entry_matches_its_class_and_presets(name):
    entry = KEYFRAME_GENERATORS[name]
    module, attribute = entry.factory.split(":")
    factory = getattr(importlib.import_module(module), attribute)
    assert factory.conditioning == entry.conditioning
    assert entry.conditioning in CONDITIONING_INPUTS
    for preset in entry.presets:
        assert entry.role in presets.GENERATION[preset], (name, preset)


def test_every_preset_default_generator_is_one_of_its_own():
    for preset, defaults in presets.GENERATION_DEFAULTS.items():
        generator = defaults["keyframes"]["generator"]
        assert preset in KEYFRAME_GENERATORS[generator].presets, preset


def test_the_keyframe_stage_has_an_option_for_every_conditioning_input():
    parser = cli._parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["generate-keyframes"]
    options = {o for a in sub._actions for o in a.option_strings}
    for inputs in CONDITIONING_INPUTS.values():
        assert {f"--{k}" for k in inputs} <= options, inputs


@pytest.mark.parametrize(
    "preset,generator", [(p, g) for g, e in KEYFRAME_GENERATORS.items() for p in e.presets]
)
def test_the_rule_gives_each_generator_its_registered_inputs(tmp_path, preset, generator):
    """The planned generate-keyframes command names exactly the entry's inputs."""
    overlay = {"models": {"preset": preset}, "keyframes": {"generator": generator}}
    target = "results/subject1/keyframes/keyframes.zarr"
    result = snakemake(tmp_path, "-n", "-p", target, overlay=overlay)
    command = next(
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "pipeline generate-keyframes" in line
    )
    words = shlex.split(command.split("2>&1")[0].split(">")[0])
    given = {w[2:] for w in words if w.startswith("--")}
    conditioning = {k for ks in CONDITIONING_INPUTS.values() for k in ks}
    assert given & conditioning == set(KEYFRAME_GENERATORS[generator].inputs), command
    assert re.search(rf'"generator": "{generator}"', command)


# -- model presets -------------------------------------------------------------------


def test_every_per_preset_table_covers_the_same_presets():
    names = set(presets.PRESETS)
    tables = {
        "GENERATION": presets.GENERATION,
        "CLASSIFIERS": presets.CLASSIFIERS,
        "GENERATION_DEFAULTS": presets.GENERATION_DEFAULTS,
        "PRECISION": presets.PRECISION,
        "RECONSTRUCTORS": presets.RECONSTRUCTORS,
    }
    for table_name, table in tables.items():
        assert set(table) == names, table_name
    # named classifiers have fixed class counts; the tiny ones come from the config
    assert set(presets.CLASSIFIER_CLASSES) <= names
    for preset, families in presets.PRECISION.items():
        assert set(families) == set(presets.PRECISION_FAMILIES), preset
