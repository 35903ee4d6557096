"""The documentation's key → rules table is the one generated from the workflow.

That the generated rows are what Snakemake plans on a completed workspace is checked
with each case of tests/test_workflow.py's rerun table."""

from __future__ import annotations

import pytest

from pipeline.docs import GENERATED, replace_in
from pipeline.rerun import MARKERS, markdown
from tests.conftest import REPO

PAGE = GENERATED["rerun-table"]


def test_the_documented_table_is_the_generated_one(rerun_table):
    page = (REPO / PAGE).read_text()
    assert replace_in(page, markdown(rerun_table), PAGE, MARKERS) == page, (
        f"{PAGE}'s rerun table is stale: run `python -m pipeline rerun-table --write {PAGE}`"
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
    with pytest.raises(ValueError, match="configuration.md"):
        replace_in("no markers here", "| a |", "configuration.md", MARKERS)
    start, end = MARKERS
    with pytest.raises(ValueError, match="configuration.md"):
        replace_in(f"{start}\n{end}\n{start}\n{end}", "| a |", "configuration.md", MARKERS)
    assert replace_in(f"x\n{start}\nold\n{end}\ny", "new", "f", MARKERS) == (
        f"x\n{start}\nnew\n{end}\ny"
    )
