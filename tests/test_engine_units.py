"""Engine pieces in isolation: the loop's logging, NaN detection and budgets; metrics;
telemetry with and without NVML; checkpoints and warm starts; the lazy CUDA readback."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch

from cockpit.launch import create_run
from engine import checkpoint
from engine.context import RunContext, WaitMeter
from engine.loop import Readback, train_loop
from engine.metrics import baseline, evaluate, scores_from_confusion
from engine.targets import add_import_path
from engine.telemetry import TelemetrySampler
from engine.torchfree import preset as presets
from engine.torchfree.runfolder import RunFolder
from tests.conftest import ZOO


@pytest.fixture
def ctx(workspace) -> RunContext:
    add_import_path(ZOO)
    preset = presets.load(ZOO / "blobs.yaml")
    folder = create_run(workspace, preset, stages=["train"])
    return RunContext(preset, folder, ["train"], folder.request())


def test_loop_logs_every_batch_and_val_every_n(ctx):
    model = ctx.build_model()
    opt = ctx.build_optimizer(model)
    result = train_loop(
        ctx, model, opt, ctx.train_batches(), steps=25, val_batches=ctx.val_batches(), val_every=5
    )
    assert result.steps == 25 and result.stopped == "steps"
    steps = ctx.folder.steps()
    assert list(steps["step"]) == list(range(1, 26))
    with_val = [int(s) for s, v in zip(steps["step"], steps["val_loss"]) if not math.isnan(v)]
    assert with_val == [1, 6, 11, 16, 21]
    assert all(d >= 0 for d in steps["data_s"]) and all(s > 0 for s in steps["step_s"])
    assert result.train_losses[-1] < result.train_losses[0]


def test_loop_stops_when_told_and_names_a_nonfinite_step(ctx):
    model = ctx.build_model()
    opt = ctx.build_optimizer(model)
    result = train_loop(
        ctx, model, opt, ctx.train_batches(), steps=500, until=lambda r: r.step == 7
    )
    assert result.stopped == "target" and result.steps == 7
    with torch.no_grad():
        model.net[0].weight.fill_(float("nan"))
    result = train_loop(ctx, model, opt, ctx.train_batches(), steps=50, start_step=100)
    assert (
        result.stopped == "nonfinite"
        and result.nonfinite_step == 101
        and result.nonfinite_what == "train"
    )


def test_loop_respects_its_wall_time_budget(ctx):
    model = ctx.build_model()
    opt = ctx.build_optimizer(model)
    result = train_loop(ctx, model, opt, ctx.train_batches(), steps=10**9, seconds=0.3)
    assert result.stopped == "seconds" and 0 < result.steps < 10**9


def test_cpu_readback_is_immediate():
    rb = Readback(torch.device("cpu"))
    rows = rb.push(3, 0.1, 0.2, 1e-3, torch.tensor(1.5, requires_grad=True) * 1, None)
    assert len(rows) == 1 and rows[0].train_loss == 1.5 and math.isnan(rows[0].val_loss)
    assert rb.flush() == []


def test_confusion_scores_match_hand_computation():
    # rows: truth, columns: prediction
    cm = torch.tensor([[3, 1], [0, 4]])
    s = scores_from_confusion(cm, "classification")
    assert s["accuracy"] == pytest.approx(7 / 8)
    f1_0 = 2 * 1.0 * 0.75 / 1.75
    f1_1 = 2 * 0.8 * 1.0 / 1.8
    assert s["macro_f1"] == pytest.approx((f1_0 + f1_1) / 2)
    seg = scores_from_confusion(cm, "segmentation")
    assert seg["miou"] == pytest.approx((3 / 4 + 4 / 5) / 2) and seg["pixel_acc"] == pytest.approx(
        7 / 8
    )


def test_evaluate_and_baselines(ctx):
    model = ctx.build_model()
    m = evaluate(model, ctx.val_loader(), ctx.loss_fn, "classification", ctx.device)
    assert set(m) >= {"val_loss", "accuracy", "macro_f1", "val_loss_se"}
    b = baseline(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 1, 1]), "classification", 2)
    assert b["accuracy"] == 0.25
    r = baseline(
        torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[2.0], [4.0]]), "regression", None
    )
    assert r["mae"] == pytest.approx(1.0)


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_telemetry_without_a_gpu_says_so_once(tmp_path):
    meter = WaitMeter()
    sampler = TelemetrySampler(tmp_path / "t.jsonl", meter, torch.device("cpu"))
    meter.add(0.25, 1.0)
    meter.add(0.25, 1.0)
    sampler.sample()
    sampler.sample()
    sampler.stop()
    header, first, second = read_rows(tmp_path / "t.jsonl")
    assert header["kind"] == "header" and "no GPU" in header["gpu_note"]
    assert first["data_wait"] == 0.25 and first["steps"] == 2 and "gpu" not in first
    assert second["data_wait"] is None and second["cpu"] >= 0 and second["rss_mb"] > 0


class FakeNvml(types.ModuleType):
    """Just enough of pynvml to drive the GPU branch of the sampler."""

    def __init__(self, fail_init: bool = False):
        super().__init__("pynvml")
        self.fail_init = fail_init
        self.shut = False

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetHandleByUUID(self, uuid):
        raise RuntimeError("no such uuid")

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetIndex(self, h):
        return h[1]

    def nvmlDeviceGetName(self, h):
        return b"Fake H200"

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=87)

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=2 * 2**30, total=80 * 2**30)

    def nvmlDeviceGetPowerUsage(self, h):
        raise RuntimeError("not supported")  # one failing field must not lose the others


def test_telemetry_reads_nvml_for_the_runs_gpu(tmp_path, monkeypatch):
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    device = types.SimpleNamespace(type="cuda", index=0)
    sampler = TelemetrySampler(tmp_path / "t.jsonl", WaitMeter(), device)
    sampler.sample()
    sampler.stop()
    header, row = read_rows(tmp_path / "t.jsonl")
    assert header["gpu_name"] == "Fake H200" and header["gpu_index"] == 0
    assert row["gpu"] == {
        "util": 87.0,
        "mem_used_mb": 2048.0,
        "mem_total_mb": 81920.0,
        "power_w": None,
        "index": 0,
    }
    assert fake.shut


def test_telemetry_survives_nvml_failing_to_start(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(fail_init=True))
    sampler = TelemetrySampler(
        tmp_path / "t.jsonl", WaitMeter(), types.SimpleNamespace(type="cuda", index=0)
    )
    sampler.sample()
    sampler.stop()
    header, row = read_rows(tmp_path / "t.jsonl")
    assert "NVML unavailable: NVML Shared Library Not Found" in header["gpu_note"]
    assert "gpu" not in row


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    folder = RunFolder(tmp_path)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in (10, 20, 30, 40, 50, 60):
        checkpoint.save(folder, model, opt, step, "train")
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == [
        "latest.json",
        "step_000000030.pt",
        "step_000000040.pt",
        "step_000000050.pt",
        "step_000000060.pt",
    ]
    assert folder.latest_checkpoint()["step"] == 60


def test_warm_start_keeps_new_hyperparameters_and_old_moments(tmp_path):
    folder = RunFolder(tmp_path)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = checkpoint.save(folder, model, opt, 7, "train")
    state = checkpoint.load(path, torch.device("cpu"))

    child = torch.nn.Linear(3, 2)
    child_opt = torch.optim.Adam(child.parameters(), lr=5e-2)
    step, note = checkpoint.warm_start(state, child, child_opt)
    assert step == 7 and "optimizer state" in note
    assert child_opt.param_groups[0]["lr"] == 5e-2
    assert torch.equal(child.weight, model.weight)
    assert torch.equal(child_opt.state[child.weight]["exp_avg"], opt.state[model.weight]["exp_avg"])

    sgd = torch.optim.SGD(child.parameters(), lr=0.1)
    _, note = checkpoint.warm_start(state, child, sgd)
    assert "does not fit" in note


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_loop_logs_every_batch_without_a_host_sync(ctx):
    ctx.device = torch.device("cuda")
    ctx.loss_fn = ctx.loss_fn.cuda()
    model = ctx.build_model()
    opt = ctx.build_optimizer(model)
    train, val = ctx.train_batches(), ctx.val_batches()  # pinned host memory on CUDA
    train_loop(ctx, model, opt, train, steps=5, val_batches=val)  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any implicit host<->device sync raises
    try:
        result = train_loop(ctx, model, opt, train, steps=200, val_batches=val, val_every=1)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert result.steps == 200
    assert all(
        math.isfinite(r.train_loss) and math.isfinite(r.val_loss) and r.gpu_s > 0
        for r in result.rows
    )
    assert len(ctx.folder.steps()) == 205
