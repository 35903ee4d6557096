"""Configuration schema: defaults, unknown keys, types, ranges and cross-key checks."""

import pytest
import yaml

from pipeline.config import ConfigError, default_config, load_schema, validate_config
from tests.conftest import REPO, snakemake


def _walk(schema, path=""):
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}{name}", sub
        yield from _walk(sub, f"{path}{name}.")


def test_every_key_is_typed_described_and_defaulted():
    for key, sub in _walk(load_schema()):
        assert "type" in sub, key
        assert sub.get("description"), key
        assert "default" in sub, key


def test_config_yaml_is_valid_and_matches_schema_defaults():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert validate_config(config) == default_config()


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"alignment": {"shift": 4}}, "alignment.shift"),
        ({"bogus": 1}, "bogus"),
        ({"alignment": {"shift_s": "four"}}, "alignment.shift_s"),
        ({"selection": {"alpha": 1.5}}, "selection.alpha"),
        ({"selection": {"alpha": 0}}, "selection.alpha"),
        ({"alignment": {"shift_s": -2}}, "alignment.shift_s"),
        ({"alignment": {"shift_s": 3}}, "alignment.shift_s"),
        ({"alignment": {"shift_s": 10}}, "alignment.shift_s"),
        ({"frames": {"fps": 4}}, "frames.fps"),
        ({"frames": {"fps": 7}}, "frames.fps"),
        ({"demo": {"scale": "huge"}}, "demo.scale"),
        ({"demo": {"luminance_grid": 200}}, "demo.luminance_grid"),
        (
            {
                "demo": {
                    "area_shares": {
                        "early": {"luminance": 1, "colour": 0, "objects": 0, "motion": 0},
                        "motion": {"luminance": 0, "colour": 0, "objects": 0, "motion": 0},
                        "object": {"luminance": 0, "colour": 0, "objects": 1, "motion": 0},
                    }
                }
            },
            "demo.area_shares.motion",
        ),
        ({"demo": {"object_speed": -1}}, "demo.object_speed"),
        ({"demo": {"snr": [3.0, 1.0]}}, "demo.snr"),
        ({"demo": {"grating_cycles": [2.0, 0.5]}}, "demo.grating_cycles"),
        ({"demo": {"grating_cycles": [0, 2.0]}}, "demo.grating_cycles.0"),
        ({"dataset": {"subjects": ["sub_01"]}}, "dataset.subjects"),  # sub-01 is valid
        ({"dataset": {"subjects": ["sub 01"]}}, "dataset.subjects.0"),
        ({"keyframes": {"generator": "sd21_unclip"}}, "keyframes.generator"),  # tiny preset
        (
            {"models": {"preset": "paper"}, "keyframes": {"generator": "tiny"}},
            "keyframes.generator",
        ),
        ({"keyframes": {"generator": "dalle"}}, "keyframes.generator"),
        ({"models": {"preset": "huge"}}, "models.preset"),
        ({"keyframes": {"strength": 0}}, "keyframes.strength"),
        ({"video": {"theta": 1.0}}, "video.theta"),
        ({"video": {"alpha_mode": "both"}}, "video.alpha_mode"),
        ({"video": {"size": 100}}, "video.size"),
        ({"fusion": {"label_top_k": 64}}, "fusion.label_top_k"),  # all 64 tiny classes
        ({"fusion": {"threshold": 1.5}}, "fusion.threshold"),
        ({"fusion": {"validation_fraction": 1.0}}, "fusion.validation_fraction"),
        # 50-way needs 52 classes; the tiny classifiers have models.tiny_classifier_classes
        ({"models": {"tiny_classifier_classes": 40}}, "evaluation.n_way"),
        ({"models": {"preset": "paper"}, "evaluation": {"n_way": [2, 399]}}, "evaluation.n_way"),
        ({"evaluation": {"n_way": [1]}}, "evaluation.n_way.0"),
        ({"evaluation": {"frame_sampling": "middle"}}, "evaluation.frame_sampling"),
        ({"video": {"n_frames": 8}}, "evaluation.frame_sampling"),  # neurons needs 12
        ({"evaluation": {"ablations": {"videos": {"use_blurry": False}}}}, "evaluation.ablations"),
        ({"evaluation": {"ablations": {"none": {}}}}, "evaluation.ablations.none"),
        ({"evaluation": {"ablations": {"x": {"theta": 0.5}}}}, "evaluation.ablations.x.theta"),
        # the ablations' protocols are some of the chosen ones, and one of them scores videos
        (
            {"evaluation": {"protocols": ["neuroclips"], "ablation_protocols": ["mindvideo"]}},
            "evaluation.ablation_protocols",
        ),
        ({"evaluation": {"ablation_protocols": ["mindeye3"]}}, "evaluation.ablation_protocols.0"),
        ({"evaluation": {"external": {"mv": {}}}}, "evaluation.external.mv"),
        (
            {"evaluation": {"external": {"mv": {"path": "x", "gt_panel": 2}}}},
            "evaluation.external.mv.gt_panel",
        ),
        (
            {"evaluation": {"external": {"mv": {"path": "x", "pred_panel": 0}}}},
            "evaluation.external.mv.pred_panel",
        ),
    ],
)
def test_bad_values_name_the_key(config, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        validate_config(config)


def test_defaults_are_filled_in_place():
    config = {"alignment": {"shift_s": 6.0}}
    validate_config(config)
    assert config["alignment"]["shift_s"] == 6.0
    assert config["dataset"]["trailing_volumes"] == 4
    assert config["frames"] == {"fps": 3, "size": 64}  # the tiny preset's


@pytest.mark.parametrize(("preset", "size"), [("tiny", 64), ("paper", 224), ("tiny", 96)])
def test_null_frame_size_takes_the_presets(preset, size):
    frames = {} if size in (64, 224) else {"size": size}
    config = validate_config({"models": {"preset": preset}, "frames": frames})
    assert config["frames"]["size"] == size


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        ({"alignment": {"shift_s": "four"}}, "alignment.shift_s"),
        ({"selection": {"alpah": 0.01}}, "selection.alpah"),
    ],
)
def test_snakemake_rejects_bad_config_at_dag_time(tmp_path, overlay, message):
    result = snakemake(tmp_path, "-n", overlay=overlay, check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("sections", "size", "steps"),
    [
        ({}, 64, 10),  # tiny: its own 64 px frames
        ({"frames": {"size": 224}}, 112, 10),  # half larger frames
        ({"frames": {"size": 200}}, 96, 10),  # rounded down to a multiple of 8
        ({"frames": {"size": 44}}, 40, 10),  # never above the frames, a multiple of 8
        ({"video": {"size": 64, "steps": 4}}, 64, 4),  # explicit values win
        ({"models": {"preset": "paper"}, "keyframes": {"generator": "sd21_unclip"}}, 256, 25),
    ],
)
def test_null_video_settings_take_the_preset_values(sections, size, steps):
    from pipeline.models.presets import generation_settings

    config = default_config()
    for key, value in sections.items():
        config[key] = config[key] | value
    video = generation_settings(validate_config(config), "video")
    assert (video["size"], video["steps"]) == (size, steps)


