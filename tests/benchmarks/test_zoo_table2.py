"""benchmarks/zoo_table2.py: seeds, provenance and the report over old and new cell JSONs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import zoo_table2 as zt  # noqa: E402

CELLS = ROOT / "benchmarks" / "results" / "zoo_table2" / "cells"


def test_seeds_label_each_cell_and_default_keeps_the_plain_label():
    plain = zt.cell_specs(["ttq"], [(2, 32)])
    assert [(s["label"], s["seed"]) for s in plain] == [("ttq_w2a32", 0)]
    seeded = zt.cell_specs(["ttq", "pact"], [(2, 32), (2, 2)], [1, 2])
    assert [s["label"] for s in seeded] == ["ttq_w2a32_s1", "ttq_w2a32_s2",
                                            "dorefa+pact_w2a2_s1", "dorefa+pact_w2a2_s2"]
    assert zt.cell_recipe(seeded[2]).act_options == (("alpha_from", "mse"),)
    assert zt.cell_recipe(seeded[2], pact_alpha_init=True).act_options == ()


def test_committed_cells_still_render_and_new_ones_show_mean_min_max_n():
    old = [json.loads(p.read_text()) for p in sorted(CELLS.glob("*.json"))]
    assert old and all("schedule" not in c for c in old)
    float_acc = 0.9
    new = [old[0] | {"label": f"{old[0]['label']}_s{k}", "seed": k, "test_accuracy": acc,
                     "schedule": {"name": "cosine", "stepped": "per batch", "total_steps": 391,
                                  "stages": 1}}
           for k, acc in ((1, 0.80), (2, 0.84), (3, 0.82))]
    rows = zt.add_drops([c for c in old if c["label"] != old[0]["label"]] + new, float_acc)
    meta = {"model": "resnet20", "dataset": "cifar10", "task_note": "t", "threads": 1,
            "jobs": 1, "float_epochs": 1, "float_accuracy": float_acc, "epochs": 1, "lr": 0.01,
            "command": "c", "commit": "k"}
    md = zt.markdown(rows, zt.check_targets(rows, float_acc), meta)
    assert "82.00 [80.00, 84.00] n=3 (-8.00)" in md
    assert "cosine stepped per batch over 391 steps: 3 cell(s)" in md
    assert f"stepped per epoch (cell predates per-batch stepping: flat lr within an epoch): " \
           f"{len(old) - 1} cell(s)" in md
    assert zt._acc(rows, new[0]["method"], new[0]["w_bits"], new[0]["a_bits"]) == \
        sum(c["test_accuracy"] for c in new) / 3


def test_cell_provenance_fields():
    import torch

    import lowbit

    task = {"command": "python benchmarks/zoo_table2.py --seeds 1", "commit": "abc1234",
            "dirty": True, "dirty_files": [" M x.py"]}
    p = zt.cell_provenance(task, 1)
    assert p == {"command": task["command"], "git_commit": "abc1234", "git_dirty": True,
                 "git_dirty_files": [" M x.py"], "seed": 1,
                 "versions": {"lowbit": lowbit.__version__, "torch": torch.__version__}}


def test_ttq_region_mean_cells_are_labelled_apart_and_take_the_former_defaults():
    specs = zt.ttq_region_mean(zt.cell_specs(["ttq", "twn"], [(2, 32)], [0]))
    ttq = [s for s in specs if s["weight"] == "ttq"]
    assert [s["label"] for s in ttq] == ["ttq-mean_w2a32_s0"] and ttq[0]["method"] == "ttq-mean"
    q = zt.cell_recipe(ttq[0])
    assert dict(q.weight_options) == {"init": "mean", "scale_grad": "mean"}
    assert [s["label"] for s in specs if s["weight"] == "twn"] == ["twn_w2a32_s0"]


def test_qnet_vs_ste_needs_every_seed_to_decide():
    """'Better' means all seeds above the other's (issue 12 item 8: single-seed noise ~0.5)."""
    def rows(method, w, accs):
        return [{"method": method, "w_bits": w, "a_bits": 32, "test_accuracy": a} for a in accs]

    q = rows("qnet", 1, [0.832, 0.833, 0.834])
    close = q + rows("dorefa", 1, [0.8323]) + rows("ivan", 1, [0.80]) + rows("xnor", 1, [0.79])
    t = zt.target_qnet_vs_ste(close, 1)
    assert t["status"] == "undecided" and t["ties"] == ["dorefa"]
    assert "within the seeds' spread of qnet: dorefa" in t["detail"]
    clear = q + rows("dorefa", 1, [0.82, 0.825]) + rows("ivan", 1, [0.80]) + rows("xnor", 1, [0.79])
    assert zt.target_qnet_vs_ste(clear, 1)["status"] == "met"
    two = q + rows("ivan", 1, [0.80]) + rows("xnor", 1, [0.79])
    assert zt.target_qnet_vs_ste(two, 1)["status"] == "undecided"  # fewer than 3 methods
    beaten = q + rows("lsq", 1, [0.835, 0.836]) + rows("twn", 1, [0.8335])
    t = zt.target_qnet_vs_ste(beaten, 1)
    assert t["status"] == "MISSED" and t["better_than_qnet"] == ["lsq"] and t["ties"] == ["twn"]
    assert zt.target_qnet_vs_ste(rows("lsq", 1, [0.8]), 1)["status"] == "not measured"


def test_pact_alpha_init_cells_get_their_own_label():
    specs = zt.pact_init_labels(zt.cell_specs(["pact", "ttq"], [(2, 32), (2, 2)], [0]))
    assert sorted((s["label"], s["method"]) for s in specs) == [
        ("dorefa+pact10_w2a2_s0", "dorefa+pact10"), ("ttq_w2a32_s0", "ttq")]
