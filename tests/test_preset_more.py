"""The preset validator, sentence by sentence and limit by limit (engine/torchfree/preset.py).

Each mistake a user can make gets the exact sentence they will read (file, line, key, what
was expected, how to fix it), and each limit a case just inside and just outside it — so that
moving a limit or losing a word of a message breaks a test. Written from the survivors of
``benchmarks/mutation.sh preset``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import yaml

from engine.torchfree import preset as presets
from engine.torchfree.ladder import DEFAULT_LADDER, STAGES
from engine.torchfree.preset import (
    INT_LIMITS,
    MAX_INT,
    MAX_NODES,
    MAX_PRESET_BYTES,
    SCHEMA,
    PresetError,
    parse_override,
    parse_stage_list,
    parse_value,
)
from engine.torchfree.tasks import TASKS

BASE = "model: {_target_: mytask.MLP, hidden: 8}\ndata: {_target_: mytask.make_data}\n"
"""Two lines: what is added starts on line 3."""
KEYS = ", ".join(SCHEMA)
STAGE_LIST = ", ".join(STAGES)


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def load(tmp_path: Path, extra: str = "", overrides: dict | None = None) -> presets.Preset:
    return presets.load(write(tmp_path, BASE + extra), overrides)


def error(tmp_path: Path, extra: str = "", overrides: dict | None = None) -> str:
    """The whole message for BASE + extra, with the file's path replaced by P."""
    p = write(tmp_path, BASE + extra)
    with pytest.raises(PresetError) as e:
        presets.load(p, overrides)
    return str(e.value).replace(str(p), "P")


# ---------------------------------------------------------------- top-level keys


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ("name: ''\n", "name must be non-empty text, got '' (text)."),
        ("name: 3\n", "name must be non-empty text, got 3 (a number)."),
        ("seed: null\n", "seed must be an integer, got nothing (null)."),
        ("seed: 1.5\n", "seed must be an integer, got 1.5 (a number)."),
        ("seed: true\n", "seed must be an integer, got true (a boolean)."),
        ("seed: 2026-01-01\n", "seed must be an integer, got 2026-01-01 (a date)."),
        (
            "task: detection\n",
            f"task must be one of {', '.join(TASKS)}, got 'detection' (text).",
        ),
        ("precision: fp64\n", "precision must be one of fp32, bf16, fp16, got 'fp64' (text)."),
        (
            "compile: fast\n",
            "compile must be true, false or a torch.compile mode (default, reduce-overhead, "
            "max-autotune, max-autotune-no-cudagraphs), got 'fast' (text).",
        ),
        ("gpus: -1\n", "gpus must be an integer ≥ 0, got -1 (a number)."),
        ("gpus: 1025\n", "gpus must be an integer from 0 to 1024, got 1025 (a number)."),
        ("gpus: 1.0\n", "gpus must be an integer ≥ 0, got 1.0 (a number)."),
        (
            "num_workers: 1025\n",
            "num_workers must be an integer from 0 to 1024, got 1025 (a number).",
        ),
        ("prefetch_factor: 0\n", "prefetch_factor must be an integer > 0, got 0 (a number)."),
        (
            "prefetch_factor: 1025\n",
            "prefetch_factor must be an integer from 1 to 1024, got 1025 (a number).",
        ),
        ("batch_size: 0\n", "batch_size must be an integer > 0, got 0 (a number)."),
        (
            f"batch_size: {(1 << 24) + 1}\n",
            f"batch_size must be an integer from 1 to {1 << 24}, got {(1 << 24) + 1} (a number).",
        ),
        (
            f"val_batch_size: {(1 << 24) + 1}\n",
            f"val_batch_size must be an integer from 1 to {1 << 24}, got {(1 << 24) + 1} (a number).",
        ),
        (
            f"seed: {2**63}\n",
            f"seed must be an integer from {-(2**63)} to {2**63 - 1}, got {2**63} (a number).",
        ),
        (
            f"seed: {-(2**63) - 1}\n",
            f"seed must be an integer from {-(2**63)} to {2**63 - 1}, got {-(2**63) - 1} (a number).",
        ),
        ("grad_clip: 0\n", "grad_clip must be a finite number > 0, got 0 (a number)."),
        ("grad_clip: -1.0\n", "grad_clip must be a finite number > 0, got -1.0 (a number)."),
        ("grad_clip: .inf\n", "grad_clip must be a finite number > 0, got inf (a number)."),
        ("grad_clip: true\n", "grad_clip must be a finite number > 0, got true (a boolean)."),
        ("grad_clip: '1'\n", "grad_clip must be a finite number > 0, got '1' (text)."),
        ("device: gpu\n", "device must be auto, cpu, cuda or cuda:N, got 'gpu' (text)."),
        (
            "device: cuda:1000\n",
            "device must be auto, cpu, cuda or cuda:N, got 'cuda:1000' (text).",
        ),
        ("device: 0\n", "device must be auto, cpu, cuda or cuda:N, got 0 (a number)."),
        ("pin_memory: maybe\n", "pin_memory must be true, false or auto, got 'maybe' (text)."),
        (
            "persistent_workers: 1\n",
            "persistent_workers must be true, false or auto, got 1 (a number).",
        ),
        (
            "stages: init\n",
            "stages must be a list of stage names, e.g. [init, overfit_one], got 'init' (text).",
        ),
        (
            "ablations: [1]\n",
            "ablations must be a list of mappings of dotted keys to values, e.g. "
            "[{optimizer.lr: 3e-4}], got a list.",
        ),
        (
            "ablations: {seed: 1}\n",
            "ablations must be a list of mappings of dotted keys to values, e.g. "
            "[{optimizer.lr: 3e-4}], got a mapping.",
        ),
        (
            "tricks: {a: {}}\n",
            "tricks must be a mapping of trick names to overrides, e.g. "
            "{dropout: {model.dropout: 0.2}}, got a mapping.",
        ),
        (
            "tricks: {a: 1}\n",
            "tricks must be a mapping of trick names to overrides, e.g. "
            "{dropout: {model.dropout: 0.2}}, got a mapping.",
        ),
        (
            "tricks: [{seed: 1}]\n",
            "tricks must be a mapping of trick names to overrides, e.g. "
            "{dropout: {model.dropout: 0.2}}, got a list.",
        ),
        ("prune: 3\n", "prune must be a mapping, got 3 (a number)."),
        (
            "optimizers: {}\n",
            "optimizers must be a mapping of names to {_target_: ...} mappings, e.g. "
            "{G: {_target_: mytask.G}}, got a mapping.",
        ),
        (
            "optimizers: [a]\n",
            "optimizers must be a mapping of names to {_target_: ...} mappings, e.g. "
            "{G: {_target_: mytask.G}}, got a list.",
        ),
    ],
)
def test_a_wrong_top_level_value_is_one_exact_sentence(tmp_path, extra, said):
    assert error(tmp_path, extra) == f"P, line 3: {said}"


