"""One training step and one loop for every stage, one process or a DDP rank alike: stop rules,
non-finite detection and batchnorm's frozen mode behave the same everywhere."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from cockpit.launch import create_run
from engine.context import RunContext
from engine.control import Stopped
from engine.distributed.rank import Ranks
from engine.loop import freeze_batchnorm, train_loop
from engine.targets import add_import_path
from engine.torchfree import preset as presets
from engine.torchfree.runfolder import iter_runs
from tests.conftest import ROOT, ZOO, cockpit

BLOBS = ZOO / "blobs.yaml"


def _context(workspace, **overrides) -> RunContext:
    add_import_path(ZOO)
    preset = presets.load(BLOBS, overrides)
    folder = create_run(workspace, preset, overrides=overrides, stages=["train"])
    return RunContext(preset, folder, ["train"], folder.request())


@pytest.fixture
def one_rank(tmp_path):
    """A real gloo process group of one: DDP's wrapper and the ranks' lockstep, in-process."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    yield Ranks(0, 0, 1, torch.device("cpu"), "gloo")
    dist.destroy_process_group()


def _bn_modes_during_training(model: nn.Module) -> list[bool]:
    """Records each batchnorm layer's ``training`` flag at every forward in grad mode."""
    seen: list[bool] = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.register_forward_pre_hook(
                lambda mod, args: seen.append(mod.training) if torch.is_grad_enabled() else None
            )
    return seen


@pytest.mark.parametrize("under_ddp", [False, True])
def test_frozen_batchnorm_survives_the_val_forward(workspace, one_rank, under_ddp):
    ctx = _context(workspace, **{"model.batchnorm": True})
    model = ctx.build_model()
    freeze_batchnorm(model)
    seen = _bn_modes_during_training(model)
    stats = [m.running_mean.clone() for m in model.modules() if hasattr(m, "running_mean")]
    train_loop(
        ctx,
        model,
        ctx.build_optimizer(model),
        ctx.train_batches(),
        steps=6,
        val_batches=ctx.val_batches(),
        val_every=1,
        forward=one_rank.wrap(model) if under_ddp else None,
        lockstep=one_rank.lockstep() if under_ddp else None,
        log=False,
    )
    assert len(seen) == 6 and not any(seen), seen  # every train forward saw eval-mode batchnorm
    after = [m.running_mean for m in model.modules() if hasattr(m, "running_mean")]
    assert all(torch.equal(a, b) for a, b in zip(stats, after))  # init statistics kept


@pytest.mark.parametrize("under_ddp", [False, True])
def test_a_nonfinite_loss_stops_at_that_step(workspace, one_rank, under_ddp):
    ctx = _context(workspace, **{"model._target_": "zoo.NanAfter", "model.after": 7})
    model = ctx.build_model()
    result = train_loop(
        ctx,
        model,
        ctx.build_optimizer(model),
        ctx.train_batches(),
        steps=50,
        forward=one_rank.wrap(model) if under_ddp else None,
        lockstep=one_rank.lockstep() if under_ddp else None,
    )
    assert result.stopped == "nonfinite" and result.nonfinite_step == 7
    assert result.steps == 7 and math.isnan(result.train_losses[-1])
    assert list(ctx.folder.steps()["step"]) == list(range(1, 8))  # nothing logged after it
    assert next(model.calls) == 8  # and no step trained after it


def test_a_stop_request_raises_at_a_step_boundary_with_the_last_step(workspace):
    ctx = _context(workspace)
    model = ctx.build_model()

    def stop_at(step: int) -> None:
        if step == 12:
            ctx.stop.request()

    with pytest.raises(Stopped) as stopped:
        train_loop(
            ctx,
            model,
            ctx.build_optimizer(model),
            ctx.train_batches(),
            steps=100,
            every=stop_at,
            every_n=4,
        )
    assert stopped.value.step == 12
    assert list(ctx.folder.steps()["step"]) == list(range(1, 13))


@pytest.mark.slow
def test_under_ddp_a_nonfinite_loss_stops_both_ranks_at_that_step(workspace):
    r = cockpit(
        "run",
        str(BLOBS),
        "--set",
        "gpus=2",
        "--stages",
        "train",
        "--set",
        "model._target_=zoo.NanAfter",
        "--set",
        "model.after=7",
        "--set",
        "train={steps: 200, eval_every: 0, checkpoint_every: 0}",
        workspace=workspace,
        env={"COCKPIT_FAKE_GPUS": "0", "COCKPIT_DDP_TIMEOUT_S": "60"},
    )
    assert r.returncode == 1, r.stdout + r.stderr
    (folder,) = iter_runs(workspace)
    (train,) = folder.summary()["stages"]
    assert train["status"] == "fail" and "non-finite at step 7" in train["reason"]
    assert list(folder.steps()["step"]) == list(range(1, 8))  # rank 0 logged up to step 7 only


def _calls(pattern: str) -> set[str]:
    found = set()
    for path in (ROOT / "engine").rglob("*.py"):
        if re.search(pattern, path.read_text()):
            found.add(str(path.relative_to(ROOT)))
    return found


def test_the_training_step_is_written_once():
    # training is backward followed by an optimizer step; both are in engine/loop.py's TrainStep
    # alone (the checks' probes compute gradients — at init, to compare two runs — and step no
    # optimizer of the model's)
    assert _calls(r"\boptimizer\.step\(|GradScaler\(") <= {"engine/loop.py"}
    assert not (ROOT / "engine" / "ddp.py").exists()


def test_stages_do_not_import_the_launcher():
    for path in Path(ROOT / "engine" / "stages").glob("*.py"):
        assert "distributed.launch" not in path.read_text(), path


def test_the_imbalance_advice_works_as_written(workspace):
    # init suggests `loss: {_target_: torch.nn.CrossEntropyLoss, weight: [...]}`: the list
    # must reach torch as the tensor it expects
    weights = [0.5, 1.0, 2.0, 4.0]
    ctx = _context(workspace, loss={"_target_": "torch.nn.CrossEntropyLoss", "weight": weights})
    assert torch.equal(ctx.loss_fn.weight, torch.tensor(weights))
    model = ctx.build_model()
    result = train_loop(ctx, model, ctx.build_optimizer(model), ctx.train_batches(), steps=3)
    assert result.steps == 3 and all(math.isfinite(x) for x in result.train_losses)


@pytest.mark.parametrize(("steps", "evals"), [(40, [20, 40]), (50, [20, 40, 50])])
def test_the_train_stage_evaluates_its_last_step_once(workspace, steps, evals):
    """A run whose last step is an eval step gets one row for it in evals.jsonl, not two (the
    periodic eval and the final one used to log the same step twice); one that ends between
    eval steps gets its final evaluation as its own row."""
    from engine.torchfree.runfolder import RunFolder
    from tests.conftest import run_inprocess, stage

    overrides = {"train.steps": steps, "train.eval_every": 20, "train.checkpoint_every": 20}
    code, summary, path = run_inprocess(BLOBS, workspace, overrides=overrides, stages=["train"])
    assert code == 0, summary
    folder = RunFolder(path)
    assert [e["step"] for e in folder.evals()] == evals
    assert folder.latest_checkpoint()["step"] == steps
    train = stage(summary, "train")
    final = folder.evals()[-1]
    assert train["metrics"]["final_val_loss"] == pytest.approx(final["val_loss"])
