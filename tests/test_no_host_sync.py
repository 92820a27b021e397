"""The no-host-sync promise of the CUDA loop, guarded on a machine without a GPU.

``engine/loop.py`` promises that on CUDA the host never waits on the device just to log:
losses go to a pinned host slot behind a CUDA event and are read a step or more later. The
real check (``test_cuda_loop_logs_every_batch_without_a_host_sync``, under
``torch.cuda.set_sync_debug_mode("error")``) needs a GPU, so a per-step ``loss.item()`` would
ship green from every CPU machine. Here the CUDA code path itself runs on the CPU against
stand-ins — a fake ``torch.cuda.Event`` that counts its waits, a pinned buffer that is plain
host memory — and every call from engine code that would make the host wait on a CUDA
device (``.item()``, ``.tolist()``, ``float()``, ``bool()``, ``.cpu()``, ``.numpy()``,
``torch.cuda.synchronize``) is counted. Reading the pinned host slot (``.tolist()`` on it) is
the one read allowed: it is host memory, read after its event fired.

The cost of one ``.item()`` per step is public: torchtune measured 40–50 ms per step in
cudaStreamSynchronize (https://github.com/pytorch/torchtune/issues/1185), and Lightning's
logging ran 1.5x slower than plain PyTorch until it logged every N steps
(https://github.com/Lightning-AI/pytorch-lightning/issues/10389).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

import engine.loop as loop
from cockpit.launch import create_run
from engine.context import RunContext
from engine.targets import add_import_path
from engine.torchfree import preset as presets
from tests.conftest import ZOO

ENGINE = str(Path(loop.__file__).resolve().parent)
HOST_SIDE = ("data.py",)  # samplers and loaders: host tensors before they are moved


class FakeEvent:
    """torch.cuda.Event on the CPU: ``done`` says whether the device has passed it."""

    done = True  # set per test: a fast device (True) or one that is always behind (False)
    waits = 0  # synchronize() calls, all events together

    def __init__(self, enable_timing: bool = False):
        self.recorded = False

    def record(self, stream=None) -> None:
        self.recorded = True

    def query(self) -> bool:
        return FakeEvent.done

    def synchronize(self) -> None:
        FakeEvent.waits += 1

    def elapsed_time(self, end: FakeEvent) -> float:
        assert self.recorded and end.recorded, "read a device time of an unrecorded step"
        return 1.0  # ms


class SyncCounter:
    """Installs the stand-ins; ``calls`` lists each host sync engine code asked for."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        self.pinned: list[torch.Tensor] = []
        FakeEvent.waits = 0
        FakeEvent.done = True
        monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
        real_empty, real_full = torch.empty, torch.full

        def empty(*size, pin_memory=False, device=None, **kw):
            t = real_empty(*size, **kw)  # host memory stands in for pinned memory
            if pin_memory:
                self.pinned.append(t)
            return t

        def full(size, value, device=None, **kw):
            return real_full(size, value, **kw)  # the "device" NaN, on the host

        monkeypatch.setattr(torch, "empty", empty)
        monkeypatch.setattr(torch, "full", full)
        monkeypatch.setattr(loop, "move", lambda batch, device: batch)
        monkeypatch.setattr(torch.cuda, "synchronize", self._counted("torch.cuda.synchronize"))
        for name in ("item", "__float__", "__int__", "__bool__", "cpu", "numpy", "tolist"):
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._tensor_method(name, real))

    def _from_engine(self) -> str | None:
        frame = sys._getframe(2)
        path = frame.f_code.co_filename
        if not path.startswith(ENGINE) or Path(path).name in HOST_SIDE:
            return None
        return f"{Path(path).name}:{frame.f_lineno}"

    def _counted(self, name: str):
        def call(*args, **kw):
            where = self._from_engine()
            if where:
                self.calls.append(f"{name} at {where}")

        return call

    def _tensor_method(self, name: str, real):
        counter = self

        def method(t, *args, **kw):
            where = counter._from_engine()
            if where and not (name == "tolist" and counter.is_pinned(t)):
                counter.calls.append(f"Tensor.{name} at {where}")
            return real(t, *args, **kw)

        return method

    def is_pinned(self, t: torch.Tensor) -> bool:
        ptr = t.untyped_storage().data_ptr()
        return any(p.untyped_storage().data_ptr() == ptr for p in self.pinned)


@pytest.fixture
def cuda_ctx(workspace):
    """A run context on the blobs preset whose device says cuda (the model stays on the host)."""
    add_import_path(ZOO)
    preset = presets.load(ZOO / "blobs.yaml")
    folder = create_run(workspace, preset, stages=["train"])
    ctx = RunContext(preset, folder, ["train"], folder.request())
    model = ctx.build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)  # Adam reads its step count
    train, val = ctx.train_batches(), ctx.val_batches()
    ctx.device = torch.device("cuda")
    return ctx, model, optimizer, train, val


STEPS = 40


def test_the_cuda_loop_never_reads_a_device_value_back_per_step(cuda_ctx, monkeypatch):
    ctx, model, optimizer, train, val = cuda_ctx
    counter = SyncCounter(monkeypatch)
    result = loop.train_loop(
        ctx, model, optimizer, train, steps=STEPS, val_batches=val, val_every=1
    )
    monkeypatch.undo()
    assert counter.pinned, "the CUDA path was not taken (no pinned readback buffer)"
    assert counter.calls == [], f"host syncs in the CUDA loop: {counter.calls[:5]}"
    # a device that keeps up is never waited on: only the final flush waits
    assert FakeEvent.waits <= 1, FakeEvent.waits
    # and every step still reached steps.bin, with its values
    assert [r.step for r in result.rows] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r.train_loss) and math.isfinite(r.val_loss) for r in result.rows)
    assert all(r.gpu_s == 0.001 for r in result.rows)  # the events' time, in seconds
    steps = ctx.folder.steps()
    assert list(steps["train_loss"]) == [r.train_loss for r in result.rows]


def test_a_device_that_falls_behind_is_waited_on_once_per_step_past_the_depth(
    cuda_ctx, monkeypatch
):
    """Backpressure: the host runs at most READBACK_DEPTH steps ahead, then waits for the
    oldest step — one wait per step, never more, and rows land in order."""
    ctx, model, optimizer, train, _val = cuda_ctx
    counter = SyncCounter(monkeypatch)
    FakeEvent.done = False
    result = loop.train_loop(ctx, model, optimizer, train, steps=STEPS)
    monkeypatch.undo()
    assert counter.calls == [], counter.calls[:5]
    depth = loop.READBACK_DEPTH
    assert FakeEvent.waits == STEPS - depth + 1 + 1, FakeEvent.waits  # + the final flush
    assert [r.step for r in result.rows] == list(range(1, STEPS + 1))
    assert all(math.isnan(r.val_loss) for r in result.rows)  # no val batches asked for


def test_the_readback_returns_nothing_until_its_events_fire(monkeypatch):
    """In order (DDP ranks): each row is released exactly ``depth`` pushes later."""
    SyncCounter(monkeypatch)
    FakeEvent.done = True
    rb = loop.Readback(torch.device("cuda"), depth=3, in_order=True)
    got = []
    for step in range(1, 8):
        rb.step_started()
        got.append([r.step for r in rb.push(step, 0.1, 0.2, 1e-3, torch.tensor(float(step)), None)])
    assert got == [[], [], [1], [2], [3], [4], [5]]
    rest = rb.flush()
    assert [r.step for r in rest] == [6, 7]
    assert [r.train_loss for r in rest] == [6.0, 7.0]
    assert all(math.isnan(r.val_loss) for r in rest)