@pytest.mark.parametrize(
    "extra",
    [
        "name: null\n",
        "name: x\n",
        "gpus: 0\n",
        "gpus: 1024\n",
        "num_workers: 1024\n",
        "num_workers: 0\n",
        "prefetch_factor: 1\n",
        "prefetch_factor: 1024\n",
        "prefetch_factor: null\n",
        "batch_size: 1\n",
        f"batch_size: {1 << 24}\n",
        f"val_batch_size: {1 << 24}\n",
        "val_batch_size: 1\n",
        "val_batch_size: null\n",
        f"seed: {2**63 - 1}\n",
        f"seed: {-(2**63)}\n",
        "seed: -1\n",
        "grad_clip: 1e-9\n",
        "grad_clip: 1\n",
        "grad_clip: null\n",
        "device: cuda:999\n",
        "device: cuda\n",
        "device: mps\n",
        "device: cpu\n",
        "pin_memory: auto\n",
        "pin_memory: false\n",
        "compile: true\n",
        "compile: false\n",
        "compile: default\n",
        "compile: max-autotune-no-cudagraphs\n",
        "precision: bf16\n",
        "task: regression\n",
        "ablations: []\n",
        "ablations: null\n",
        "tricks: {a: {seed: 1}}\n",
        "tricks: null\n",
        "prune: {rule: median}\n",
        "prune: null\n",
        "stages: null\n",
        "loss: null\n",
        "scheduler: null\n",
        "step: null\n",
    ],
)
def test_a_value_just_inside_its_limit_is_accepted(tmp_path, extra):
    p = load(tmp_path, extra)
    key, _, text = extra.partition(":")
    value = yaml.load(text, Loader=presets._Loader)
    assert p.data[key] == value


def test_every_integer_key_has_its_own_limits():
    ints = {k for k, spec in SCHEMA.items() if spec.check in ("int", "nonneg_int", "pos_int")}
    assert ints == set(INT_LIMITS)


def test_optimizer_null_is_refused_not_a_crash_later(tmp_path):
    # the engine would index the missing optimizer (`None["_target_"]`): refused here instead
    assert error(tmp_path, "optimizer: null\n") == (
        "P, line 3: optimizer must be a mapping with a _target_, e.g. optimizer: "
        "{_target_: mytask.Thing}, got nothing (null)."
    )


def test_keys_after_a_null_one_are_still_checked(tmp_path):
    assert error(tmp_path, "loss: null\nprune: null\nseed: x\n") == (
        "P, line 5: seed must be an integer, got 'x' (text)."
    )


def test_an_unknown_key_gets_a_suggestion_or_the_list_of_keys(tmp_path):
    assert error(tmp_path, "batch_sise: 3\n") == (
        "P, line 3: 'batch_sise' is not a preset key — did you mean 'batch_size'?"
    )
    assert error(tmp_path, "zzzzzz: 3\n") == (
        f"P, line 3: 'zzzzzz' is not a preset key; preset keys are {KEYS}, and one section "
        "per stage."
    )
    assert error(tmp_path, "overfit_onw: {steps: 1}\n") == (
        "P, line 3: 'overfit_onw' is not a preset key — did you mean 'overfit_one'?"
    )
    assert (
        error(tmp_path, "7: 3\n")
        == f"P, line 3: '7' is not a preset key; preset keys are {KEYS}, and one section per stage."
    )


# ---------------------------------------------------------------- targets


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (
            "loss: 3\n",
            "loss must be a mapping with a _target_, e.g. loss: {_target_: mytask.Thing}, "
            "got 3 (a number).",
        ),
        (
            "loss: {reduction: mean}\n",
            "loss has no _target_; add the dotted path of what builds it, e.g. "
            "_target_: mytask.thing.",
        ),
        (
            "loss: {_targt_: a.b}\n",
            "loss has no _target_ — did you mean '_targt_'?; add the dotted path of what builds "
            "it, e.g. _target_: mytask.thing.",
        ),
        (
            "loss: {_target_: nodots}\n",
            "loss._target_ must be a dotted path such as torch.optim.Adam or mytask:make_data, "
            "got 'nodots' (text).",
        ),
        (
            "loss: {_target_: 3}\n",
            "loss._target_ must be a dotted path such as torch.optim.Adam or mytask:make_data, "
            "got 3 (a number).",
        ),
        (
            "loss: {_target_: a.b.}\n",
            "loss._target_ must be a dotted path such as torch.optim.Adam or mytask:make_data, "
            "got 'a.b.' (text).",
        ),
    ],
)
def test_a_bad_target_is_one_exact_sentence(tmp_path, extra, said):
    assert error(tmp_path, extra) == f"P, line 3: {said}"


def test_the_model_without_a_target_is_told_to_name_a_model(tmp_path):
    p = write(tmp_path, "model: {hidden: 8}\ndata: {_target_: mytask.make_data}\n")
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value) == (
        f"{p}, line 1: model has no _target_; add the dotted path of what builds it, e.g. "
        "_target_: mytask.Model."
    )


def test_a_target_with_a_colon_or_dots_is_accepted(tmp_path):
    assert load(tmp_path, "loss: {_target_: 'mytask:make_loss'}\n").get("loss._target_") == (
        "mytask:make_loss"
    )
    assert load(tmp_path, "loss: {_target_: a.b.C_d}\n").get("loss._target_") == "a.b.C_d"


