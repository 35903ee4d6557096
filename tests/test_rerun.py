"""The README's key → rules table is the one generated from the workflow.

That the generated rows are what Snakemake plans on a completed workspace is checked
with each case of tests/test_workflow.py's rerun table."""

from __future__ import annotations

import pytest

from pipeline.rerun import MARKERS, markdown, replace_in
from tests.conftest import REPO


def test_readme_table_is_the_generated_one(rerun_table):
    readme = (REPO / "README.md").read_text()
    assert replace_in(readme, markdown(rerun_table), "README.md") == readme, (
        "README.md's rerun table is stale: run `python -m pipeline rerun-table --readme README.md`"
    )


def test_execution_settings_rerun_nothing_and_results_rerun_the_report(rerun_table):
    table = rerun_table
    for key in ("models.device", "models.batch_size", "video.batch_size"):
        assert table[key] == []
    reruns = {key: rules for key, rules in table.items() if rules}
    assert all(rules[-1] == "report" for rules in reruns.values())
    # an upstream change reruns a superset of what a downstream one does
    assert set(table["alignment.shift_s"]) < set(table["selection.alpha"])
    assert set(table["selection.alpha"]) < set(table["preprocess.detrend_order"])


def test_replace_in_needs_exactly_one_pair_of_markers():
    with pytest.raises(ValueError, match="README.md"):
        replace_in("no markers here", "| a |", "README.md")
    start, end = MARKERS
    assert replace_in(f"x\n{start}\nold\n{end}\ny", "new", "f") == f"x\n{start}\nnew\n{end}\ny"
