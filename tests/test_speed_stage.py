"""The speed stage (engine/stages/speed.py) as a user reads it: which numbers it measures and
names, the advice it gives a data-bound loop, the precision (or torch.compile) it recommends
and when, and the summary and reason that carry them.

The measurements run on a scripted clock: the stage's ``time`` is a stand-in that only moves
when the stand-in loader hands out a batch, the step runs (a real training step, its cost set
per precision) or the real loop is done — so every number the stage reports has one right
value. One real run (the real loop, real time) checks what the clock cannot: that its rows stay
out of steps.bin and every metric is written. tests/test_boundaries.py holds the verdict lines
(the data-bound share, the one-second batch); tests/test_speed_busy.py the crowded machine.
"""

from __future__ import annotations

import math
import os
import warnings
from types import SimpleNamespace

import pytest
import torch

import engine.stages.speed as speed
from cockpit.launch import create_run
from engine.context import RunContext
from engine.loop import LoopResult, Row, TrainStep
from engine.stages.base import secs
from engine.stages.speed import SpeedStage, advice, precision_check
from engine.targets import add_import_path
from engine.torchfree import preset as presets
from engine.torchfree.ladder import SpeedSettings
from tests.conftest import ZOO, check, run_inprocess, stage

BLOBS = ZOO / "blobs.yaml"
CORES = 8


class Clock:
    """The stage's ``time``: wall and CPU seconds that move only when told."""

    def __init__(self):
        self.wall, self.cpu = 1000.0, 50.0

    def perf_counter(self) -> float:
        return self.wall

    def process_time(self) -> float:
        return self.cpu

    def advance(self, wall: float, cpu: float | None = None) -> None:
        self.wall += wall
        self.cpu += wall if cpu is None else cpu


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(speed, "time", c)
    monkeypatch.setattr(speed, "cpu_count", lambda: CORES)
    monkeypatch.setattr(speed, "_load", lambda: 0.5)
    return c


class TimedLoader:
    """A DataLoader stand-in: each ``iter()`` starts its workers (``start`` s, as a real
    DataLoader's does, at once), then each batch takes ``each`` s. Real batches."""

    def __init__(self, clock: Clock, real, start: float, each: float):
        self.clock, self.real, self.start, self.each = clock, real, start, each
        self.sampler = None
        self.iters = self.drawn = 0

    def __iter__(self):
        self.iters += 1
        self.clock.advance(self.start)
        return self._batches(iter(self.real))

    def _batches(self, it):
        for batch in it:
            self.clock.advance(self.each)
            self.drawn += 1
            yield batch


def _context(workspace, **overrides) -> RunContext:
    add_import_path(ZOO)
    preset = presets.load(BLOBS, {"num_workers": 0, **overrides})
    presets.validate(preset)
    folder = create_run(workspace, preset, stages=["speed"])
    return RunContext(preset, folder, ["speed"], folder.request())


def _row(i: int, data_s: float, step_s: float) -> Row:
    return Row(
        step=i + 1,
        time=0.0,
        train_loss=1.0,
        val_loss=1.0,
        data_s=data_s,
        step_s=step_s,
        gpu_s=math.nan,
        lr=1e-3,
    )