def test_models_and_optimizers_by_name(tmp_path):
    models = "models: {G: {_target_: mytask.G}, D: {_target_: mytask.D}}\n"
    data = "data: {_target_: mytask.make_data}\n"
    p = write(tmp_path, models + data + "optimizers: {G: {_target_: torch.optim.SGD, lr: 1}}\n")
    assert presets.load(p).get("optimizers.G.lr") == 1
    p = write(tmp_path, models + data + "optimizers: {GG: {_target_: torch.optim.SGD}}\n")
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value) == (
        f"{p}, line 3: optimizers.GG names no model of models — did you mean 'G'?; optimizers "
        "are keyed by the names of models (G, D)."
    )
    p = write(tmp_path, models + data + "optimizers: {X: {lr: 1}}\n")
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value).startswith(f"{p}, line 3: optimizers.X has no _target_")
    p = write(tmp_path, "models: {G: 3}\n" + data)
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value) == (
        f"{p}, line 1: models.G must be a mapping with a _target_, e.g. models.G: "
        "{_target_: mytask.Thing}, got 3 (a number)."
    )
    # a model named in models may be left without an optimizer of its own
    assert presets.load(write(tmp_path, models + data)).get("optimizers") is None


def test_optimizers_without_models_say_there_are_none(tmp_path):
    assert error(tmp_path, "optimizers: {G: {_target_: torch.optim.SGD}}\n") == (
        "P, line 3: optimizers.G names no model of models; optimizers are keyed by the names "
        "of models (none)."
    )


def test_model_and_models_together_are_refused(tmp_path):
    assert error(tmp_path, "models: {G: {_target_: mytask.G}}\n") == (
        "P, line 3: the preset has both model and models; keep one (models: for several)."
    )


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "data: {_target_: mytask.make_data}\n",
            "the preset has no 'model'; add e.g. model: {_target_: mytask.MLP}.",
        ),
        (
            "model: {_target_: mytask.MLP}\n",
            "the preset has no 'data'; add e.g. data: {_target_: mytask.make_data}.",
        ),
        (
            "model: null\ndata: {_target_: mytask.make_data}\n",
            "the preset has no 'model'; add e.g. model: {_target_: mytask.MLP}.",
        ),
    ],
)
def test_a_missing_model_or_data_names_what_to_add(tmp_path, text, said):
    p = write(tmp_path, text)
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value) == f"{p}: {said}"


def test_models_stand_in_for_model(tmp_path):
    p = write(tmp_path, "models: {G: {_target_: mytask.G}}\ndata: {_target_: mytask.make_data}\n")
    assert presets.load(p).get("models.G._target_") == "mytask.G"


def test_persistent_workers_need_workers(tmp_path):
    said = (
        "P, line 3: persistent_workers: true needs num_workers > 0; set num_workers or drop "
        "persistent_workers."
    )
    assert error(tmp_path, "persistent_workers: true\n") == said
    assert error(tmp_path, "persistent_workers: true\nnum_workers: 0\n") == said
    assert load(tmp_path, "persistent_workers: true\nnum_workers: 1\n").get("num_workers") == 1
    assert load(tmp_path, "persistent_workers: false\n").get("persistent_workers") is False
    assert load(tmp_path, "persistent_workers: auto\n").get("persistent_workers") == "auto"


# ---------------------------------------------------------------- the optimizer's numbers


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ("lr: 0", "optimizer.lr must be a finite number > 0, got 0 (a number)."),
        ("lr: -0.1", "optimizer.lr must be a finite number > 0, got -0.1 (a number)."),
        ("lr: .inf", "optimizer.lr must be a finite number > 0, got inf (a number)."),
        ("lr: .nan", "optimizer.lr must be a finite number > 0, got nan (a number)."),
        ("lr: fast", "optimizer.lr must be a finite number > 0, got 'fast' (text)."),
        ("lr: true", "optimizer.lr must be a finite number > 0, got true (a boolean)."),
        (
            "weight_decay: -1e-9",
            "optimizer.weight_decay must be a finite number ≥ 0, got -1e-09 (a number).",
        ),
        (
            "momentum: 1.01",
            "optimizer.momentum must be a finite number ≥ 0 and ≤ 1, got 1.01 (a number).",
        ),
        (
            "momentum: -0.1",
            "optimizer.momentum must be a finite number ≥ 0 and ≤ 1, got -0.1 (a number).",
        ),
        (
            "dampening: 2",
            "optimizer.dampening must be a finite number ≥ 0 and ≤ 1, got 2 (a number).",
        ),
        ("eps: 0", "optimizer.eps must be a finite number > 0, got 0 (a number)."),
        ("alpha: -1", "optimizer.alpha must be a finite number ≥ 0, got -1 (a number)."),
        (
            "betas: [0.9, 1.0]",
            "optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got a list.",
        ),
        (
            "betas: [-0.1, 0.9]",
            "optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got a list.",
        ),
        (
            "betas: [0.9]",
            "optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got a list.",
        ),
        (
            "betas: [0.9, 0.99, 0.999]",
            "optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got a list.",
        ),
        (
            "betas: [0.9, x]",
            "optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got a list.",
        ),
        (
            "betas: 0.9",
            "optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got 0.9 (a number).",
        ),
    ],
)
def test_an_optimizer_argument_out_of_range_is_refused_with_its_range(tmp_path, setting, said):
    extra = f"optimizer: {{_target_: torch.optim.SGD, {setting}}}\n"
    assert error(tmp_path, extra) == f"P, line 3: {said}"


@pytest.mark.parametrize(
    "setting",
    [
        "lr: 1e-12",
        "lr: 10",
        "weight_decay: 0",
        "momentum: 0",
        "momentum: 1",
        "dampening: 1",
        "eps: 1e-12",
        "alpha: 0",
        "betas: [0, 0]",
        "betas: [0.9, 0.999]",
        "betas: null",
        "nesterov: true",
    ],
)
def test_an_optimizer_argument_at_the_edge_of_its_range_is_accepted(tmp_path, setting):
    p = load(tmp_path, f"optimizer: {{_target_: torch.optim.SGD, {setting}}}\n")
    name, _, text = setting.partition(":")
    assert p.get(f"optimizer.{name}") == yaml.load(text, Loader=presets._Loader)


