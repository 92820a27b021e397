"""cockpit.track: any script's run folder, as the engine writes it (Contract 5)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.torchfree.runfolder import RunFolder, iter_runs
from tests.conftest import ROOT, cockpit, wait_for

# A plain PyTorch script of ~30 lines on real data (scikit-learn's 8x8 digits) with the three
# calls of Contract 5: track.start, run.log, run.finish.
SCRIPT = """
import sys, time
import torch
from torch import nn
from sklearn.datasets import load_digits
import cockpit.track as track

x, y = load_digits(return_X_y=True)
x = torch.tensor(x / 16.0, dtype=torch.float32)
y = torch.tensor(y)
train_x, train_y, val_x, val_y = x[:1400], y[:1400], x[1400:], y[1400:]
model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.CrossEntropyLoss()
steps, pause = int(sys.argv[1]), float(sys.argv[2])
run = track.start(name="digits-script", config={"lr": 0.1, "hidden": 32})
g = torch.Generator().manual_seed(0)
for step in range(1, steps + 1):
    t0 = time.perf_counter()
    i = torch.randint(0, 1400, (32,), generator=g)
    xb, yb = train_x[i], train_y[i]
    data_s = time.perf_counter() - t0
    loss = loss_fn(model(xb), yb)
    opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        vloss = loss_fn(model(val_x), val_y)
    run.log(step, train_loss=loss, val_loss=vloss, lr=0.1, data_s=data_s)
    time.sleep(pause)