class Script:
    """What each part of the stage costs on the scripted clock, and what the stage asked for."""

    def __init__(self, clock: Clock, ctx: RunContext, monkeypatch, **costs):
        self.clock, self.ctx = clock, ctx
        self.costs = {
            "start": 0.5,  # train loader's worker start-up
            "data": 0.004,  # per train batch
            "val_start": 0.3,
            "val": 0.002,
            "fp32": 0.02,  # a training step, per precision
            "bf16": 0.01,
            "fp16": 0.008,
            "compiled": 0.012,
            "loop_wall": 0.5,  # the real loop
            "loop_cpu": 0.1,
            **costs,
        }
        self.rows: list[tuple[float, float]] = [(0.9, 0.5)] + [(0.01, 0.04)] * 5
        self.steps: list[TrainStep] = []
        self.loop_calls: list[dict] = []
        self.compiled = False
        self.loaders: list[TimedLoader] = []
        self.val_drawn = 0
        real_loader = ctx.train_loader
        c = self.costs
        # real batches, from this process (the preset's num_workers is only read for advice)

        def train_loader():
            loader = TimedLoader(clock, real_loader(workers=False), c["start"], c["data"])
            self.loaders.append(loader)
            return loader

        def val_batches():
            def gen():
                clock.advance(c["val_start"])
                while True:
                    for batch in real_loader(workers=False):
                        self.val_drawn += 1
                        yield batch
                        clock.advance(c["val"])

            return gen()

        ctx.train_loader = train_loader
        ctx.val_batches = val_batches
        build_model = ctx.build_model

        def build():
            model = build_model()

            def compile_(*a, **k):
                self.compiled = True

            model.compile = compile_
            return model

        ctx.build_model = build
        script = self

        class TimedStep(TrainStep):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                self.calls = 0
                script.steps.append(self)

            def __call__(self, batch):
                loss = super().__call__(batch)
                self.calls += 1
                cost = "compiled" if script.compiled else self.precision
                clock.advance(script.costs[cost])
                return loss

        monkeypatch.setattr(speed, "TrainStep", TimedStep)

        def train_loop(ctx_, model, optimizer, batches, **kw):
            self.loop_calls.append({"ctx": ctx_, "model": model, "optimizer": optimizer, **kw})
            clock.advance(c["loop_wall"], c["loop_cpu"])
            return LoopResult(rows=[_row(i, d, s) for i, (d, s) in enumerate(self.rows)])

        monkeypatch.setattr(speed, "train_loop", train_loop)

    def run(self, **settings):
        s = SpeedSettings(**{"batches": 4, "seconds": 100.0, **settings})
        return SpeedStage(s).run(self.ctx)


@pytest.fixture
def scripted(workspace, clock, monkeypatch):
    def make(**overrides):
        costs = overrides.pop("costs", {})
        return Script(clock, _context(workspace, **overrides), monkeypatch, **costs)

    return make


def by_name(verdict, name: str):
    found = [c for c in verdict.checks if c.name == name]
    assert len(found) == 1, [c.name for c in verdict.checks]
    return found[0]


# ---------------------------------------------------------------- the numbers measured


def test_each_measurement_is_per_batch_with_its_start_up_timed_apart(scripted):
    sc = scripted()
    v = sc.run(compare_precision=False)
    m = v.metrics
    assert m["first_batch_s"] == pytest.approx(0.5 + 0.004)  # worker start-up + one batch
    assert m["data_s_per_batch"] == pytest.approx(0.004)
    assert m["val_data_s_per_batch"] == pytest.approx(0.002)
    assert m["compute_s_per_batch"] == pytest.approx(0.02)
    # the real loop's window: its own loader starting (0.5 s, on the CPU) and the loop
    assert m["loop_cpu_share"] == pytest.approx((0.5 + 0.1) / (0.5 + 0.5))
    # the loop's first step (start-up) is left out of its medians
    assert m["loop_s_per_batch"] == pytest.approx(0.04)
    assert m["data_wait_share"] == pytest.approx(0.25)
    assert m["batches_per_s"] == pytest.approx(25.0)
    assert m["data_bound"] == 0.0
    assert set(m) == {
        "data_s_per_batch",
        "val_data_s_per_batch",
        "first_batch_s",
        "compute_s_per_batch",
        "loop_cpu_share",
        "loop_s_per_batch",
        "data_wait_share",
        "batches_per_s",
        "data_bound",
    }
    # the workers started once for the data measurement, once for the real loop
    assert [loader.iters for loader in sc.loaders] == [1, 1]


def test_each_measurement_takes_the_batches_asked_for(scripted):
    sc = scripted()
    sc.run(compare_precision=False, batches=3)
    data, _loop = sc.loaders
    assert data.drawn == 1 + 3  # the first batch (start-up), then 3 timed
    assert sc.val_drawn == 1 + 3
    (step,) = sc.steps
    assert step.calls == 2 + 3  # two warm-up replays, then 3 timed
    assert step.precision == "fp32" and step.device == sc.ctx.device
    # the real loop: 3 steps after its first (start-up) step, under the same cap
    (call,) = sc.loop_calls
    assert call["steps"] == 3 + 1 and call["seconds"] == 100.0
    assert call["val_every"] == 1 and call["val_batches"] is not None  # val batches, as in training
    assert call["log"] is False  # its rows time a few steps, not a curve for steps.bin
    assert call["ctx"] is sc.ctx and call["model"] is step.model
    assert call["optimizer"] is step.optimizer


