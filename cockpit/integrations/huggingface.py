"""A Hugging Face ``Trainer`` callback: the training as a cockpit run, live in ``cockpit``.

```python
from cockpit.integrations.huggingface import CockpitCallback

trainer = Trainer(model, args, train_dataset=..., eval_dataset=...,
                  callbacks=[CockpitCallback(name="my-model")])
```

The Trainer reports through ``on_log``: each training log (``loss``, ``learning_rate``,
``grad_norm``, ...) becomes a step of the run (set ``logging_steps=1`` for a curve of every
batch — the Trainer averages the loss over ``logging_steps``), each evaluation
(``eval_loss``, ``eval_accuracy``, ...) a full-val row with the ``eval_`` prefix dropped
(``eval_loss`` is ``val_loss``). The run ends ``passed`` at the end of training; an
exception ends it ``error`` and Ctrl-C or ``cockpit kill`` ``killed`` (cockpit.track's
handlers). Only the main process records.

Importing this module imports neither transformers nor torch; ``CockpitCallback(...)`` does.
"""

from __future__ import annotations

import math
from typing import Any

from cockpit import track

__all__ = ["CockpitCallback"]

_CLASS: Any = None
_ARGS = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "seed",
    "optim",
)
_NOT_METRICS = ("epoch", "total_flos", "step")


def CockpitCallback(
    name: str | None = None,
    config: dict | None = None,
    workspace: str | None = None,
) -> Any:
    """A ``transformers.TrainerCallback`` that records training with cockpit.track."""
    global _CLASS
    if _CLASS is None:
        try:
            from transformers import TrainerCallback
        except ImportError:
            raise ImportError(
                "cockpit's Trainer callback needs transformers: pip install 'cockpit[transformers]'"
            ) from None
        _CLASS = _make_class(TrainerCallback)
    return _CLASS(name, config, workspace)


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _make_class(TrainerCallback: Any) -> Any:
    class _CockpitCallback(TrainerCallback):
        def __init__(self, name, config, workspace):
            self.name = name
            self.config = config
            self.workspace = workspace
            self.run: track.Run | None = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if not state.is_world_process_zero or self.run is not None:
                return
            config = dict(self.config or {})
            if not config:
                config = {key: getattr(args, key, None) for key in _ARGS}
                config = {
                    k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                    for k, v in config.items()
                    if v is not None
                }
            if model is not None:
                config.setdefault("model", type(model).__name__)
            run_name = getattr(args, "run_name", None)
            default = type(model).__name__ if model is not None else "hf-trainer"
            if run_name and run_name != getattr(args, "output_dir", None):
                default = run_name
            self.run = track.start(
                name=self.name or default, config=config, workspace=self.workspace
            )

        def on_log(self, args, state, control, logs=None, **kwargs):
            run = self.run
            if run is None or not logs:
                return
            step = state.global_step
            evals = {k[len("eval_") :]: _num(v) for k, v in logs.items() if k.startswith("eval_")}
            evals = {
                ("val_loss" if k == "loss" else k): v for k, v in evals.items() if v is not None
            }
            for k in ("runtime", "samples_per_second", "steps_per_second"):
                evals.pop(k, None)
            if evals:
                run.eval(step, **evals)
            if "loss" in logs:
                extras = {
                    k: _num(v)
                    for k, v in logs.items()
                    if k not in ("loss", "learning_rate", *_NOT_METRICS)
                    and not k.startswith(("eval_", "train_"))
                    and _num(v) is not None
                }
                lr = _num(logs.get("learning_rate"))
                run.log(
                    step,
                    train_loss=_num(logs["loss"]) if _num(logs["loss"]) is not None else math.nan,
                    lr=math.nan if lr is None else lr,
                    **extras,
                )

        def on_train_end(self, args, state, control, **kwargs):
            if self.run is not None:
                self.run.finish()

    _CockpitCallback.__name__ = _CockpitCallback.__qualname__ = "CockpitCallback"
    return _CockpitCallback