@pytest.mark.parametrize(
    ("preset", "overrides", "expected"),
    [
        ("tiny", {}, dict.fromkeys(("caches", "training", "keyframes", "videos"), "float32")),
        # the official code on an A100: fp16 caches, training and keyframes; fp32 AnimateDiff
        (
            "paper",
            {},
            {"caches": "float16", "training": "float16", "keyframes": "float16"}
            | {"videos": "float32", "evaluation": "float32"},
        ),
        ("paper", {"training": "bfloat16"}, {"training": "bfloat16", "caches": "float16"}),
    ],
)
def test_null_precision_takes_the_preset_values(preset, overrides, expected):
    from pipeline.models.presets import precision_settings, reconstructor_settings

    config = default_config()
    config["models"]["preset"] = preset
    config["precision"] |= overrides
    config = validate_config(config)
    resolved = precision_settings(config)
    assert {k: resolved[k] for k in expected} == expected
    for name in ("perception", "semantic"):
        assert reconstructor_settings(config, name)["precision"] == resolved["training"]


def test_every_rule_with_a_precision_reads_its_own_family():
    """A rule passing --dtype takes it from the family that lists it, and only from it."""
    import re

    from pipeline.models.presets import PRECISION_FAMILIES

    family_of = {rule: f for f, rules in PRECISION_FAMILIES.items() for rule in rules}
    # the reconstructors' training reads it from its settings (reconstructor_json)
    from_settings = {"train_perception", "train_semantic"}
    seen = set()
    for path in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"(?m)^(?=rule )", path.read_text())[1:]:
            rule = re.match(r"rule (\w+):", block).group(1)
            if "--dtype" not in block:
                assert rule not in family_of or rule in from_settings, rule
                continue
            seen.add(rule)
            family = family_of[rule]
            assert f'precision=precision("{family}")' in block, rule
            assert re.findall(r"params\.precision\[(\w+)\]", block) == [family], rule
    assert set(family_of) - seen == from_settings


def _merged(*files):
    """config.yaml with each file laid over it key by key, as Snakemake's --configfile."""
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for path in files:
        update_config(config, yaml.safe_load((REPO / path).read_text()))
    return validate_config(config)


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_the_two_reproductions_and_the_documented_table_of_their_differences():
    import re

    official, paper = (dict(_leaves(_merged(f"configs/{n}.yaml"))) for n in ("official", "paper"))
    assert official["models.preset"] == paper["models.preset"] == "paper"
    differ = {k for k in official if official[k] != paper.get(k)}
    page = (REPO / "docs/reproduction.md").read_text()
    section = page[page.index("\n## Two reproductions") + 1 :]
    section = section[: section.index("\n## ")]
    listed = set(re.findall(r"(?m)^\| `([a-z_.]+)` \|", section))
    assert listed == differ
    # the switches they set are in effect: the paper's alpha guidance, the official one's
    assert (official["video.alpha_mode"], paper["video.alpha_mode"]) == ("official", "paper")
    assert paper["evaluation.ablations.no_keyframe.uncaptioned_prompt"] == "a smooth video"


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [("cc2017", ["subject1", "sub-01"], "100610"), ("hcp7t_movie", ["100610"], "subject1")],
)
def test_subjects_follow_the_formats_own_pattern(fmt, good, bad):
    """One subject pattern per format: the one its discovery uses."""
    from pipeline.datasets import dataset_format

    pattern = dataset_format(fmt).subject_pattern
    assert all(pattern.match(s) for s in good) and not pattern.match(bad)
    validate_config({"dataset": {"format": fmt, "tr_s": 1.0, "subjects": good}})
    with pytest.raises(ConfigError, match=rf"'dataset\.subjects': \['{bad}'\] are not {fmt}"):
        validate_config({"dataset": {"format": fmt, "tr_s": 1.0, "subjects": [bad]}})
