"""The dataset seam: formats behind one protocol, plans that round-trip, no format named
outside ``pipeline/datasets``."""

from __future__ import annotations

import ast
import json
import re

import pytest

from pipeline.datasets import FORMATS, Dataset, dataset_format, discover
from pipeline.datasets.base import Presentation, Run, Segment
from pipeline.errors import ConfigError, DataError
from tests.conftest import REPO, small_config


def test_the_plan_round_trips_through_json(demo_root):
    dataset = discover(small_config()["dataset"], demo_root)
    plan = json.loads(json.dumps(dataset.plan("subject1")))
    segments = [Segment.from_dict(s) for s in plan["segments"]]
    runs = [Run.from_dict(r) for r in plan["runs"]]
    assert segments == list(dataset.segments.values())
    assert runs == dataset.runs["subject1"]
    assert plan["format"] == dataset.format == "cc2017"


def test_a_dataset_answers_in_segment_order():
    segments = {
        name: Segment(name, role, f"{movie}.mp4", start, 10.0)
        for name, role, movie, start in (
            ("a", "train", "m1", 0.0),
            ("b", "train", "m1", 20.0),
            ("rep", "test", "m1", 40.0),
        )
    }
    runs = {
        "s1": [
            Run("r1.nii", (Presentation("a", 1, 0.0), Presentation("rep", 1, 40.0))),
            Run("r2.nii", (Presentation("b", 1, 20.0), Presentation("rep", 2, 40.0))),
        ]
    }
    dataset = Dataset("x", ".", segments, runs)
    assert dataset.train_segments == ["a", "b"] and dataset.test_segments == ["rep"]
    assert dataset.repetitions("s1", "rep") == [1, 2]
    assert dataset.stimulus_files() == ["m1.mp4"]
    assert dataset.run_files("s1") == ["r1.nii", "r2.nii"]


def test_an_unknown_format_is_a_config_error_naming_the_known_ones():
    with pytest.raises(ConfigError, match=r"dataset\.format.*'nope'.*cc2017"):
        dataset_format("nope")


def test_every_format_has_a_subject_pattern_and_a_tr():
    for name, fmt in FORMATS.items():
        assert fmt.name == name
        assert isinstance(fmt.subject_pattern, re.Pattern) and fmt.tr_s > 0


def test_no_module_outside_the_datasets_package_imports_a_format():
    """Stages, rules and benchmarks reach a format through pipeline.datasets only."""
    formats = {f"pipeline.datasets.{module}" for module in ("cc2017", *FORMATS)}
    files = [
        *(REPO / "pipeline").rglob("*.py"),
        *(REPO / "rules").glob("*.smk"),
        *(REPO / "bench").glob("*.py"),
    ]
    offenders = []
    for path in files:
        if (REPO / "pipeline" / "datasets") in path.parents:
            continue
        text = path.read_text()
        if path.suffix == ".smk":  # the import lines of a rule file parse as Python
            text = "\n".join(
                line for line in text.splitlines() if line.startswith(("from ", "import "))
            )
        if _imported_modules_of_text(text) & formats:
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def _imported_modules_of_text(text: str) -> set[str]:
    tree = ast.parse(text)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_a_renamed_cc2017_subject_is_an_error_naming_the_folder(dataset_copy):
    base = dataset_copy / "video_fmri_dataset"
    (base / "subject1").rename(base / "Subject_1")
    settings = small_config()["dataset"]
    with pytest.raises(DataError, match=rf"{base}: no subject folders \(subjectN or sub-<label>\)"):
        discover(settings, dataset_copy)
    with pytest.raises(DataError, match=r"subject folder\(s\) not found: subject1"):
        discover(settings | {"subjects": ["subject1"]}, dataset_copy)