def test_one_batch_per_measurement_is_timed_as_one(scripted):
    m = scripted().run(compare_precision=False, batches=1).metrics
    assert m["data_s_per_batch"] == pytest.approx(0.004)
    assert m["val_data_s_per_batch"] == pytest.approx(0.002)
    assert m["compute_s_per_batch"] == pytest.approx(0.02)


def test_the_step_timed_is_the_one_training_runs(scripted):
    sc = scripted(precision="bf16")
    v = sc.run(compare_precision=False)
    (step,) = sc.steps
    assert step.precision == "bf16" and step.custom is sc.ctx.custom
    assert step.loss_fn is sc.ctx.loss_fn and step.device == sc.ctx.device
    assert v.metrics["compute_s_per_batch"] == pytest.approx(0.01)


COUNTED_STEP = '''
import torch.nn.functional as F

CALLS = []


def counted(models, batch, scale=1.0):
    """A custom step (docs/custom-step.md): its own loss, a named extra, a call counter."""
    x, y = batch
    CALLS.append(len(y))
    ce = F.cross_entropy(models(x), y) * scale
    return {"loss": ce, "half_ce": ce * 0.5}
'''


def test_a_custom_step_is_the_step_timed(scripted, tmp_path, monkeypatch):
    """The compute measurement replays the preset's own step (``step:``), not the default
    loss(model(x), y): the user's function is what gets called and timed, its named losses
    come back, and precision is not compared (the step owns its precision)."""
    import sys

    (tmp_path / "speed_counted_step.py").write_text(COUNTED_STEP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "speed_counted_step", raising=False)
    sc = scripted(step={"_target_": "speed_counted_step.counted", "scale": 2.0})
    user = sys.modules["speed_counted_step"]
    assert sc.ctx.custom is not None and user.CALLS == []
    v = sc.run(batches=3)
    (step,) = sc.steps
    assert step.custom is sc.ctx.custom
    assert len(user.CALLS) == step.calls == 2 + 3  # two warm-up replays, then 3 timed
    assert set(user.CALLS) == {sc.ctx.preset.get("batch_size")}  # the first train batch
    assert set(step.named) == {"half_ce"}  # the user's named loss, from the user's step
    assert v.metrics["compute_s_per_batch"] == pytest.approx(0.02)
    assert by_name(v, "precision").status == "skip"
    assert not any(k.startswith("compute_s_") and k != "compute_s_per_batch" for k in v.metrics)


def test_the_seconds_cap_ends_each_measurement(scripted):
    # a loader that takes 30 s a batch: a 50 s cap stops the data measurement after 2 batches
    sc = scripted(costs={"data": 30.0, "val": 30.0, "fp32": 30.0})
    v = sc.run(compare_precision=False, batches=1000, seconds=50.0)
    m = v.metrics
    assert m["data_s_per_batch"] == pytest.approx(30.0)
    assert m["val_data_s_per_batch"] == pytest.approx(30.0)
    assert m["compute_s_per_batch"] == pytest.approx(30.0)


def test_a_loop_of_one_step_is_judged_on_that_step(scripted):
    sc = scripted()
    sc.rows = [(0.2, 0.5)]  # the seconds cap cut the loop after its first step
    m = sc.run(compare_precision=False).metrics
    assert m["loop_s_per_batch"] == pytest.approx(0.5)
    assert m["data_wait_share"] == pytest.approx(0.4)


def test_a_step_the_clock_could_not_see_is_left_out_of_the_wait_share(scripted):
    sc = scripted()
    sc.rows = [(0.9, 0.5), (0.01, 0.04), (0.0, 0.0), (0.02, 0.04), (0.03, 0.04)]
    m = sc.run(compare_precision=False).metrics
    assert m["data_wait_share"] == pytest.approx(0.5)  # median of 0.25, 0.5, 0.75


# ---------------------------------------------------------------- the verdict as it reads


def test_a_compute_bound_pass_says_so_with_the_numbers(scripted):
    sc = scripted()
    v = sc.run(compare_precision=False)
    assert v.status == "pass"
    assert v.reason == (
        f"compute-bound: {secs(0.04)} per batch (25 batches/s), data wait 25% · "
        f"data alone {secs(0.004)}, compute alone {secs(0.02)} per batch"
    )
    assert by_name(v, "batch_time").status == "pass"
    assert by_name(v, "batch_time").detail == f"{secs(0.04)} per batch (limit 1 s)"
    assert by_name(v, "data_wait").detail == "the loop waits on data 25% of the time"
    precision = by_name(v, "precision")
    assert precision.status == "skip"
    assert precision.detail == "not compared (speed.compare_precision is off)"
    assert [c.name for c in v.checks] == ["batch_time", "data_wait", "precision"]