run.finish()
"""


def _start_script(tmp_path: Path, workspace: Path, *args: str, code: str = SCRIPT):
    script = tmp_path / "train.py"
    script.write_text(code)
    env = os.environ.copy()
    env["PYTHONPATH"] = str(ROOT)
    env["COCKPIT_WORKSPACE"] = str(workspace)
    # its own session, as a shell job would be: cockpit kill never signals its own group
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _only_run(workspace: Path) -> RunFolder | None:
    runs = list(iter_runs(workspace))
    return runs[0] if len(runs) == 1 else None


def test_a_run_folder_like_the_engines(workspace: Path) -> None:
    import cockpit.track as track

    run = track.start(name="unit", config={"lr": 3e-4, "model": {"width": 8}}, workspace=workspace)
    for step in range(1, 31):
        run.log(step, train_loss=1.0 / step, val_loss=2.0 / step, lr=3e-4, data_s=0.001)
    run.log(31, train_loss=0.01, acc=0.5)  # a named value beside the columns
    run.eval(31, accuracy=0.9, val_loss=0.4)
    run.finish()

    folder = RunFolder(run.path)
    summary = folder.summary()
    assert summary["status"] == "passed"
    assert summary["overrides"] == {"lr": 3e-4, "model.width": 8}
    assert summary["stage_names"] == ["train"]
    metrics = summary["stages"][0]["metrics"]
    assert metrics["train_loss_first"] == pytest.approx(sum(1 / s for s in range(1, 11)) / 10)
    assert metrics["train_loss_last"] == pytest.approx(
        (sum(1 / s for s in range(22, 31)) + 0.01) / 10
    )
    assert metrics["val_loss_last"] == pytest.approx(2 / 30)
    cols = folder.steps()
    assert list(cols["step"]) == list(range(1, 32))
    assert cols["train_loss"][4] == pytest.approx(0.2)
    assert math.isnan(cols["val_loss"][30])
    assert cols["lr"][0] == pytest.approx(3e-4) and cols["data_s"][0] == pytest.approx(0.001)
    assert all(s >= 0 for s in cols["step_s"])
    evals = folder.evals()
    assert {"step": 31, "stage": "train", "kind": "step", "acc": 0.5}.items() <= evals[0].items()
    assert evals[1]["accuracy"] == 0.9
    assert folder.proc()["pid"] == os.getpid()
    assert [e["event"] for e in folder.events()] == [
        "run_start",
        "stage_start",
        "stage_end",
        "run_end",
    ]
    snap = folder.snapshot()
    assert (snap.status, snap.step, snap.metric_name, snap.metric) == (
        "passed",
        31,
        "accuracy",
        0.9,
    )
    assert "cockpit.track" in folder.preset_text() and "width: 8" in folder.preset_text()

    out = cockpit("ls", "--json", workspace=workspace)
    listed = json.loads(out.stdout)
    assert [r["run_id"] for r in listed] == [run.run_id] and listed[0]["status"] == "passed"


def test_named_values_of_changing_names_and_non_finite_ones(workspace: Path) -> None:
    import cockpit.track as track

    with track.start(name="names", workspace=workspace) as run:
        run.log(1, train_loss=1.0, acc=0.5)
        run.log(2, train_loss=1.0, acc=math.nan, f1=0.25)
        run.log(3, train_loss=1.0, f1=math.inf, acc=0.75)
        run.log(4, train_loss=1.0, acc=7)  # an int: the general path
    rows = RunFolder(run.path).evals()
    assert [(r["step"], r.get("acc"), r.get("f1")) for r in rows] == [
        (1, 0.5, None),
        (2, None, 0.25),
        (3, 0.75, None),
        (4, 7.0, None),
    ]
    assert all(r["kind"] == "step" and r["stage"] == "train" for r in rows)


def test_import_is_light() -> None:
    code = "import sys, cockpit.track; print(sorted(m for m in ('torch', 'textual', 'psutil', 'yaml') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_cpu_tensors_and_numpy_values(workspace: Path) -> None:
    import numpy as np
    import torch

    import cockpit.track as track

    with track.start(name="tensors", workspace=workspace) as run:
        run.log(
            1,
            train_loss=torch.tensor(0.5),
            val_loss=np.float32(0.25),
            lr=1,
            acc=torch.tensor([0.75]),
        )
        with pytest.raises(track.TrackError, match="one-element tensor"):
            run.log(2, train_loss=torch.ones(3))
        with pytest.raises(track.TrackError, match="train_loss must be a number"):
            run.log(3, train_loss="low")
    folder = RunFolder(run.path)
    cols = folder.steps()
    assert (cols["train_loss"][0], cols["val_loss"][0], cols["lr"][0]) == (0.5, 0.25, 1.0)
    assert folder.evals()[0]["acc"] == 0.75
    assert folder.summary()["status"] == "passed"


def test_an_exception_ends_the_run_error_with_the_traceback(workspace: Path) -> None:
    import cockpit.track as track

    with pytest.raises(ZeroDivisionError), track.start(name="boom", workspace=workspace) as run:
        run.log(1, train_loss=1.0)
        1 / 0  # noqa: B018
    summary = RunFolder(run.path).summary()
    assert summary["status"] == "error"
    assert summary["reason"].startswith(
        "crashed: ZeroDivisionError: division by zero (in test_track.py:"
    )
    assert "Traceback" in RunFolder(run.path).log_tail()
    assert track.active() is None


def test_keyboard_interrupt_ends_the_run_killed(workspace: Path) -> None:
    import cockpit.track as track

    with pytest.raises(KeyboardInterrupt), track.start(name="ctrl-c", workspace=workspace) as run:
        run.log(1, train_loss=1.0)
        raise KeyboardInterrupt
    assert RunFolder(run.path).summary()["status"] == "killed"
    assert signal.getsignal(signal.SIGTERM) is not run._on_signal  # handlers given back


def test_handlers_are_chained_and_restored(workspace: Path) -> None:
    import cockpit.track as track

    seen = []
    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    before = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        run = track.start(name="chain", workspace=workspace)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert seen == [signal.SIGTERM]  # the script's own handler still ran
        assert RunFolder(run.path).summary()["status"] == "killed"
        assert "SIGTERM" in RunFolder(run.path).summary()["reason"]
        assert signal.getsignal(signal.SIGTERM) is not run._on_signal
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGUSR1, previous)


def test_telemetry_as_the_engine_writes_it(workspace: Path) -> None:
    import cockpit.track as track

    run = track.start(name="telemetry", workspace=workspace)
    run._telemetry.interval = 0.05
    deadline = time.monotonic() + 20
    step = 0
    while time.monotonic() < deadline and len(RunFolder(run.path).telemetry()) < 3:
        step += 1
        run.log(step, train_loss=1.0, data_s=0.004)
        time.sleep(0.01)
    rows = RunFolder(run.path).telemetry()
    run.finish()
    assert rows[0]["kind"] == "header" and "gpu_note" in rows[0]
    body = rows[1]
    assert {"t", "cpu", "ram", "rss_mb", "steps", "data_wait"} <= body.keys()
    assert body["rss_mb"] > 10
    waits = [r["data_wait"] for r in rows[1:] if r["data_wait"] is not None]
    assert waits and all(0 < w < 1 for w in waits)  # 4 ms of data per ~10+ ms step


@pytest.mark.slow
def test_a_plain_script_shows_live_and_cockpit_kill_stops_it(
    tmp_path: Path, workspace: Path
) -> None:
    proc = _start_script(tmp_path, workspace, "100000", "0.01")
    try:
        folder = wait_for(lambda: _only_run(workspace), timeout=120)

        def live_with_steps():
            listed = json.loads(cockpit("ls", "--json", workspace=workspace).stdout)
            return (
                listed
                and listed[0]["status"] == "running"
                and listed[0]["step"] >= 20
                and listed[0]
            )

        row = wait_for(live_with_steps, timeout=120, every=0.3)
        assert row["preset"] == "digits-script" and row["train_loss"] < 3.0
        assert not math.isnan(row["val_loss"])
        out = cockpit("kill", folder.run_id, workspace=workspace)
        assert out.returncode == 0 and "killed" in out.stdout, out.stdout + out.stderr
        assert proc.wait(timeout=30) is not None
        summary = folder.state()
        assert summary["status"] == "killed", summary
        cols = folder.steps()
        assert len(cols) >= 20 and list(cols["step"]) == list(range(1, len(cols) + 1))
        # the curve is the script's: the loss of digits falls from about ln 10
        assert cols["train_loss"][0] == pytest.approx(math.log(10), abs=0.3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_a_script_that_crashes_or_is_interrupted(tmp_path: Path, workspace: Path) -> None:
    crash = "import cockpit.track as track\nrun = track.start(name='crash')\nrun.log(1, train_loss=1.0)\nraise RuntimeError('CUDA out of memory (simulated)')\n"
    proc = _start_script(tmp_path, workspace, code=crash)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 1 and "RuntimeError" in out  # the script's traceback still prints
    summary = _only_run(workspace).summary()
    assert summary["status"] == "error"
    assert "RuntimeError: CUDA out of memory (simulated) (in train.py:4" in summary["reason"]

    other = tmp_path / "ws2"
    proc = _start_script(tmp_path, other, "100000", "0.01")
    try:
        folder = wait_for(lambda: _only_run(other), timeout=120)
        wait_for(lambda: len(folder.last_steps(5)) >= 5, timeout=120)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=30)
        assert folder.state()["status"] == "killed"
        assert folder.state()["reason"] == "interrupted (Ctrl-C)"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_script_killed_hard_shows_as_error(tmp_path: Path, workspace: Path) -> None:
    code = textwrap.dedent(
        """
        import time, cockpit.track as track
        run = track.start(name='hard')
        run.log(1, train_loss=1.0); run.flush()
        time.sleep(600)
        """
    )
    proc = _start_script(tmp_path, workspace, code=code)
    try:
        folder = wait_for(lambda: _only_run(workspace), timeout=60)
        wait_for(lambda: len(folder.steps()) == 1, timeout=60)
        assert folder.state()["status"] == "running"
        proc.kill()  # SIGKILL: no handler runs
        proc.wait(timeout=30)
        assert folder.state()["status"] == "error"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_the_script_in_the_app_live_with_its_curves_and_x_kills_it(
    tmp_path: Path, workspace: Path
) -> None:
    """The issue's 'done when': a plain script shows up live in the app with its curves, and
    kill from the app stops it."""
    import asyncio

    from cockpit.app.screens.confirm_kill import ConfirmKill
    from cockpit.app.screens.run import RunScreen
    from cockpit.app.widgets.curves import CurvesView
    from tests.app.conftest import histories_loaded, make_app, wait_until

    proc = _start_script(tmp_path, workspace, "100000", "0.01")

    async def go():
        app = make_app(workspace, clock=time.time)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(
                pilot,
                lambda: app.runs and app.runs[0].snapshot.step > 5,
                timeout=120,
                what="the script's first steps",
            )
            assert app.runs[0].snapshot.status == "running"
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run view")
            await histories_loaded(pilot)
            curves = app.screen.query_one(CurvesView)
            first = curves.current_stage().steps
            assert curves.current_stage().name == "train" and first > 5
            await wait_until(
                pilot, lambda: curves.current_stage().steps > first, what="the curve growing"
            )
            assert len(curves.current_stage().val) > 5  # the val curve too
            await pilot.press("escape")
            await pilot.press("x")
            await wait_until(
                pilot, lambda: isinstance(app.screen, ConfirmKill), what="the question"
            )
            await pilot.press("y")
            await wait_until(
                pilot,
                lambda: app.runs[0].snapshot.status == "killed",
                timeout=30,
                what="the run killed",
            )

    try:
        asyncio.run(go())
        assert proc.wait(timeout=30) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class _FakeDevice:
    type = "cuda"
    index = 0


class _FakeCudaTensor:
    """Stands in for a one-element CUDA tensor; reading it on the host would be a sync."""

    __module__ = "torch.fake"

    def __init__(self, value: float, device: _FakeDevice):
        self.value, self.device = value, device

    def numel(self) -> int:
        return 1

    def item(self) -> float:
        raise AssertionError("log() synced the host with the device (.item() on a CUDA value)")

    __float__ = __bool__ = item


class _FakeReadback:
    """The pinned-buffer readback with events we fire by hand."""

    WIDTH = 16

    def __init__(self, device):
        self.device = device
        self.in_flight = 0
        self.slots: dict[int, list[float]] = {}
        self.landed: set[int] = set()
        self.waited: list[int] = []
        self.next = 0

    def push(self, tensors) -> int:
        slot, self.next = self.next, self.next + 1
        self.slots[slot] = [t.value for t in tensors]
        self.in_flight += 1
        return slot

    def ready(self, slot: int) -> bool:
        return slot in self.landed

    def wait(self, slot: int) -> None:
        self.waited.append(slot)
        self.landed.add(slot)

    def take(self, slot: int, n: int) -> list[float]:
        self.in_flight -= 1
        return self.slots.pop(slot)[:n]


def test_cuda_values_reach_the_file_later_in_order_without_a_sync(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cockpit.track as track

    monkeypatch.setattr(track, "_Readback", _FakeReadback)
    dev = _FakeDevice()
    run = track.start(name="cuda", workspace=workspace)
    for step in (1, 2, 3):
        run.log(
            step, train_loss=_FakeCudaTensor(step / 10, dev), lr=0.1, acc=_FakeCudaTensor(0.5, dev)
        )
    run.log(4, train_loss=0.4)  # a plain float queues behind them: the file stays in order
    run.flush()
    folder = RunFolder(run.path)
    assert len(folder.steps()) == 0  # nothing has landed: nothing waited for, nothing written
    rb = run._readback
    assert rb.waited == []
    rb.landed |= {0, 1}
    run.log(5, train_loss=_FakeCudaTensor(0.5, dev))
    run.flush()
    assert list(folder.steps()["step"]) == [1, 2]
    rb.landed |= {2, 3}
    for step in range(6, 6 + track.DEPTH):  # the device falls DEPTH calls behind: wait for one
        run.log(step, train_loss=_FakeCudaTensor(step / 10, dev))
    assert rb.waited == [4]
    run.finish()  # the rest is waited for at the end
    cols = folder.steps()
    assert list(cols["step"]) == list(range(1, 6 + track.DEPTH))
    assert list(cols["train_loss"][:5]) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert [r["acc"] for r in folder.evals()] == [0.5, 0.5, 0.5]
    assert folder.summary()["device"] == str(dev)


def _digits_sets(n: int = 600):
    import torch
    from sklearn.datasets import load_digits
    from torch.utils.data import TensorDataset

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:n] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[:n])
    cut = n * 3 // 4
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


@pytest.mark.slow
def test_the_ladder_from_python_on_the_scripts_own_objects(workspace: Path) -> None:
    import torch
    from torch import nn

    from engine.pyladder import ladder

    train, val = _digits_sets()

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x):
            return self.net(x)

    result = ladder(
        MLP,
        train,
        val,
        loss=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
        stages=["init", "batch_independence", "overfit_one"],
        overfit_one={"steps": 200},
        workspace=workspace,
    )
    assert result.passed, str(result)
    assert [s["name"] for s in result.stages] == ["init", "batch_independence", "overfit_one"]
    assert result.verdict("init")["metrics"]["loss_at_init"] == pytest.approx(math.log(10), abs=0.2)
    assert "✓ overfit_one" in str(result)
    folder = RunFolder(result.path)
    assert folder.summary()["status"] == "passed" and len(folder.steps()) > 0  # a real run folder
    listed = json.loads(cockpit("ls", "--json", workspace=workspace).stdout)
    assert [r["run_id"] for r in listed] == [result.run_id] and listed[0]["preset"] == "MLP"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the runner's handlers are gone


def test_the_ladder_from_python_finds_a_batch_mixing_model(workspace: Path) -> None:
    """Normalising over the batch dimension makes each output depend on the other samples
    (the "view/transpose across the batch" bug of Karpathy's 'A Recipe for Training Neural
    Networks', 2019): batch_independence must fail on it."""
    from torch import nn

    from engine.pyladder import ladder

    train, val = _digits_sets(200)

    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x - x.mean(0, keepdim=True))

    result = ladder(Leaky(), train, val, stages=["batch_independence"], workspace=workspace)
    assert result.status == "failed"
    assert result.verdict("batch_independence")["status"] == "fail"


