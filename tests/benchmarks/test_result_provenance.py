"""Provenance of committed results (issue 12 item 8): Fig. 5's report says which commits
trained its cells; fast_path's accuracy rows say which run trained them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fast_path  # noqa: E402
import ivan_fig5  # noqa: E402

FIG5 = ROOT / "benchmarks" / "results" / "ivan_fig5"


def test_fig5_trained_at_counts_commits_and_names_the_unrecorded_cells():
    cells = [{"commit": "abc1234", "dirty": False}, {"commit": "abc1234", "dirty": True},
             {"commit": "abc1234", "dirty": False}, {}]
    lines = ivan_fig5.trained_at(cells, "ran at deadbee")
    assert lines == ["- `abc1234`: 2 cell(s)", "- `abc1234 + uncommitted changes`: 1 cell(s)",
                     "- 1 cell(s) without a recorded commit: ran at deadbee"]
    assert ivan_fig5.trained_at([{}])[-1].endswith("not recorded")


def test_committed_fig5_report_names_both_training_commits():
    md = (FIG5 / "results.md").read_text()
    cells = list((FIG5 / "cells").glob("w*.json"))
    assert len(cells) == 108
    assert f"{len(cells)} cell(s) without a recorded commit" in md
    assert "`84ce372`" in md and "`2a05ad1`" in md


def test_fast_path_accuracy_rows_say_which_run_trained_them():
    d = json.loads((ROOT / "benchmarks" / "results" / "fast_path" / "results.json").read_text())
    assert d["accuracy"] and all(r["trained_at"] == "2a5e876" for r in d["accuracy"])
    md = fast_path.markdown(d["speedups"], d["accuracy"], d["meta"])
    assert md.count("2a5e876 (reused)") == len(d["accuracy"])
    fresh = [{**d["accuracy"][0], "reused": False, "trained_at": None}]
    assert "| not recorded |" in fast_path.markdown([], fresh, d["meta"])


def test_zoo_float_model_history_follows_the_init_chain_and_retimes_are_listed():
    import zoo_table2

    lines = zoo_table2.float_history(ROOT / "benchmarks" / "results" / "zoo_table2" / "float_aug")
    assert len(lines) == 2
    assert lines[0].startswith("`benchmarks/results/zoo_table2/float_aug`: ")
    assert "lowbit train --model resnet20" in lines[0] and "121cf52" in lines[0]
    assert lines[1].startswith("`benchmarks/results/zoo_table2/float`: ") and "f14fbf2" in lines[1]
    assert zoo_table2.float_history(None) == []
    rows = [{"step_commit": "abc1234", "step_command": "python benchmarks/zoo_table2.py -x"},
            {"step_commit": "abc1234", "step_command": "python benchmarks/zoo_table2.py -x"},
            {"step_commit": "def5678"}, {}]
    assert zoo_table2._retimed_lines(rows) == [
        "- step ratios re-timed at `abc1234` by: `python benchmarks/zoo_table2.py -x`",
        "- step ratios re-timed at `def5678` by: `not recorded`"]