def test_a_data_bound_loop_warns_naming_the_knobs(scripted):
    sc = scripted()
    sc.rows = [(0.0, 0.5)] + [(0.03, 0.04)] * 4  # 75% of each step waits on data
    v = sc.run(compare_precision=False)
    assert v.metrics["data_bound"] == 1.0 and v.status == "warn"
    wait = by_name(v, "data_wait")
    assert wait.status == "warn"
    assert wait.detail == (
        f"data-bound: the loop waits on the loader 75% of the time (data alone {secs(0.004)} "
        f"per batch, compute alone {secs(0.02)}) — set num_workers (now 0; this machine has "
        f"{CORES} cores); make __getitem__ cheaper (decode or augment less, cache)"
    )
    summary = (
        f"data-bound: {secs(0.04)} per batch (25 batches/s), data wait 75% · "
        f"data alone {secs(0.004)}, compute alone {secs(0.02)} per batch"
    )
    assert v.reason == f"{wait.detail} · {summary}"  # a warning carries the numbers too


def test_workers_restarting_every_epoch_are_told_what_their_start_costs(scripted):
    sc = scripted(num_workers=2, persistent_workers=False)
    sc.rows = [(0.0, 0.5)] + [(0.03, 0.04)] * 4
    detail = by_name(sc.run(compare_precision=False), "data_wait").detail
    # the first batch of a fresh loader: its workers' start-up and one batch
    tip = f"set persistent_workers: true (workers restart every epoch, {secs(0.504)} each time)"
    assert tip in detail and f"raise num_workers (now 2 of {CORES} cores)" in detail


@pytest.mark.parametrize(
    ("data_bound", "share", "bound"), [(0.5, 0.4, False), (0.5, 0.6, True), (0.2, 0.25, True)]
)
def test_the_data_bound_line_is_the_setting(scripted, data_bound, share, bound):
    sc = scripted()
    sc.rows = [(0.0, 0.1)] + [(share * 0.1, 0.1)] * 3
    v = sc.run(compare_precision=False, data_bound=data_bound)
    assert v.metrics["data_bound"] == (1.0 if bound else 0.0)
    assert by_name(v, "data_wait").status == ("warn" if bound else "pass")
    assert v.reason.startswith("data-bound" if bound else "compute-bound")


def test_a_slow_batch_fails_with_the_summary_in_the_reason(scripted):
    sc = scripted(costs={"fp32": 0.6})  # the step alone is slow: the model is what is slow
    sc.rows = [(0.1, 2.0)] * 3
    v = sc.run(compare_precision=False)
    assert v.status == "fail"
    got = by_name(v, "batch_time")
    assert got.status == "fail"
    assert got.detail == (
        f"one batch takes {secs(2.0)}, over 1 s: shrink the model or the batch until the "
        "ladder runs fast, then scale up"
    )
    assert v.reason == (
        f"{got.detail} · compute-bound: {secs(2.0)} per batch (0 batches/s), data wait 5% · "
        f"data alone {secs(0.004)}, compute alone {secs(0.6)} per batch"
    )


def test_a_loop_far_slower_than_its_parts_warns_with_them(scripted):
    """The parts alone: train batch + val batch + 1.5 steps (the val forward is half a step):
    4 + 2 + 30 = 36 ms, well inside the limit; the loop's 2 s went elsewhere."""
    sc = scripted()
    sc.rows = [(0.1, 2.0)] * 3
    v = sc.run(compare_precision=False)
    got = by_name(v, "batch_time")
    assert got.status == "warn" and v.status == "warn"
    assert got.detail == (
        f"one batch took {secs(2.0)} in the loop, over 1 s, but its parts measured alone take "
        f"{secs(0.036)} (loader, step and val batch): the time went elsewhere — other processes "
        f"on this machine (load 0.5 on {CORES} cores) or work between steps (a callback, a hook, "
        "logging); not judged — run the speed stage again when the machine is quieter"
    )