def test_the_ladder_from_python_checks_its_keywords_as_a_preset() -> None:
    from torch import nn

    from engine.pyladder import ladder
    from engine.torchfree.preset import PresetError

    train, val = _digits_sets(100)
    with pytest.raises(PresetError, match=r"stepz.*steps"):
        ladder(nn.Linear(64, 10), train, val, overfit_one={"stepz": 3})


def test_a_forked_child_such_as_a_dataloader_worker_writes_nothing(workspace: Path) -> None:
    """DataLoader workers are forked from the script with the run in their memory: their
    copy must not write rows twice, end the run, or outlive a SIGTERM."""
    import cockpit.track as track

    run = track.start(name="fork", workspace=workspace)
    run.log(1, train_loss=1.0)  # still in the buffer when the child is forked
    pid = os.fork()
    if pid == 0:  # the child: everything here must be a no-op for the run
        try:
            run.log(2, train_loss=2.0)
            run.finish("failed", "from the child")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(ready_w, b"x")  # (a signal in the instant after fork is lost by CPython itself)
        time.sleep(30)  # killed below; our handler must let SIGTERM kill it
        os._exit(3)
    os.read(ready_r, 1)
    os.close(ready_r)
    os.close(ready_w)
    os.kill(child, signal.SIGTERM)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert RunFolder(run.path).summary()["status"] == "running"
    run.finish()
    folder = RunFolder(run.path)
    assert list(folder.steps()["step"]) == [1]
    assert folder.summary()["status"] == "passed"
    assert [e["event"] for e in folder.events()].count("run_end") == 1