# ---------------------------------------------------------------- stage settings


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ("overfit_one: 3\n", "overfit_one must be a mapping of settings, got 3 (a number)."),
        ("overfit_one: [steps]\n", "overfit_one must be a mapping of settings, got a list."),
        (
            "overfit_one: {stepz: 5}\n",
            "'stepz' is not a setting of overfit_one — did you mean 'steps'?",
        ),
        (
            "train: {zzz: 1}\n",
            "'zzz' is not a setting of train; its settings are steps, seconds, val_every, "
            "eval_every, checkpoint_every.",
        ),
        ("train: {steps: 1.5}\n", "train.steps must be an integer, got 1.5 (a number)."),
        ("train: {steps: true}\n", "train.steps must be an integer, got true (a boolean)."),
        ("train: {steps: null}\n", "train.steps must be an integer, got nothing (null)."),
        ("train: {steps: .nan}\n", "train.steps must be an integer, got nan (a number)."),
        ("train: {steps: 0}\n", "train.steps must be greater than 0, got 0."),
        ("train: {steps: -3}\n", "train.steps must not be negative, got -3."),
        (
            f"train: {{steps: {MAX_INT + 1}}}\n",
            f"train.steps must be at most {MAX_INT}, got {MAX_INT + 1} (a number).",
        ),
        ("train: {seconds: .inf}\n", "train.seconds must be a finite number, got inf."),
        ("train: {seconds: -.inf}\n", "train.seconds must be a finite number, got -inf."),
        ("train: {seconds: 0}\n", "train.seconds must be greater than 0, got 0."),
        ("train: {seconds: -0.5}\n", "train.seconds must not be negative, got -0.5."),
        ("overfit_one: {lr: x}\n", "overfit_one.lr must be a number or null, got 'x' (text)."),
        ("overfit_one: {lr: 0}\n", "overfit_one.lr must be greater than 0, got 0."),
        ("overfit_one: {reach: 0.0}\n", "overfit_one.reach must be greater than 0, got 0.0."),
        ("init: {samples: 0}\n", "init.samples must be greater than 0, got 0."),
        ("init: {batches: 0}\n", "init.batches must be greater than 0, got 0."),
        ("init: {overlap_samples: 0}\n", "init.overlap_samples must be greater than 0, got 0."),
        ("init: {val_samples: 0}\n", "init.val_samples must be greater than 0, got 0."),
        ("init: {max_params: 0}\n", "init.max_params must be greater than 0, got 0."),
        (
            "batch_independence: {batch: 0}\n",
            "batch_independence.batch must be greater than 0, got 0.",
        ),
        ("speed: {max_batch_s: 0}\n", "speed.max_batch_s must be greater than 0, got 0."),
        ("lr_find: {min_lr: 0}\n", "lr_find.min_lr must be greater than 0, got 0."),
        ("lr_find: {max_lr: 0}\n", "lr_find.max_lr must be greater than 0, got 0."),
        ("lr_find: {diverge: 0}\n", "lr_find.diverge must be greater than 0, got 0."),
        (
            "init: {loss_tolerance: true}\n",
            "init.loss_tolerance must be a number, got true (a boolean).",
        ),
        (
            "generalize: {label_test: 1}\n",
            "generalize.label_test must be true or false, got 1 (a number).",
        ),
        (
            "generalize: {label_test: null}\n",
            "generalize.label_test must be true or false, got nothing (null).",
        ),
        ("adversarial: {after: 3}\n", "adversarial.after must be text, got 3 (a number)."),
        ("prune: {every: 0}\n", "prune.every must be greater than 0, got 0."),
        ("prune: {min_peers: 0}\n", "prune.min_peers must be greater than 0, got 0."),
        ("prune: {every: ten}\n", "prune.every must be an integer, got 'ten' (text)."),
        ("prune: {rule: 3}\n", "prune.rule must be text, got 3 (a number)."),
        (
            "prune: {rul: median}\n",
            "'rul' is not a setting of prune — did you mean 'rule'?",
        ),
        (
            "prune: {zzzz: 1}\n",
            "'zzzz' is not a setting of prune; its settings are rule, metric, warmup_steps, "
            "every, min_peers.",
        ),
    ],
)
def test_a_wrong_stage_setting_is_one_exact_sentence(tmp_path, extra, said):
    assert error(tmp_path, extra) == f"P, line 3: {said}"


@pytest.mark.parametrize(
    "extra",
    [
        "train: {steps: 1}\n",
        f"train: {{steps: {MAX_INT}}}\n",
        "train: {seconds: null}\n",
        "train: {seconds: 0.001}\n",
        "overfit_one: {lr: null}\n",
        "overfit_one: {lr: 3}\n",
        "overfit_one: {floor: 0}\n",
        "init: {loss_tolerance: 0}\n",
        "init: {loss_tolerance: 2}\n",
        "generalize: {label_test: false}\n",
        "adversarial: {after: overfit_one}\n",
        "prune: {warmup_steps: 0}\n",
        "overfit_one: null\n",
        "overfit_one: {}\n",
    ],
)
def test_a_stage_setting_at_its_edge_is_accepted(tmp_path, extra):
    p = load(tmp_path, extra)
    section, _, text = extra.partition(":")
    assert p.stage_values(section) == (yaml.load(text, Loader=presets._Loader) or {})


# ---------------------------------------------------------------- the stage list


def test_a_stage_list_names_the_bad_item_on_its_own_line(tmp_path):
    assert error(tmp_path, "stages:\n  - init\n  - overfit_on\n") == (
        f"P, line 5: stages: 'overfit_on' is not a stage — did you mean 'overfit_one'?; "
        f"stages are {STAGE_LIST}."
    )
    assert error(tmp_path, "stages: [3]\n") == (
        f"P, line 3: stages: '3' is not a stage; stages are {STAGE_LIST}."
    )
    assert error(tmp_path, "stages: []\n") == (
        "P, line 3: stages is empty; name at least one stage, or drop the key for the ladder."
    )
    assert load(tmp_path, "stages: [speed, init]\n").stages() == ["speed", "init"]
    assert load(tmp_path).stages() == list(DEFAULT_LADDER)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("init", ["init"]),
        ("init,overfit_one", ["init", "overfit_one"]),
        ("init, overfit_one", ["init", "overfit_one"]),
        ("init overfit_one\tspeed", ["init", "overfit_one", "speed"]),
        (",init,,", ["init"]),
    ],
)
def test_the_stages_flag_is_split_on_commas_and_spaces(text, names):
    assert parse_stage_list(text) == names


def test_the_stages_flag_refuses_no_names_and_unknown_names():
    with pytest.raises(PresetError) as e:
        parse_stage_list(",")
    assert str(e.value) == "--stages needs stage names, e.g. --stages init,overfit_one"
    with pytest.raises(PresetError) as e:
        parse_stage_list("init,overfit_on")
    assert str(e.value) == (
        f"--stages: 'overfit_on' is not a stage — did you mean 'overfit_one'?; stages are "
        f"{STAGE_LIST}."
    )
    with pytest.raises(PresetError) as e:
        parse_stage_list("qqqq")
    assert str(e.value) == f"--stages: 'qqqq' is not a stage; stages are {STAGE_LIST}."