def test_a_slow_loop_on_a_crowded_machine_is_not_judged(scripted, monkeypatch):
    sc = scripted(costs={"fp32": 0.6, "start": 0.0})  # the loop got 20% of a core
    sc.rows = [(0.1, 2.0)] * 3
    monkeypatch.setattr(speed, "_load", lambda: 3.0 * CORES + 1)
    v = sc.run(compare_precision=False)
    got = by_name(v, "batch_time")
    assert got.status == "warn"
    assert got.detail == (
        f"one batch took {secs(2.0)}, over 1 s, but the machine is busy (load 25.0 on {CORES} "
        "cores; the loop got 20% of a core): not judged — run the speed stage again when it is "
        "quieter"
    )
    sc.costs["loop_cpu"] = 0.5  # the loop had its core: the time is its own
    assert by_name(sc.run(compare_precision=False), "batch_time").status == "fail"


# ---------------------------------------------------------------- the precision it recommends


def test_a_faster_precision_is_recommended_with_both_timings(scripted):
    sc = scripted()
    v = sc.run()
    got = by_name(v, "precision")
    timings = f"fp32 {secs(0.02)}, bf16 autocast {secs(0.01)}"
    assert got.status == "pass"  # advice, not a problem: the ladder runs with the tricks off
    assert got.detail == (
        f"bf16 autocast is 2.0× faster per batch than fp32 on cpu ({timings}): "
        "set precision: bf16 once the ladder passes"
    )
    assert v.metrics["compute_s_fp32"] == pytest.approx(0.02)
    assert v.metrics["compute_s_bf16"] == pytest.approx(0.01)
    assert v.status == "pass" and v.reason == (
        f"compute-bound: {secs(0.04)} per batch (25 batches/s), data wait 25% · "
        f"data alone {secs(0.004)}, compute alone {secs(0.02)} per batch · "
        "bf16 autocast is 2.0× faster per batch than fp32 on cpu: "
        "set precision: bf16 once the ladder passes"
    )
    fp32, bf16 = sc.steps
    assert bf16.model is fp32.model and bf16.optimizer is fp32.optimizer  # the same model


def test_torch_compile_is_timed_when_asked_and_recommended_when_faster(scripted):
    sc = scripted(costs={"bf16": 0.019, "compiled": 0.005})
    v = sc.run(compare_compile=True)
    assert sc.compiled
    got = by_name(v, "precision")
    assert got.detail == (
        "torch.compile (fp32) is 4.0× faster per batch than fp32 on cpu "
        f"(fp32 {secs(0.02)}, bf16 autocast {secs(0.019)}, torch.compile (fp32) {secs(0.005)}): "
        "set compile: true once the ladder passes"
    )
    assert v.metrics["compute_s_compile"] == pytest.approx(0.005)
    assert v.reason.endswith(
        " · torch.compile (fp32) is 4.0× faster per batch than fp32 on cpu: "
        "set compile: true once the ladder passes"
    )


def test_the_right_choice_adds_nothing_to_the_summary(scripted):
    sc = scripted(costs={"bf16": 0.019})
    v = sc.run()
    got = by_name(v, "precision")
    assert got.detail == f"fp32 is the right choice here (fp32 {secs(0.02)}, bf16 autocast 19 ms)"
    assert v.reason.endswith(f"compute alone {secs(0.02)} per batch")


def test_compile_asked_for_is_answered_in_the_summary_even_when_nothing_wins(scripted):
    # `--set speed.compare_compile=true` costs a compilation: the line `cockpit run` prints
    # must say what came of it, not only the precision check's detail
    sc = scripted(costs={"bf16": 0.019, "compiled": 0.03})
    v = sc.run(compare_compile=True)
    timings = f"fp32 {secs(0.02)}, bf16 autocast {secs(0.019)}, torch.compile (fp32) {secs(0.03)}"
    assert by_name(v, "precision").detail == f"fp32 is the right choice here ({timings})"
    assert v.reason.endswith(
        f"compute alone {secs(0.02)} per batch · no switch saves 15% ({timings}): keep fp32"
    )