def test_telemetry_reads_nvml_once_the_script_uses_cuda(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No GPU here: torch's CUDA state and NVML are stood in for; the rows must carry the GPU
    the script uses, by UUID, in the engine's format."""
    import types

    import cockpit.track as track
    import engine.torchfree.nvml as nvml_module

    asked = {}

    class FakeNvml:
        ok, error = True, None

        def handle(self, index=None, uuid=None):
            asked.update(index=index, uuid=uuid)
            return "h"

        def index(self, handle):
            return 3

        def name(self, handle):
            return "Fake H200"

        def sample(self, handle):
            return {"util": 97.0, "mem_used_mb": 1000.0, "mem_total_mb": 143000.0, "power_w": 500.0}

        def close(self):
            asked["closed"] = True

    cuda = types.SimpleNamespace(
        is_initialized=lambda: True,
        current_device=lambda: 0,
        get_device_properties=lambda i: types.SimpleNamespace(uuid="1234-abcd"),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(nvml_module, "Nvml", FakeNvml)
    run = track.start(name="gpu", workspace=workspace)
    run._telemetry.sample()
    run.finish()
    rows = RunFolder(run.path).telemetry()
    assert rows[0]["kind"] == "header" and rows[0]["gpu_index"] == 3
    assert rows[0]["gpu_name"] == "Fake H200"
    assert asked["uuid"] == "GPU-1234-abcd" and asked["closed"]
    gpu = [r["gpu"] for r in rows[1:] if "gpu" in r]
    assert gpu and gpu[0] == {
        "util": 97.0,
        "mem_used_mb": 1000.0,
        "mem_total_mb": 143000.0,
        "power_w": 500.0,
        "index": 3,
    }