# ---------------------------------------------------------------- ablations and tricks


def test_an_ablation_or_a_trick_that_sets_an_unknown_key_is_named(tmp_path):
    assert error(tmp_path, "ablations: [{seed: 1}, {batch_sise: 1}]\n") == (
        "P, line 3: ablation 2 sets 'batch_sise', but 'batch_sise' is not a preset key — did "
        "you mean 'batch_size'?"
    )
    assert error(tmp_path, "ablations:\n  - {qqqq.x: 1}\n") == (
        "P, line 4: ablation 1 sets 'qqqq.x', but 'qqqq' is not a preset key"
    )
    assert error(tmp_path, "tricks:\n  drop: {modle.dropout: 0.1}\n") == (
        "P, line 4: trick 'drop' sets 'modle.dropout', but 'modle' is not a preset key — did "
        "you mean 'model'?"
    )
    assert error(tmp_path, "tricks: {x: {qqqq: 1}}\n") == (
        "P, line 3: trick 'x' sets 'qqqq', but 'qqqq' is not a preset key"
    )
    ok = load(
        tmp_path,
        "ablations: [{optimizer.lr: 1}, {train.steps: 3}]\ntricks: {t: {init.samples: 2}}\n",
    )
    assert ok.get("ablations") == [{"optimizer.lr": 1}, {"train.steps": 3}]
    assert ok.get("tricks.t") == {"init.samples": 2}


# ---------------------------------------------------------------- the YAML itself


def test_yaml_floats_are_numbers_as_ml_configs_mean_them():
    for text, value in (
        ("1e-3", 1e-3),
        ("1E3", 1000.0),
        ("-2e+2", -200.0),
        ("3.", 3.0),
        ("1_000.5", 1000.5),
        (".5", 0.5),
        (".5e1", 5.0),
        ("+1.5e-1", 0.15),
    ):
        assert parse_value(text) == value and isinstance(parse_value(text), float), text
    assert parse_value(".inf") == math.inf and parse_value("-.Inf") == -math.inf
    assert math.isnan(parse_value(".NaN"))
    assert parse_value("1e") == "1e" and parse_value("e3") == "e3"
    assert parse_value("12") == 12 and isinstance(parse_value("12"), int)


def test_parse_value_reads_yaml_and_falls_back_to_the_text():
    assert parse_value("") == "" and parse_value("   ") == ""
    assert parse_value("# just a comment") is None
    assert parse_value("[a") == "[a"  # not YAML: the text itself
    assert parse_value("{a: [1, 2]}") == {"a": [1, 2]}
    assert parse_value("on") is True
    with pytest.raises(PresetError) as e:
        parse_value("2026-13-45")
    assert (
        str(e.value) == "the value '2026-13-45': a value cannot be read (month must be in 1..12)."
    )
    with pytest.raises(PresetError) as e:
        parse_value("!!python/name:os.system x")
    assert str(e.value) == (
        "the value '!!python/name:os.system x': the YAML tag '!!python/name:os.system' is not "
        "allowed in a preset (plain values, lists and mappings only); remove the tag."
    )


def test_plain_yaml_is_allowed_merge_keys_timestamps_and_all():
    value = parse_value("{base: &b {x: 1}, other: {<<: *b, y: 2}, when: 2026-01-01 10:00:00}")
    assert value["other"] == {"x": 1, "y": 2} and value["when"].year == 2026
    assert parse_value("[!!str 3, !!int '4', !!float '1', !!bool 'yes', !!null '']") == [
        "3",
        4,
        1.0,
        True,
        None,
    ]
    assert parse_value("!!map {a: 1}") == {"a": 1} and parse_value("!!seq [1]") == [1]
    assert parse_value("!!timestamp 2026-01-02").day == 2


def test_a_value_of_exactly_the_node_limit_is_read_and_one_more_is_refused():
    # a flow list is one node plus one per item
    fits = "[" + ",".join("0" * (MAX_NODES - 1)) + "]"
    assert len(parse_value(fits)) == MAX_NODES - 1
    too_many = "[" + ",".join("0" * MAX_NODES) + "]"
    with pytest.raises(PresetError) as e:
        parse_value(too_many)
    assert str(e.value) == (
        f"the value '{too_many[:37]}...': it expands to more than {MAX_NODES} values (aliases "
        "repeated inside aliases?); a preset is small — write the values out or drop the aliases."
    )


def test_an_alias_bomb_is_refused_without_a_line(tmp_path):
    bomb = "a: &a [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]\n"
    for i, name in enumerate("bcde"):
        prev = "abcd"[i]
        bomb += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]\n"
    p = write(tmp_path, BASE + bomb)
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value) == (
        f"{p}: it expands to more than {MAX_NODES} values (aliases repeated inside aliases?); "
        "a preset is small — write the values out or drop the aliases."
    )


def test_the_first_bad_tag_in_the_file_is_the_one_named(tmp_path):
    p = write(tmp_path, BASE + "loss:\n  a: !x 1\n  b: !!python/tuple [1]\n")
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value) == (
        f"{p}, line 4: the YAML tag '!x' is not allowed in a preset (plain values, lists and "
        "mappings only); remove the tag."
    )
    p = write(tmp_path, BASE + "? !k key\n: 1\n")  # a tag on a key is found too
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert "the YAML tag '!k'" in str(e.value) and str(e.value).startswith(f"{p}, line 3:")
    p = write(tmp_path, BASE + "stages:\n  - init\n  - !tag x\n")
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value).startswith(f"{p}, line 5: the YAML tag '!tag'")


def test_a_long_tag_is_cut_to_sixty_characters():
    tag = "!" + "t" * 80
    with pytest.raises(PresetError) as e:
        parse_value(f"{tag} 1")
    assert f"the YAML tag '{tag[:60]}' is not allowed" in str(e.value)
    assert f"'{tag[:61]}'" not in str(e.value)
    with pytest.raises(PresetError) as e:
        parse_value("!!" + "p" * 80 + " 1")
    assert f"the YAML tag '!!{'p' * 58}' is not allowed" in str(e.value)