def test_a_compiled_preset_is_not_compiled_again(monkeypatch):
    times = {"fp32": 1.0, "bf16": 0.9}
    got, metrics, asked = _precision(monkeypatch, times, compare_compile=True, compiled=True)
    assert asked == ["bf16"] and "compute_s_compile" not in metrics
    assert "torch.compile" not in got.detail
    got, metrics, asked = _precision(monkeypatch, times, compare_compile=True)
    assert asked == ["bf16", "compile"] and metrics["compute_s_compile"] == 0.5
    assert got.detail.endswith("set compile: true once the ladder passes")


class FakeStep:
    def __init__(self):
        self.model = SimpleNamespace(compile=lambda: None)
        self.optimizer, self.loss_fn = object(), object()


def _precision(monkeypatch, times: dict, *, now="fp32", device="cpu", compiled=False, **settings):
    """precision_check with each precision's compute time given."""
    asked = []

    def timed(variant, batch, s, dev):
        if variant is step:  # the preset's own step, compiled
            asked.append("compile")
            return 0.5
        asked.append(variant.precision)
        assert batch == "batch" and dev == torch.device(device) and s.batches == 7
        assert variant.model is step.model and variant.optimizer is step.optimizer
        assert variant.loss_fn is step.loss_fn and variant.device == torch.device(device)
        return times[variant.precision]

    monkeypatch.setattr(speed, "_time_compute", timed)
    step = FakeStep()
    ctx = SimpleNamespace(
        device=torch.device(device), precision=now, custom=None, preset={"compile": compiled}
    )
    s = SpeedSettings(batches=7, **settings)
    metrics: dict = {}
    got = precision_check(ctx, step, "batch", times[now], s, metrics)
    return got, metrics, asked


@pytest.mark.parametrize(
    ("bf16", "advised"),
    [(0.85, False), (math.nextafter(0.85, 0.0), True), (0.5, True), (1.2, False)],
)
def test_a_switch_must_save_at_least_15_percent(monkeypatch, bf16, advised):
    got, metrics, asked = _precision(monkeypatch, {"fp32": 1.0, "bf16": bf16})
    assert asked == ["bf16"]  # the preset's own precision is the measurement already made
    assert metrics == {"compute_s_fp32": 1.0, "compute_s_bf16": bf16}
    assert got.status == "pass"
    assert ("set precision: bf16" in got.detail) is advised, got.detail
    if not advised:
        assert got.detail == (
            f"fp32 is the right choice here (fp32 {secs(1.0)}, bf16 autocast {secs(bf16)})"
        )


def test_a_preset_in_bf16_is_told_when_fp32_is_faster(monkeypatch):
    got, _, asked = _precision(monkeypatch, {"fp32": 0.3, "bf16": 0.5}, now="bf16")
    assert asked == ["fp32"]
    assert got.detail == (
        "fp32 is 1.7× faster per batch than bf16 autocast on cpu "
        f"(bf16 autocast {secs(0.5)}, fp32 {secs(0.3)}): set precision: fp32 once the ladder passes"
    )


@pytest.mark.parametrize(("bf16_ok", "options"), [(True, ["bf16", "fp16"]), (False, ["fp16"])])
def test_a_gpu_also_compares_fp16_and_bf16_where_supported(monkeypatch, bf16_ok, options):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    times = {"fp32": 1.0, "bf16": 0.6, "fp16": 0.5}
    with warnings.catch_warnings():  # no CUDA here: torch says fp16's GradScaler is off
        warnings.simplefilter("ignore")
        got, metrics, asked = _precision(monkeypatch, times, device="cuda")
    assert asked == options
    assert set(metrics) == {f"compute_s_{p}" for p in ["fp32", *options]}
    assert got.detail.startswith("fp16 autocast is 2.0× faster per batch than fp32 on cuda (")
    assert got.detail.endswith("): set precision: fp16 once the ladder passes")


def test_no_comparison_when_switched_off_or_for_a_custom_step(monkeypatch):
    monkeypatch.setattr(speed, "_time_compute", lambda *a: pytest.fail("timed"))
    ctx = SimpleNamespace(device=torch.device("cpu"), precision="fp32", custom=None, preset={})
    off = precision_check(ctx, FakeStep(), None, 1.0, SpeedSettings(compare_precision=False), {})
    assert (off.name, off.status) == ("precision", "skip")
    assert off.detail == "not compared (speed.compare_precision is off)"
    ctx.custom = object()  # the user's own step: it owns its precision
    metrics: dict = {}
    custom = precision_check(ctx, FakeStep(), None, 1.0, SpeedSettings(), metrics)
    assert (custom.name, custom.status) == ("precision", "skip") and metrics == {}


