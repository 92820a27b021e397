"""Mixed precision and torch.compile from the preset, honoured by the one training step; the
speed stage times the alternatives and says which to use. All of it runs on the CPU (bf16 and
fp16 autocast and the inductor compiler exist there too)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cockpit.launch import create_run
from engine.context import RunContext
from engine.loop import TrainStep, train_loop
from engine.targets import add_import_path
from engine.torchfree import preset as presets
from engine.torchfree.preset import PresetError
from tests.conftest import ZOO, check, run_inprocess, stage

BLOBS = ZOO / "blobs.yaml"


def _context(workspace, **overrides) -> RunContext:
    add_import_path(ZOO)
    preset = presets.load(BLOBS, overrides)
    presets.validate(preset)
    folder = create_run(workspace, preset, overrides=overrides, stages=["train"])
    return RunContext(preset, folder, ["train"], folder.request())


def _first_linear_dtypes(model: nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    linear.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)]
)
def test_the_step_runs_forward_in_the_preset_precision(workspace, precision, dtype):
    ctx = _context(workspace, precision=precision)
    model = ctx.build_model()
    seen = _first_linear_dtypes(model)
    result = train_loop(
        ctx,
        model,
        ctx.build_optimizer(model),
        ctx.train_batches(),
        steps=30,
        val_batches=ctx.val_batches(),
    )
    assert set(seen) == {dtype}  # train and val forwards alike
    assert all(math.isfinite(x) for x in result.train_losses)
    assert result.train_losses[-1] < result.train_losses[0]
    assert next(model.parameters()).dtype == torch.float32  # weights stay fp32: autocast only


def test_fp16_gets_a_gradient_scaler(workspace):
    ctx = _context(workspace, precision="fp16")
    model = ctx.build_model()
    step = TrainStep(
        model, ctx.build_optimizer(model), ctx.loss_fn, device=ctx.device, precision="fp16"
    )
    assert step.scaler is not None
    before = [p.detach().clone() for p in model.parameters()]
    x, y = next(iter(ctx.train_batches()))
    loss = step((x, y))
    assert math.isfinite(float(loss.detach())) and step.scaler.get_scale() > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("precision", "fp8", "precision must be one of fp32, bf16, fp16"),
        ("compile", "fast", "compile must be true, false or a torch.compile mode"),
        ("compile", 3, "compile must be true, false or a torch.compile mode"),
    ],
)
def test_wrong_precision_or_compile_is_one_sentence(key, value, words):
    with pytest.raises(PresetError, match=words):
        presets.validate(presets.load(BLOBS, {key: value}))


def test_the_speed_stage_compares_precisions_and_names_its_choice(workspace):
    code, summary, _ = run_inprocess(
        BLOBS, workspace, stages=["speed"], overrides={"speed.batches": 4}
    )
    assert code == 0, summary.get("reason")
    speed = stage(summary, "speed")
    detail = check(speed, "precision")["detail"]
    assert "fp32" in detail and "bf16 autocast" in detail
    assert speed["metrics"]["compute_s_fp32"] > 0 and speed["metrics"]["compute_s_bf16"] > 0
    assert "is the right choice here" in detail or "set precision: bf16" in detail


@pytest.mark.slow
def test_compile_true_trains_a_compiled_model(workspace):
    ctx = _context(workspace, compile=True)
    model = ctx.build_model()
    assert model._compiled_call_impl is not None  # compiled in place: state_dict keys unchanged
    assert all(not k.startswith("_orig_mod") for k in model.state_dict())
    result = train_loop(ctx, model, ctx.build_optimizer(model), ctx.train_batches(), steps=20)
    assert result.steps == 20 and result.train_losses[-1] < result.train_losses[0]