def test_an_alias_may_repeat_a_node_that_is_not_its_own_parent(tmp_path):
    p = load(tmp_path, "loss: {_target_: a.b, x: &v [1, 2], y: *v, z: [*v, *v]}\n")
    assert p.get("loss.z") == [[1, 2], [1, 2]]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("- a\n- b\n", "line 1: a preset is a mapping of keys (model:, data:, ...), not a list."),
        (
            "\n\nhello\n",
            "line 3: a preset is a mapping of keys (model:, data:, ...), not a single value.",
        ),
        ("", "the preset is empty; it needs at least model and data."),
        ("# nothing but a comment\n", "the preset is empty; it needs at least model and data."),
        (
            "model: {_target_: a.B\ndata: 1\n",
            "line 2, column 5: YAML syntax error: expected ',' or '}', but got ':'.",
        ),
        (
            "a: [\n",
            "line 2, column 1: YAML syntax error: expected the node content, but found '<stream end>'.",
        ),
        ("a: b: c\n", "line 1, column 5: YAML syntax error: mapping values are not allowed here."),
        (
            "[a]: 1\n",
            "line 1: a key must be plain text, not a list.",
        ),
        ("? {a: 1}\n: 1\n", "line 1: a key must be plain text, not a mapping."),
        ("model: 1\nmodel: 2\n", "line 2: 'model' is given twice; keep one."),
        ("loss:\n  a: 1\n  a: 2\n", "line 3: 'loss.a' is given twice; keep one."),
        (
            "loss: {<<: 3}\n",
            "line 1: expected a mapping or list of mappings for merging, but found scalar.",
        ),
        ("seed: 2026-13-45\n", "a value cannot be read (month must be in 1..12)."),
    ],
)
def test_a_file_that_is_not_a_preset_says_where(tmp_path, text, said):
    p = write(tmp_path, text)
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value) == f"{p}{', ' if said[0] == 'l' else ': '}{said}"


def test_a_preset_nested_beyond_recursion_is_refused_in_one_sentence(tmp_path):
    p = write(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value) == f"{p}: nested too deeply to read as a preset."


def test_a_bad_value_is_named_at_its_own_line_not_its_mappings(tmp_path):
    p = write(tmp_path, BASE + "loss: {\n  <<: 3}\n")
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value) == (
        f"{p}, line 4: expected a mapping or list of mappings for merging, but found scalar."
    )
    p = write(tmp_path, BASE + "ablations:\n  - {seed: 1, seed: 2}\n")
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value) == f"{p}, line 4: 'ablations[0].seed' is given twice; keep one."


def test_a_key_near_target_is_suggested(tmp_path):
    assert error(tmp_path, "loss: {_targ: a.b}\n") == (
        "P, line 3: loss has no _target_ — did you mean '_targ'?; add the dotted path of what "
        "builds it, e.g. _target_: mytask.thing."
    )


def test_a_control_character_is_a_syntax_error_without_a_line(tmp_path):
    p = write(tmp_path, BASE + "name: a\x01b\n")
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value) == (
        f"{p}: YAML syntax error: unacceptable character #x0001: special characters are not "
        "allowed."
    )


def test_loads_refuses_text_longer_than_a_preset(tmp_path):
    p = tmp_path / "big.yaml"
    with pytest.raises(PresetError) as e:
        presets.loads("#" * (MAX_PRESET_BYTES + 1), p)
    assert str(e.value) == f"{p}: is larger than 1 MB; not a preset."
    ok = presets.loads(BASE + "#" * (MAX_PRESET_BYTES - len(BASE)), p)
    assert ok.get("model.hidden") == 8


def test_lines_are_recorded_for_keys_and_list_items(tmp_path):
    p = presets.loads(
        BASE + "stages:\n  - init\n  - speed\nloss:\n  inner:\n    x: 1\nablations:\n  - seed: 1\n",
        tmp_path / "p.yaml",
    )
    assert p.lines == {
        "model": 1,
        "model._target_": 1,
        "model.hidden": 1,
        "data": 2,
        "data._target_": 2,
        "stages": 3,
        "stages[0]": 4,
        "stages[1]": 5,
        "loss": 6,
        "loss.inner": 7,
        "loss.inner.x": 8,
        "ablations": 9,
        "ablations[0]": 10,
        "ablations[0].seed": 10,
    }


# ---------------------------------------------------------------- the file