# ---------------------------------------------------------------- the advice for a data-bound loop


def _advice(monkeypatch, device="cpu", first_s=2.5, **preset):
    monkeypatch.setattr(speed, "cpu_count", lambda: CORES)
    settings = {"num_workers": 0, "pin_memory": "auto", "persistent_workers": "auto"} | preset
    ctx = SimpleNamespace(preset=settings, device=torch.device(device))
    return advice(ctx, first_s)


CHEAPER = "make __getitem__ cheaper (decode or augment less, cache)"


def test_no_workers_is_told_to_use_the_cores(monkeypatch):
    assert _advice(monkeypatch) == [
        f"set num_workers (now 0; this machine has {CORES} cores)",
        CHEAPER,
    ]


@pytest.mark.parametrize(
    ("workers", "raise_it"), [(1, True), (CORES - 2, True), (CORES - 1, False)]
)
def test_fewer_workers_than_cores_is_told_to_raise_them(monkeypatch, workers, raise_it):
    tips = _advice(monkeypatch, num_workers=workers)
    raised = f"raise num_workers (now {workers} of {CORES} cores)"
    assert (raised in tips) is raise_it
    assert tips[-2:] == ["raise prefetch_factor (now 2)", CHEAPER]  # with workers, prefetch


def test_prefetch_factor_advice_names_the_current_value(monkeypatch):
    tips = _advice(monkeypatch, num_workers=CORES, prefetch_factor=4)
    assert tips == ["raise prefetch_factor (now 4)", CHEAPER]


def test_pin_memory_is_advised_on_cuda_only_when_switched_off(monkeypatch):
    pin = "set pin_memory: true for faster host-to-GPU copies"
    assert pin in _advice(monkeypatch, "cuda", pin_memory=False)
    assert pin not in _advice(monkeypatch, "cuda", pin_memory="auto")
    assert pin not in _advice(monkeypatch, "cuda", pin_memory=True)
    assert pin not in _advice(monkeypatch, "cpu", pin_memory=False)
    assert _advice(monkeypatch, "cuda", pin_memory=False)[1] == pin


def test_workers_restarting_every_epoch_are_advised_with_their_start_up_time(monkeypatch):
    tip = f"set persistent_workers: true (workers restart every epoch, {secs(2.5)} each time)"
    tips = _advice(monkeypatch, num_workers=CORES, persistent_workers=False)
    assert tips == [tip, "raise prefetch_factor (now 2)", CHEAPER]
    assert tip in _advice(monkeypatch, num_workers=1, persistent_workers=False)
    assert tip not in _advice(monkeypatch, num_workers=CORES, persistent_workers="auto")
    assert tip not in _advice(monkeypatch, num_workers=CORES, persistent_workers=True)
    assert tip not in _advice(monkeypatch, num_workers=0, persistent_workers=False)


# ---------------------------------------------------------------- the timing helpers


def test_compute_is_timed_after_two_warm_up_replays(clock):
    calls = []

    def step(batch):
        calls.append(batch)
        clock.advance(5.0 if len(calls) <= 2 else 0.25)  # the warm-ups pay for lazy init

    s = SimpleNamespace(batches=4, seconds=100.0)
    assert speed._time_compute(step, "b", s, torch.device("cpu")) == pytest.approx(0.25)
    assert calls == ["b"] * 6


def test_gpu_work_is_waited_for_before_the_clock_is_read(clock, monkeypatch):
    events = []
    gpu = torch.device("cuda:1")  # the run's GPU, not the current one
    monkeypatch.setattr(
        torch.cuda,
        "synchronize",
        lambda device=None: events.append("sync" if device == gpu else device),
    )

    def step(batch):
        events.append("step")
        clock.advance(0.1)

    s = SimpleNamespace(batches=2, seconds=100.0)
    speed._time_compute(step, None, s, gpu)
    assert events == ["step", "step", "sync", "step", "step", "sync"]
    events.clear()
    speed._time_compute(step, None, s, torch.device("cpu"))
    assert "sync" not in events


