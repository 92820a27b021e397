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


def alarms(summary: dict) -> dict[str, set[str]]:
    """Stage -> the checks in it that did not pass (warn or fail)."""
    return {
        s["name"]: {c["name"] for c in s["checks"] if c["status"] in ("warn", "fail")}
        for s in summary["stages"]
        if s["status"] != "pass" or any(c["status"] in ("warn", "fail") for c in s["checks"])
    }


@pytest.mark.parametrize("name", list(CASES))
def test_shipped_preset_passes_every_stage(name, workspace):
    if name == "digits.yaml":
        pytest.importorskip("sklearn")
    overrides, expected = CASES[name]
    code, summary, _ = run_inprocess(PRESETS / name, workspace, overrides=overrides)
    problems = [
        (s["name"], s["status"], s["reason"]) for s in summary["stages"] if s["status"] != "pass"
    ]
    assert code == 0 and summary["status"] == "passed", problems
    assert len(summary["stages"]) == 6
    # exactly the expected warnings: each named stage warns through the named check, and
    # nothing else warns or fails anywhere (no false alarm on a healthy preset)
    statuses = {s["name"]: s["status"] for s in summary["stages"]}
    assert {n for n, st in statuses.items() if st != "pass"} == set(expected), problems
    assert all(statuses[n] == "warn" for n in expected), problems
    assert alarms(summary) == {n: {c} for n, c in expected.items()}, problems


def test_the_alarm_reader_sees_warnings_in_stages_and_checks():
    """The comparison above is only as good as ``alarms``: it must see a warning stage, a
    warning check inside a passing stage, and nothing in a clean summary."""
    clean = {
        "stages": [{"name": "init", "status": "pass", "checks": [{"name": "a", "status": "pass"}]}]
    }
    assert alarms(clean) == {}
    warned = {
        "stages": [
            {
                "name": "speed",
                "status": "warn",
                "checks": [{"name": "data_wait", "status": "warn"}],
            },
            {"name": "init", "status": "pass", "checks": [{"name": "x", "status": "warn"}]},
        ]
    }
    assert alarms(warned) == {"speed": {"data_wait"}, "init": {"x"}}
