"""Boundaries, not only extremes: a case just inside and just outside each line a verdict
rests on, so that moving a threshold (or deleting a check) breaks a test.

The planted bugs in tests/test_zoo.py sit far past their lines (a val set that overlaps train
completely); these sit next to them. Where a line is a setting, the cases are built from the
setting's default (``engine/torchfree/ladder.py``), so a deliberate change of default moves
the cases with it while a moved comparison still fails.
"""

from __future__ import annotations

import math

import pytest

from tests.conftest import ZOO, check, run_inprocess, stage

BLOBS = ZOO / "blobs.yaml"
OVERLAP_FAIL = 0.05  # engine/stages/init.py: a val set 5% or more in train fails
VAL = 256  # zoo.blobs' val set


def _init(workspace, data: dict, **more) -> dict:
    overrides = {f"data.{k}": v for k, v in data.items()} | more
    _code, summary, _ = run_inprocess(BLOBS, workspace, overrides=overrides, stages=["init"])
    return stage(summary, "init")


# ---------------------------------------------------------------- train/val overlap


@pytest.mark.parametrize(
    ("shared", "status"),
    [
        (0, "pass"),
        (math.ceil(OVERLAP_FAIL * VAL) - 1, "warn"),  # 12 of 256 = 4.7%: just inside
        (math.ceil(OVERLAP_FAIL * VAL), "fail"),  # 13 of 256 = 5.1%: just outside
    ],
)
def test_overlap_fails_from_five_percent_of_val(workspace, shared, status):
    rec = _init(workspace, {"_target_": "edges.blobs_sharing", "shared": shared})
    got = check(rec, "train_val_overlap")
    assert got["status"] == status, got
    assert rec["metrics"]["overlap_fraction"] == pytest.approx(shared / VAL)
    if shared:
        assert f"{shared} of {VAL} val inputs also appear in train" in got["detail"]


# ---------------------------------------------------------------- generalize


@pytest.mark.slow
def test_a_falling_val_loss_does_not_pass_while_the_metric_stays_at_the_baseline(workspace):
    """Val loss well below the input-blind loss, accuracy exactly the majority class's: the
    model calibrated to what the input says but never predicts better than the prior. Only
    the "beats the input-blind baseline" check stands between this and a pass."""
    overrides = {
        "data": {"_target_": "edges.calibrated_not_accurate"},
        "generalize.steps": 150,
        "generalize.eval_every": 150,
        "generalize.label_test": False,
    }
    _code, summary, _ = run_inprocess(BLOBS, workspace, overrides=overrides, stages=["generalize"])
    rec = stage(summary, "generalize")
    m = rec["metrics"]
    assert check(rec, "val_loss_falls")["status"] == "pass", rec
    assert m["val_loss_end"] < m["baseline_val_loss"] - 0.1  # 1.00 vs 1.18 nats
    assert m["accuracy"] <= m["baseline_accuracy"] + 0.01
    beats = check(rec, "beats_baseline")
    assert beats["status"] == "fail", beats
    assert "within noise of" in beats["detail"] and "majority class" in beats["detail"]
    assert rec["status"] != "pass", rec["reason"]
