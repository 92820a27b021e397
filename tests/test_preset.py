"""Preset loading and validation: every user mistake is one sentence naming file, key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.torchfree import preset as presets
from engine.torchfree.preset import PresetError, parse_override, parse_value

GOOD = """\
name: t
task: classification
model: {_target_: mytask.MLP, hidden: 8}
data: {_target_: mytask.make_data}
optimizer: {_target_: torch.optim.Adam, lr: 1e-3}
batch_size: 16
overfit_one: {steps: 50}
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(path: Path, overrides: dict | None = None) -> str:
    with pytest.raises(PresetError) as e:
        presets.load(path, overrides)
    return str(e.value)


def test_good_preset_loads_with_defaults(tmp_path):
    p = presets.load(write(tmp_path, GOOD))
    assert p.name == "t"
    assert p.get("optimizer.lr") == 1e-3  # YAML 1.1 would have read '1e-3' as text
    assert p.get("num_workers") == 0 and p.get("device") == "auto" and p.get("gpus") == 1
    assert p.stages() == [
        "init",
        "batch_independence",
        "overfit_one",
        "overfit_few",
        "generalize",
        "speed",
    ]
    assert p.stage_values("overfit_one") == {"steps": 50}


def test_name_defaults_to_the_file_stem(tmp_path):
    p = presets.load(write(tmp_path, GOOD.replace("name: t\n", ""), "my-task.yaml"))
    assert p.name == "my-task"


@pytest.mark.parametrize(
    "text, words",
    [
        (
            GOOD + "batch_sise: 3\n",
            "line 8: 'batch_sise' is not a preset key — did you mean 'batch_size'?",
        ),
        (
            GOOD.replace("batch_size: 16", "batch_size: 16.5"),
            "line 6: batch_size must be an integer > 0, got 16.5",
        ),
        (
            GOOD.replace("task: classification", "task: detection"),
            "line 2: task must be one of classification",
        ),
        (
            GOOD.replace("{_target_: mytask.MLP, hidden: 8}", "{hidden: 8}"),
            "line 3: model has no _target_",
        ),
        (
            GOOD.replace("{_target_: mytask.MLP, hidden: 8}", "{target: mytask.MLP}"),
            "model has no _target_ — did you mean 'target'?",
        ),
        (GOOD.replace("_target_: mytask.MLP", "_target_: 'my task'"), "must be a dotted path"),
        (
            GOOD.replace("overfit_one: {steps: 50}", "overfit_one: {stepz: 50}"),
            "line 7: 'stepz' is not a setting of overfit_one — did you mean 'steps'?",
        ),
        (
            GOOD.replace("overfit_one: {steps: 50}", "overfit_one: {steps: fifty}"),
            "overfit_one.steps must be an integer, got 'fifty' (text)",
        ),
        (
            GOOD.replace("overfit_one: {steps: 50}", "overfit_one: {steps: -5}"),
            "must not be negative",
        ),
        (
            GOOD + "stages: [init, overfit_on]\n",
            "'overfit_on' is not a stage — did you mean 'overfit_one'?",
        ),
        (GOOD + "device: gpu\n", "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (GOOD + "num_workers: -1\n", "num_workers must be an integer ≥ 0"),
        (GOOD + "persistent_workers: true\n", "persistent_workers: true needs num_workers > 0"),
        (GOOD + "batch_size: 8\n", "'batch_size' is given twice"),
        (
            GOOD.replace("model: {_target_: mytask.MLP, hidden: 8}\n", ""),
            "the preset has no 'model'",
        ),
        (
            GOOD + "ablations: [{optimzer.lr: 1}]\n",
            "'optimzer' is not a preset key — did you mean 'optimizer'?",
        ),
        (GOOD + "prune: {rule: median, every: ten}\n", "prune.every must be an integer"),
    ],
)
def test_mistakes_are_one_clear_sentence(tmp_path, text, words):
    path = write(tmp_path, text)
    msg = error_of(path)
    assert words in msg
    assert msg.startswith(str(path))
    assert "\n" not in msg


@pytest.mark.parametrize(
    "text, words",
    [
        ("model: {_target_: a.B\ndata: 1\n", "line 2, column 5: YAML syntax error"),
        ("- a\n- b\n", "a preset is a mapping of keys"),
        ("", "the preset is empty"),
    ],
)
def test_yaml_level_errors(tmp_path, text, words):
    assert words in error_of(write(tmp_path, text))


def test_missing_file_suggests_a_neighbour(tmp_path):
    write(tmp_path, GOOD, "quickstart.yaml")
    assert "did you mean" in error_of(
        tmp_path / "quickstart.yml"
    ) and "quickstart.yaml" in error_of(tmp_path / "quickstart.yml")


def test_overrides_are_yaml_and_dotted(tmp_path):
    path = write(tmp_path, GOOD)
    p = presets.load(
        path,
        dict(
            [
                parse_override("optimizer.lr=3e-4"),
                parse_override("model.hidden=64"),
                parse_override("stages=[init, speed]"),
                parse_override("train.steps=10"),
            ]
        ),
    )
    assert p.get("optimizer.lr") == 3e-4
    assert p.get("model.hidden") == 64
    assert p.stages() == ["init", "speed"]
    assert p.stage_values("train") == {"steps": 10}


@pytest.mark.parametrize(
    "override, words",
    [
        (
            "optimiser.lr=1",
            "--set optimiser.lr=1: 'optimiser' is not a preset key — did you mean 'optimizer'?",
        ),
        ("batch_size.x=1", "'batch_size' is 16 (a number), not a mapping"),
        (
            "batch_size=big",
            "(--set batch_size=big): batch_size must be an integer > 0, got 'big' (text)",
        ),
        (
            "train.stepz=3",
            "(--set train.stepz=3): 'stepz' is not a setting of train — did you mean 'steps'?",
        ),
    ],
)
def test_bad_overrides_name_the_override(tmp_path, override, words):
    path = write(tmp_path, GOOD)
    assert words in error_of(path, dict([parse_override(override)]))


def test_parse_override_syntax():
    with pytest.raises(PresetError, match="expected KEY=VALUE"):
        parse_override("lr")
    with pytest.raises(PresetError, match="expected KEY=VALUE"):
        parse_override("a..b=1")
    assert parse_override("a.b=") == ("a.b", "")
    assert (
        parse_value("1e-3") == 1e-3
        and parse_value("[1, 2]") == [1, 2]
        and parse_value("null") is None
    )
    assert parse_value("{_target_: a.B}") == {"_target_": "a.B"}


def test_to_yaml_round_trips(tmp_path):
    p = presets.load(write(tmp_path, GOOD), {"optimizer.lr": 3e-4})
    again = presets.loads(p.to_yaml(), tmp_path / "resolved.yaml")
    presets.validate(again)
    assert again.data == p.data


def test_shipped_presets_are_valid():
    root = Path(__file__).resolve().parent.parent / "presets"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert "quickstart.yaml" in names and len(names) >= 3
    for path in root.glob("*.yaml"):
        presets.load(path)
