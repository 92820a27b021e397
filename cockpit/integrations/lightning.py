"""A PyTorch Lightning callback: the fit as a cockpit run, live in ``cockpit``.

```python
from cockpit.integrations.lightning import CockpitCallback

trainer = lightning.Trainer(max_epochs=5, callbacks=[CockpitCallback(name="my-model")])
trainer.fit(model, train_loader, val_loader)
```

Every training batch: the loss the ``training_step`` returned (kept on the device and read
back without a sync), the LR of the first optimizer, the seconds Lightning waited for the
batch (from the end of one batch to the start of the next) and what the module logged with
``self.log`` in ``training_step`` (``train_acc=...``, as named per-step values). After each
validation epoch: the metrics named ``val*``, ``test*`` or ``*_epoch`` as a full-val row of
evals.jsonl (``val_acc`` shows as ``accuracy``). The run ends ``passed`` when the fit
ends, ``killed`` on Ctrl-C or ``cockpit kill``, ``error`` on an exception. Only global rank 0
records. Works with ``lightning`` and with the older ``pytorch_lightning`` package.

Importing this module imports neither Lightning nor torch; ``CockpitCallback(...)`` does.
"""

from __future__ import annotations

import time
from typing import Any

from cockpit import track

__all__ = ["CockpitCallback"]

_CLASS: Any = None


def _callback_base() -> Any:
    try:
        from lightning.pytorch.callbacks import Callback
    except ImportError:
        try:
            from pytorch_lightning.callbacks import Callback
        except ImportError:
            raise ImportError(
                "cockpit's Lightning callback needs PyTorch Lightning: pip install 'cockpit[lightning]'"
            ) from None
    return Callback


def CockpitCallback(
    name: str | None = None,
    config: dict | None = None,
    workspace: str | None = None,
) -> Any:
    """A Lightning ``Callback`` that records the fit with :func:`cockpit.track.start`."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _make_class(_callback_base())
    return _CLASS(name, config, workspace)


def _scalar(value: Any) -> Any:
    """A logged value as track.log takes it (tensors stay tensors: no sync here)."""
    if hasattr(value, "numel") and value.numel() == 1:
        return value.detach()
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _full_val(key: str) -> bool:
    """A metric of the validation loop (val_*, valid*, test*, *_epoch), not of a train step."""
    k = key.lower()
    return k.startswith(("val", "test")) or k.endswith("_epoch")


def _make_class(Callback: Any) -> Any:
    class _CockpitCallback(Callback):
        def __init__(self, name, config, workspace):
            self.name = name
            self.config = config
            self.workspace = workspace
            self.run: track.Run | None = None
            self._batch_end = None

        # ---- the run's life -----------------------------------------------------------
        def on_fit_start(self, trainer, pl_module):
            if not trainer.is_global_zero or self.run is not None:
                return
            config = dict(self.config or {})
            if not config:
                try:
                    config = {k: v for k, v in dict(pl_module.hparams).items()}
                except Exception:
                    config = {}
            config.setdefault("model", type(pl_module).__name__)
            for key in ("max_epochs", "max_steps", "accumulate_grad_batches", "precision"):
                value = getattr(trainer, key, None)
                if value is not None:
                    config.setdefault(f"trainer.{key}", value)
            self.run = track.start(
                name=self.name or type(pl_module).__name__, config=config, workspace=self.workspace
            )

        def on_fit_end(self, trainer, pl_module):
            if self.run is not None:
                self.run.finish()

        def on_exception(self, trainer, pl_module, exception):
            run = self.run
            if run is None:
                return
            if isinstance(exception, KeyboardInterrupt):
                run.finish("killed", run._interrupted or "interrupted (Ctrl-C)")
            else:
                run._crashed(type(exception), exception, exception.__traceback__)

        # ---- every batch ------------------------------------------------------------------
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._batch_start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            run = self.run
            if run is None:
                return
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            data_s = (
                self._batch_start - self._batch_end
                if self._batch_end is not None and getattr(self, "_batch_start", None)
                else float("nan")
            )
            lr = float("nan")
            try:
                lr = float(trainer.optimizers[0].param_groups[0]["lr"])
            except (IndexError, AttributeError, KeyError):
                pass
            extras = {}
            for key, value in trainer.callback_metrics.items():
                if key in ("loss", "train_loss", "train_loss_step"):
                    if loss is None:
                        loss = value
                    continue
                if _full_val(key):
                    continue  # from the last validation epoch: it went to evals
                v = _scalar(value)
                if v is not None:
                    extras[key[: -len("_step")] if key.endswith("_step") else key] = v
            run.log(
                trainer.global_step,
                train_loss=_scalar(loss) if loss is not None else float("nan"),
                lr=lr,
                data_s=data_s,
                **extras,
            )
            self._batch_end = time.perf_counter()

        # ---- validation ---------------------------------------------------------------------
        def on_validation_epoch_end(self, trainer, pl_module):
            run = self.run
            if run is None or trainer.sanity_checking:
                return
            metrics = {}
            for key, value in trainer.callback_metrics.items():
                if not _full_val(key):
                    continue
                v = _scalar(value)
                if v is not None:
                    name = key[: -len("_epoch")] if key.endswith("_epoch") else key
                    metrics["accuracy" if name in ("val_acc", "val_accuracy") else name] = v
            if metrics:
                run.eval(trainer.global_step, **metrics)

    _CockpitCallback.__name__ = _CockpitCallback.__qualname__ = "CockpitCallback"
    return _CockpitCallback
