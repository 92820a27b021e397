"""The shipped presets are healthy: no stage fails, and no false alarm where nothing is wrong.

Run in-process (one torch import for all). Budgets are trimmed where a preset is slow on two
CPU cores; the checks themselves are the shipped ones."""

from __future__ import annotations

import pytest

from tests.conftest import PRESETS, run_inprocess

CASES = {
    # preset: (overrides, stages expected to warn -> the check that warns)
    "digits.yaml": ({}, {}),
    "regression.yaml": ({"generalize.steps": 250, "speed.batches": 10}, {}),
    "segmentation.yaml": (
        {
            "generalize.steps": 150,
            "generalize.eval_every": 50,
            "speed.batches": 5,
            "data.n_train": 400,
        },
        {},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_shipped_preset_passes_every_stage(name, workspace):
    if name == "digits.yaml":
        pytest.importorskip("sklearn")
    overrides, _ = CASES[name]
    code, summary, _ = run_inprocess(PRESETS / name, workspace, overrides=overrides)
    problems = [
        (s["name"], s["status"], s["reason"]) for s in summary["stages"] if s["status"] != "pass"
    ]
    assert code == 0 and summary["status"] == "passed", problems
    assert len(summary["stages"]) == 6
    assert not problems