def test_a_missing_file_suggests_a_near_name_or_lists_the_presets(tmp_path):
    write(tmp_path, BASE, "quickstart.yaml")
    with pytest.raises(PresetError) as e:
        presets.load(tmp_path / "quikstart.yaml")
    assert str(e.value) == (
        f"{tmp_path / 'quikstart.yaml'}: no such preset file — did you mean "
        f"{tmp_path / 'quickstart.yaml'}?"
    )
    write(tmp_path, BASE, "wxyz.yaml")  # alike only in '.yaml': not a suggestion
    with pytest.raises(PresetError) as e:
        presets.load(tmp_path / "abcd.yaml")
    assert str(e.value) == (
        f"{tmp_path / 'abcd.yaml'}: no such preset file; presets in {tmp_path}: "
        "quickstart.yaml, wxyz.yaml."
    )
    with pytest.raises(PresetError) as e:
        presets.load(tmp_path / "wxyz.yml")  # the other extension
    assert str(e.value) == (
        f"{tmp_path / 'wxyz.yml'}: no such preset file — did you mean {tmp_path / 'wxyz.yaml'}?"
    )
    os.remove(tmp_path / "wxyz.yaml")
    for name in ("b.yaml", "a.yml", "c.yaml", "d.yaml", "e.yaml", "f.yaml", "g.yaml"):
        write(tmp_path, BASE, name)
    with pytest.raises(PresetError) as e:
        presets.load(tmp_path / "zzzzzzzzzzzzzzzzzzzz.yaml")
    assert str(e.value) == (
        f"{tmp_path / 'zzzzzzzzzzzzzzzzzzzz.yaml'}: no such preset file; presets in {tmp_path}: "
        "a.yml, b.yaml, c.yaml, d.yaml, e.yaml, f.yaml."
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(PresetError) as e:
        presets.load(empty / "p.yaml")
    assert str(e.value) == f"{empty / 'p.yaml'}: no such preset file."
    with pytest.raises(PresetError) as e:
        presets.load(tmp_path / "nowhere" / "p.yaml")
    assert str(e.value) == (
        f"{tmp_path / 'nowhere' / 'p.yaml'}: no such preset file (the folder "
        f"{tmp_path / 'nowhere'} does not exist either)."
    )


def test_a_missing_file_in_the_current_folder_looks_there(tmp_path, monkeypatch):
    write(tmp_path, BASE, "quickstart.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PresetError) as e:
        presets.load("quickstar.yaml")
    assert str(e.value) == "quickstar.yaml: no such preset file — did you mean quickstart.yaml?"


def test_a_path_that_cannot_be_opened_says_why(tmp_path):
    with pytest.raises(PresetError) as e:
        presets.load(str(tmp_path / "a\0b.yaml"))
    assert str(e.value) == f"{tmp_path / 'a'}\0b.yaml: cannot read the preset (embedded null byte)."
    (tmp_path / "f").write_text("x")
    with pytest.raises(PresetError) as e:
        presets.load(tmp_path / "f" / "p.yaml")
    assert str(e.value) == f"{tmp_path / 'f' / 'p.yaml'}: cannot read the preset (Not a directory)."


def test_a_read_error_says_why(tmp_path, monkeypatch):
    p = write(tmp_path, BASE)

    def failing_read(fd, n):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(presets.os, "read", failing_read)
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value) == f"{p}: cannot read the preset (Input/output error)."


def test_a_folder_or_a_fifo_is_not_a_preset(tmp_path):
    with pytest.raises(PresetError) as e:
        presets.load(tmp_path)
    assert str(e.value) == f"{tmp_path}: is a folder, not a preset; give one of its .yaml files."
    fifo = tmp_path / "p.yaml"
    os.mkfifo(fifo)
    with pytest.raises(PresetError) as e:
        presets.load(fifo)
    assert str(e.value) == (
        f"{fifo}: is not a regular file (a FIFO, a device or a socket); a preset is a YAML file."
    )


def test_a_file_of_exactly_the_size_limit_is_read_and_one_byte_more_is_refused(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_bytes((BASE + "#" * (MAX_PRESET_BYTES - len(BASE))).encode())
    assert presets.load(p).get("model.hidden") == 8
    p.write_bytes((BASE + "#" * (MAX_PRESET_BYTES + 1 - len(BASE))).encode())
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value) == (
        f"{p}: is 1,048,577 bytes; a preset is at most 1 MB of YAML — is it the right file?"
    )


def test_a_file_that_lies_about_its_size_is_still_cut_at_the_limit(tmp_path, monkeypatch):
    p = tmp_path / "p.yaml"
    p.write_bytes(b"#" * (MAX_PRESET_BYTES + 1))
    real = os.fstat

    class Small:
        def __init__(self, st):
            self.st_mode, self.st_size = st.st_mode, 0  # like a file in /proc

    monkeypatch.setattr(presets.os, "fstat", lambda fd: Small(real(fd)))
    with pytest.raises(PresetError) as e:
        presets.read_preset_text(p)
    assert str(e.value) == f"{p}: is larger than 1 MB; not a preset."
    p.write_bytes(b"#" * MAX_PRESET_BYTES)
    assert len(presets.read_preset_text(p)) == MAX_PRESET_BYTES


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b"\xff\xfem\x00", "is UTF-16 text; save the preset as UTF-8."),
        (b"\xfe\xff\x00m", "is UTF-16 text; save the preset as UTF-8."),
        (b"model: 1\0\n", "holds NUL bytes, so it is binary, not a YAML preset."),
    ],
)
def test_a_file_that_is_not_utf8_text_is_named_so(tmp_path, raw, said):
    p = tmp_path / "p.yaml"
    p.write_bytes(raw)
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value) == f"{p}: {said}"


def test_a_bad_byte_is_named_with_its_line(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_bytes(BASE.encode() + b"name: caf\xe9\n")
    with pytest.raises(PresetError) as e:
        presets.load(p)
    assert str(e.value) == f"{p}, line 3: not UTF-8 text (byte 0xe9); save the preset as UTF-8."
    p.write_bytes(b"\xef\xbb\xbf" + BASE.encode())  # a byte-order mark is fine
    assert presets.load(p).get("model.hidden") == 8


# ---------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "text",
    ["lr", "=1", " =1", "1a=2", "a..b=1", "a.=1", "a b=1", "-x=1", ".a=1"],
)
def test_a_malformed_override_shows_the_form(text):
    with pytest.raises(PresetError) as e:
        parse_override(text)
    assert str(e.value) == (
        f"--set {text}: expected KEY=VALUE with a dotted key, e.g. --set optimizer.lr=3e-4."
    )


def test_an_override_is_split_at_the_first_equals_sign():
    assert parse_override(" optimizer.lr =3e-4") == ("optimizer.lr", 3e-4)
    assert parse_override("name=a=b") == ("name", "a=b")
    assert parse_override("_x.y_1=[1, 2]") == ("_x.y_1", [1, 2])
    assert parse_override("Zed.a=1") == ("Zed.a", 1)


def test_an_override_longer_than_a_preset_is_refused():
    with pytest.raises(PresetError) as e:
        parse_override("name=" + "x" * MAX_PRESET_BYTES)
    assert str(e.value) == "--set name=...: the value is longer than a whole preset may be."
    assert parse_override("name=" + "x" * (MAX_PRESET_BYTES - 5))[1] == "x" * (MAX_PRESET_BYTES - 5)


def test_a_bad_override_value_names_the_override():
    with pytest.raises(PresetError) as e:
        parse_override("seed=!!python/object:os.system 1")
    assert str(e.value) == (
        "--set seed=...: the value '!!python/object:os.system 1': the YAML tag "
        "'!!python/object:os.system' is not allowed in a preset (plain values, lists and "
        "mappings only); remove the tag."
    )


def test_overrides_make_the_sub_keys_they_need_and_leave_the_preset_alone(tmp_path):
    base = presets.loads(BASE, tmp_path / "p.yaml")
    p = presets.apply_overrides(base, {"loss._target_": "a.B", "train.steps": 3, "model.hidden": 4})
    assert p.data["loss"] == {"_target_": "a.B"} and p.data["train"] == {"steps": 3}
    assert p.get("model.hidden") == 4 and base.get("model.hidden") == 8
    assert p.lines == base.lines and p.path == base.path
    assert p.origins == {
        "loss._target_": "--set loss._target_=a.B",
        "train.steps": "--set train.steps=3",
        "model.hidden": "--set model.hidden=4",
    }
    again = presets.apply_overrides(p, {"seed": 1})
    assert set(again.origins) == {"loss._target_", "train.steps", "model.hidden", "seed"}
    assert "seed" not in p.origins


