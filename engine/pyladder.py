"""The ladder from Python: the same stages on objects a script or a notebook already has.

```python
from engine.pyladder import ladder

result = ladder(
    model=MLP,                                   # a factory (class or function) or a module
    train=train_set, val=val_set,                # map-style datasets of (input, target)
    loss=nn.CrossEntropyLoss(),                  # optional: the task's default
    optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),   # optional: Adam, 1e-3
    task="classification",
)
print(result)          # each stage's verdict, as `cockpit run` prints them
assert result.passed
```

It walks the ladder in this process (on ``device``, ``auto`` by default) and writes a run
folder in the workspace like ``cockpit run`` does, so ``cockpit`` and ``cockpit ls`` show it
live and ``cockpit kill`` stops it. Everything a preset takes goes in as a keyword —
``batch_size=64``, ``num_workers=2``, ``stages=["init", "overfit_one"]``,
``overfit_one={"steps": 100}`` — and is checked as a preset is (a PresetError names the key).
A module given as ``model`` is deep-copied for each stage (every stage starts from its initial
weights); a factory is called once per stage, seeded. The preset.yaml of such a run names
objects of this process, so it cannot be forked from another one.
"""

from __future__ import annotations

import copy
import itertools
import os
import signal
import socket
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.torchfree.preset import Preset, validate
from engine.torchfree.runfolder import RunFolder, resolve_workspace, write_json_atomic

__all__ = ["LadderResult", "ladder"]

_ids = itertools.count()
GLYPH = {"pass": "✓", "warn": "!", "fail": "✗", "skip": "·"}


@dataclass
class LadderResult:
    """What the ladder said: the run's status and each stage's verdict (summary.json)."""

    run_id: str
    path: Path
    status: str
    reason: str
    stages: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def verdict(self, stage: str) -> dict:
        """One stage's record: name, status, reason, checks, metrics."""
        for record in self.stages:
            if record.get("name") == stage:
                return record
        raise KeyError(
            f"stage {stage!r} did not run; these did: {[s['name'] for s in self.stages]}"
        )

    def __str__(self) -> str:
        lines = [f"{self.run_id} · {self.path}"]
        for s in self.stages:
            lines.append(
                f"  {GLYPH.get(s.get('status'), '?')} {s.get('name', '?'):<18} "
                f"{s.get('status', '?'):<4}  {s.get('reason', '')}"
            )
        lines.append(self.status + (f" — {self.reason}" if self.reason else ""))
        return "\n".join(lines)


def ladder(
    model: Any,
    train: Any,
    val: Any,
    *,
    loss: Any = None,
    optimizer: Any = None,
    task: str = "classification",
    name: str | None = None,
    workspace: str | os.PathLike | None = None,
    **preset_keys: Any,
) -> LadderResult:
    """Walk the ladder on these objects; returns the verdicts (see the module's docstring)."""
    import torch

    module = types.ModuleType(f"_cockpit_pyladder_{os.getpid()}_{next(_ids)}")
    module.model = _model_factory(model, torch)
    module.data = lambda: (train, val)
    module.optimizer = _optimizer_factory(optimizer, torch)
    sys.modules[module.__name__] = module
    data: dict[str, Any] = {
        "name": name or _default_name(model),
        "task": task,
        "model": {"_target_": f"{module.__name__}:model"},
        "data": {"_target_": f"{module.__name__}:data"},
        "optimizer": {"_target_": f"{module.__name__}:optimizer"},
    }
    if loss is not None:
        module.loss = _loss_factory(loss, torch)
        data["loss"] = {"_target_": f"{module.__name__}:loss"}
    data.update(preset_keys)
    preset = Preset(data=data, path=Path.cwd() / f"{data['name']}.ladder(python)")
    validate(preset)  # PresetError: one sentence naming the key
    from cockpit.launch import create_run

    folder = create_run(resolve_workspace(workspace), preset, stages=preset_keys.get("stages"))
    try:
        return _walk(folder)
    finally:
        sys.modules.pop(module.__name__, None)


def _walk(folder: RunFolder) -> LadderResult:
    from engine.runner import Runner

    _record_process(folder)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    environ = dict(os.environ)  # the slot sets CUDA_VISIBLE_DEVICES & co. for an engine
    try:
        Runner(folder).run()
    finally:
        for s, h in handlers.items():
            if h is not None:
                signal.signal(s, h)
        os.environ.clear()
        os.environ.update(environ)
    summary = folder.summary()
    return LadderResult(
        run_id=folder.run_id,
        path=folder.path,
        status=summary.get("status", "error"),
        reason=summary.get("reason") or "",
        stages=list(summary.get("stages") or []),
    )


def _record_process(folder: RunFolder) -> None:
    """proc.json for this process, so `cockpit kill` can stop the ladder (SIGTERM: the
    runner stops at the next step boundary and the run ends killed)."""
    import psutil

    pid = os.getpid()
    write_json_atomic(
        folder.file("proc.json"),
        {
            "pid": pid,
            "create_time": psutil.Process(pid).create_time(),
            "host": socket.gethostname(),
            "kind": "python-ladder",
        },
    )


def _default_name(model: Any) -> str:
    target = model if isinstance(model, type) else type(model)
    if not isinstance(model, type) and callable(model) and hasattr(model, "__name__"):
        target = model
    return getattr(target, "__name__", "model").strip("<>") or "model"


def _model_factory(model: Any, torch: Any):
    if isinstance(model, torch.nn.Module):
        initial = copy.deepcopy(model)

        def fresh() -> Any:
            return copy.deepcopy(initial)  # every stage from the same initial weights

        return fresh
    if callable(model):
        return lambda: model()
    raise TypeError(
        f"ladder(model=...): expected a torch.nn.Module or a function/class that makes one, "
        f"got {type(model).__name__}"
    )


def _loss_factory(loss: Any, torch: Any):
    if isinstance(loss, torch.nn.Module):
        return lambda: loss
    if isinstance(loss, type):
        return lambda: loss()
    if callable(loss):  # a function such as torch.nn.functional.cross_entropy

        class FunctionLoss(torch.nn.Module):
            def forward(self, output, target):
                return loss(output, target)

        FunctionLoss.__name__ = getattr(loss, "__name__", "FunctionLoss")
        return lambda: FunctionLoss()
    raise TypeError(
        f"ladder(loss=...): expected a loss module or function, got {type(loss).__name__}"
    )


def _optimizer_factory(optimizer: Any, torch: Any):
    """``optimizer(params, lr=..., weight_decay=...)`` as the stages call it: the user's
    optimizer, with the LR or weight decay a stage asks for (overfit stages: decay off)."""

    def make(params, lr: float | None = None, weight_decay: float | None = None):
        if optimizer is None:
            opt = torch.optim.Adam(params, lr=1e-3)
        elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
            opt = optimizer(params, **({"lr": lr} if lr is not None else {}))
        elif callable(optimizer):
            opt = optimizer(params)
        else:
            raise TypeError(
                "ladder(optimizer=...): expected an optimizer class or a function of the "
                f"parameters, got {type(optimizer).__name__}"
            )
        for group in opt.param_groups:
            if lr is not None:
                group["lr"] = lr
            if weight_decay is not None and "weight_decay" in group:
                group["weight_decay"] = weight_decay
        return opt

    return make