def test_val_batches_are_timed_after_the_first(clock):
    drawn = []

    class Ctx:
        def val_batches(self):
            for i in range(100):
                clock.advance(3.0 if i == 0 else 0.01)  # the first starts the workers
                drawn.append(i)
                yield i

    s = SimpleNamespace(batches=5, seconds=100.0)
    assert speed._time_val_data(Ctx(), s) == pytest.approx(0.01)
    assert drawn == list(range(6))
    drawn.clear()
    slow = SimpleNamespace(batches=100, seconds=0.035)
    assert speed._time_val_data(Ctx(), slow) == pytest.approx(0.01)
    assert len(drawn) == 1 + 4  # the cap: 4 batches of 10 ms pass 35 ms


def test_the_load_average_is_zero_where_there_is_none(monkeypatch):
    def none():
        raise OSError("no load average here")

    monkeypatch.setattr(os, "getloadavg", none)
    assert speed._load() == 0.0
    monkeypatch.undo()
    assert speed._load() == os.getloadavg()[0]


# ---------------------------------------------------------------- one real run


def test_a_real_speed_run_writes_its_numbers_and_leaves_steps_bin_alone(workspace):
    _code, summary, path = run_inprocess(
        BLOBS, workspace, stages=["speed"], overrides={"speed.batches": 3}
    )
    rec = stage(summary, "speed")
    m = rec["metrics"]
    for name in (
        "data_s_per_batch",
        "val_data_s_per_batch",
        "first_batch_s",
        "compute_s_per_batch",
        "loop_cpu_share",
        "loop_s_per_batch",
        "data_wait_share",
        "batches_per_s",
        "compute_s_fp32",
        "compute_s_bf16",
    ):
        assert m[name] is not None and m[name] > 0, name
    assert m["data_bound"] in (0.0, 1.0)
    assert check(rec, "batch_time")["status"] in ("pass", "warn", "fail")
    from engine.torchfree.runfolder import RunFolder

    assert len(RunFolder(path).steps()) == 0  # the speed stage's rows time, they do not train


# ---------------------------------------------------------------- the batch-time lines, exactly


def test_batch_time_at_the_lines_themselves(monkeypatch):
    monkeypatch.setattr(speed, "cpu_count", lambda: CORES)
    check_time = SpeedStage(SpeedSettings()).check_batch_time
    crowded = 3.0 * CORES + 1
    # a batch at the limit is not over it, crowded machine or not
    assert check_time(1.0, 0.1, crowded).status == "pass"
    # parts at exactly half the limit do not fit "well inside" it: the step is judged
    assert check_time(2.5, 1.0, 0.5, 0.5).status == "fail"
    assert check_time(2.5, 1.0, 0.5, math.nextafter(0.5, 0.0)).status == "warn"
    busy = check_time(2.0, 0.2249, crowded)
    assert busy.status == "warn" and "the loop got 22% of a core" in busy.detail
    # crowded: a load above 3 per core, and the loop under a quarter of a core
    assert check_time(2.0, 0.1, 3.0 * CORES).status == "fail"
    assert check_time(2.0, 0.1, math.nextafter(3.0 * CORES, 99.0)).status == "warn"
    assert check_time(2.0, 0.25, crowded).status == "fail"
    assert check_time(2.0, math.nextafter(0.25, 0.0), crowded).status == "warn"


def test_the_unexplained_loop_lines(monkeypatch):
    """Parts under half the limit and a loop over 4× their sum: both lines, exactly."""
    monkeypatch.setattr(speed, "cpu_count", lambda: CORES)
    check_time = SpeedStage(SpeedSettings()).check_batch_time
    assert check_time(1.0, 1.0, 0.5, 0.01).status == "pass"  # at the limit: nothing to explain
    assert check_time(1.5, 1.0, 0.5, 0.375).status == "fail"  # exactly 4× its parts
    assert check_time(math.nextafter(1.5, 2.0), 1.0, 0.5, 0.375).status == "warn"
    # the lines move with the limit: half of a 2 s limit is 1 s
    two = SpeedStage(SpeedSettings(max_batch_s=2.0)).check_batch_time
    assert two(5.0, 1.0, 0.5, 0.9).status == "warn"
    assert two(5.0, 1.0, 0.5, 1.1).status == "fail"


def test_the_data_wait_share_is_said_in_percent():
    got = SpeedStage(SpeedSettings()).check_data_wait(None, 0.285, 0.01, 0.02, 0.5)
    assert (got.status, got.detail) == ("pass", "the loop waits on data 28% of the time")