def test_an_override_under_a_value_that_is_not_a_mapping_names_the_value(tmp_path):
    with pytest.raises(PresetError) as e:
        load(tmp_path, overrides={"model.hidden.size": 3})
    assert str(e.value) == (
        "--set model.hidden.size=3: 'model.hidden' is 8 (a number), not a mapping, so it has no "
        "sub-keys to set."
    )
    with pytest.raises(PresetError) as e:
        load(tmp_path, overrides={"qqqq.x": 3})
    assert str(e.value) == f"--set qqqq.x=3: 'qqqq' is not a preset key; keys: {KEYS}."
    with pytest.raises(PresetError) as e:
        load(tmp_path, overrides={"optimiser.lr": 3})
    assert (
        str(e.value)
        == "--set optimiser.lr=3: 'optimiser' is not a preset key — did you mean 'optimizer'?"
    )


def test_an_error_in_an_overridden_value_names_the_override(tmp_path):
    assert error(tmp_path, "batch_size: 8\n", {"batch_size": 0}) == (
        "P (--set batch_size=0): batch_size must be an integer > 0, got 0 (a number)."
    )
    assert error(tmp_path, "", {"optimizer.lr": -1}) == (
        "P (--set optimizer.lr=-1): optimizer.lr must be a finite number > 0, got -1 (a number)."
    )
    long = "x" * 50
    assert error(tmp_path, "", {"device": long}) == (
        f"P (--set device={long[:37]}...): device must be auto, cpu, cuda or cuda:N, got '{long}' (text)."
    )


def test_an_override_is_shown_short(tmp_path):
    assert presets.override_origin("a", 3) == "--set a=3"
    assert presets.override_origin("a", [1, 2]) == "--set a=[1, 2]"
    assert presets.override_origin("a", {"b": 1}) == "--set a={b: 1}"
    assert presets.override_origin("a", {"b": {"c": [1]}}) == "--set a={b: {c: [1]}}"
    assert presets.override_origin("a", None) == "--set a=null"
    assert presets.override_origin("a", "x" * 40) == "--set a=" + "x" * 40
    assert presets.override_origin("a", "x" * 41) == "--set a=" + "x" * 37 + "..."
    assert presets.override_origin("a", list(range(30))).endswith("...")


# ---------------------------------------------------------------- the loaded preset


def test_a_loaded_preset_answers_with_defaults_and_dotted_keys(tmp_path):
    p = load(tmp_path, "loss: {_target_: a.B, inner: {x: 1}}\n")
    assert p.name == "p" and p.folder == tmp_path.resolve()
    assert p.get("seed") == 0 and p.get("seed", 5) == 0  # a schema default wins
    assert p.get("val_batch_size") is None and p.get("val_batch_size", 7) == 7
    assert p.get("optimizer") == {"_target_": "torch.optim.Adam", "lr": 1e-3}
    p.get("optimizer")["lr"] = 1.0  # a copy: the schema's default stays
    assert SCHEMA["optimizer"].default["lr"] == 1e-3 and p.get("optimizer.lr", 9) == 9
    assert p.get("loss.inner.x") == 1 and p.get("loss.inner.y", 2) == 2
    assert p.get("loss._target_.x", 3) == 3  # under text: nothing
    assert p.get("nothing") is None
    assert p.stage_values("train") == {}
    values = p.stage_values("loss")
    values["new"] = 1
    assert "new" not in p.data["loss"]
    assert load(tmp_path, "name: mine\n").name == "mine"


def test_where_names_the_line_or_the_override(tmp_path):
    p = presets.apply_overrides(
        presets.loads(BASE + "loss:\n  _target_: a.B\n", tmp_path / "p.yaml"), {"seed": 3}
    )
    assert p.where("loss._target_") == f"{tmp_path / 'p.yaml'}, line 4"
    assert p.where("loss.unknown.deeper") == f"{tmp_path / 'p.yaml'}, line 3"  # its parent's
    assert p.where("nothing") == str(tmp_path / "p.yaml")
    assert p.where("seed") == f"{tmp_path / 'p.yaml'} (--set seed=3)"
    assert str(p.error("loss", "bad.")) == f"{tmp_path / 'p.yaml'}, line 3: bad."


def test_the_resolved_preset_is_written_in_the_files_order(tmp_path):
    p = load(tmp_path, "seed: 1\nstages: [init, speed]\n")
    assert p.to_yaml() == (
        "model: {_target_: mytask.MLP, hidden: 8}\n"
        "data: {_target_: mytask.make_data}\n"
        "seed: 1\n"
        "stages: [init, speed]\n"
    )
    again = presets.loads(p.to_yaml(), tmp_path / "preset.yaml")
    assert again.data == p.data
    stages = ", ".join(["overfit_one"] * 7)  # a 98-character line: kept whole (up to 100)
    assert load(tmp_path, f"stages: [{stages}]\n").to_yaml().splitlines()[2] == (
        f"stages: [{stages}]"
    )


def test_an_override_of_a_default_optimizer_keeps_the_default(tmp_path):
    # `--set optimizer.lr=3e-4` (or an ablation {optimizer.lr: 3e-4}) on a preset that relies
    # on the default Adam: the default with that lr, not an optimizer without a _target_
    p = load(tmp_path, overrides={"optimizer.lr": 3e-4})
    assert p.get("optimizer") == {"_target_": "torch.optim.Adam", "lr": 3e-4}
    assert SCHEMA["optimizer"].default == {"_target_": "torch.optim.Adam", "lr": 1e-3}
    p = load(tmp_path, "optimizer: null\n", overrides={"optimizer.weight_decay": 0.1})
    assert p.get("optimizer") == {"_target_": "torch.optim.Adam", "lr": 1e-3, "weight_decay": 0.1}
    p = load(tmp_path, "optimizer: {_target_: torch.optim.SGD}\n", {"optimizer.lr": 2})
    assert p.get("optimizer") == {"_target_": "torch.optim.SGD", "lr": 2}
    p = load(tmp_path, overrides={"prune.rule": "median", "train.steps": 5})  # no default: new
    assert p.data["prune"] == {"rule": "median"} and p.data["train"] == {"steps": 5}
