"""What every stage gets: the preset built into data, model factory, loaders and a logger."""

from __future__ import annotations

import copy
import inspect
import math
import os
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from engine import targets
from engine.control import StopFlag
from engine.data import EpochIterator, ForeverSampler
from engine.errors import UserCodeError  # the user's mistakes; defined below custom_step
from engine.torchfree.preset import Preset
from engine.torchfree.runfolder import RunFolder, StepsAppender
from engine.torchfree.tasks import DEFAULT_LOSS


class WaitMeter:
    """Data-wait and step seconds since the telemetry sampler last looked (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wait = 0.0
        self._total = 0.0
        self._steps = 0

    def add(self, wait_s: float, step_s: float) -> None:
        with self._lock:
            self._wait += wait_s
            self._total += step_s
            self._steps += 1

    def take(self) -> tuple[float, float, int]:
        with self._lock:
            out = (self._wait, self._total, self._steps)
            self._wait = self._total = 0.0
            self._steps = 0
            return out


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserCodeError(
            f"the preset asks for device {spec}, but this machine has no usable CUDA GPU; use device: auto or cpu"
        )
    return torch.device(spec)


@dataclass
class DataSets:
    train: Dataset
    val: Dataset


class RunContext:
    """What is fixed for the run, built once per engine process (or DDP rank): the preset, the
    data, the loss, the device, the stop flag. Stages ask it for fresh models and loaders.

    The runner gives each stage its own view (``for_stage``): the stage's index for the rows
    it logs, and the verdicts of the stages before it — written by the runner alone."""

    def __init__(
        self,
        preset: Preset,
        folder: RunFolder,
        stage_names: list[str],
        request: dict,
        *,
        stop: StopFlag | None = None,
        device: torch.device | None = None,
        warm: dict | None = None,
    ):
        self.preset = preset
        self.folder = folder
        self.request = request
        self.stage_names = stage_names
        self.stage_index = 0
        self.task: str = preset.get("task")
        self.seed: int = preset.get("seed")
        self.device = device or resolve_device(preset.get("device"))
        self.precision: str = preset.get("precision") or "fp32"
        self.stop = stop or StopFlag()
        self.meter = WaitMeter()
        self._steps_out = StepsAppender(folder.file("steps.bin"))
        self._out: dict[
            str, Any
        ] = {}  # evals.jsonl, losses.bin: opened on first use, shared by the stages' views
        explicit_loss = preset.get("loss") is not None
        self.loss_fn = self._build_loss()
        self.data = self._build_data()
        from engine import custom_step

        # the user's own step, dict batches, a model's own loss (None: loss(model(x), y))
        self.custom = custom_step.build(self, explicit_loss)
        self.warm = warm  # a parent's checkpoint, for a warm fork
        self.verdicts: dict[str, Any] = {}  # stage name -> Verdict, recorded by the runner
        self.eval_listeners: list = []  # called as f(step, metrics) after each full-val evaluation

    def for_stage(self, index: int) -> RunContext:
        """This run as stage ``index`` sees it: the same data and files, its own stage index."""
        view = copy.copy(self)
        view.stage_index = index
        view.verdicts = dict(self.verdicts)
        return view

    @property
    def stop_requested(self) -> bool:
        return self.stop.requested

    # ---- building ----------------------------------------------------------------
    def seed_everything(self, offset: int = 0) -> None:
        s = self.seed + offset
        random.seed(s)
        torch.manual_seed(s)

    def _build_loss(self) -> nn.Module:
        if self.preset.get("loss") is None:
            self.preset.data["loss"] = {"_target_": DEFAULT_LOSS[self.task]}
        loss = targets.instantiate(self.preset, "loss")
        problem = targets.not_a_loss(loss)
        if problem:  # e.g. a layer or the data function given as the loss
            raise targets.PresetError(
                f"{self.preset.where('loss._target_')}: loss: {self.preset.get('loss._target_')} "
                f"{problem}; a loss is a torch.nn.Module called as loss(output, target), e.g. "
                "_target_: torch.nn.CrossEntropyLoss."
            )
        return loss.to(self.device)

    def _build_data(self) -> DataSets:
        self.seed_everything()
        out = targets.instantiate(self.preset, "data")
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise targets.PresetError(
                f"{self.preset.where('data')}: data: {self.preset.get('data._target_')} must return "
                f"(train_set, val_set), got {type(out).__name__}"
                + (f" of {len(out)} items" if isinstance(out, (tuple, list)) else "")
                + "."
            )
        train, val = out
        for name, ds in (("train", train), ("val", val)):
            if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
                raise UserCodeError(
                    f"the {name} set ({type(ds).__name__}) is not a map-style dataset (needs __len__ and __getitem__)"
                )
            if len(ds) == 0:
                raise UserCodeError(f"the {name} set is empty")
        return DataSets(train, val)

    def build_model(self) -> nn.Module:
        """A fresh model, initialised the same way every time (seeded); with ``models:``, an
        ``nn.ModuleDict`` of them (``engine/custom_step.py``)."""
        self.seed_everything()
        if self.preset.get("models") is not None:
            from engine import custom_step

            return custom_step.build_models(self)
        model = targets.instantiate(self.preset, "model")
        if not isinstance(model, nn.Module):
            raise targets.PresetError(
                f"{self.preset.where('model')}: model: {self.preset.get('model._target_')} "
                f"built a {type(model).__name__}, not a torch.nn.Module."
            )
        model = model.to(self.device)
        mode = self.preset.get("compile")
        if mode:  # in place: state_dict keys stay those of the plain model (checkpoints, forks)
            model.compile(**({} if mode is True else {"mode": mode}))
        return model

    def build_optimizer(
        self, model: nn.Module, *, lr: float | None = None, no_weight_decay: bool = False
    ) -> torch.optim.Optimizer:
        """The preset's optimizer; ``no_weight_decay`` also zeroes defaults such as AdamW's."""
        if self.preset.get("models") is not None and isinstance(model, nn.ModuleDict):
            from engine import custom_step

            return custom_step.build_optimizers(self, model, lr, no_weight_decay)
        extra: dict[str, Any] = {}
        if lr is not None:
            extra["lr"] = lr
        if no_weight_decay:
            fn = targets.resolve(self.preset, "optimizer", self.preset.get("optimizer")["_target_"])
            if "weight_decay" in inspect.signature(fn).parameters:
                extra["weight_decay"] = 0.0
        return targets.instantiate(self.preset, "optimizer", model.parameters(), **extra)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        if self.preset.get("scheduler") is None:
            return None
        if self.preset.get("models") is not None:
            from engine import custom_step

            return custom_step.build_schedulers(self, optimizer)
        return targets.instantiate(self.preset, "scheduler", optimizer)

    # ---- loaders -----------------------------------------------------------------
    def loader_kwargs(self) -> dict[str, Any]:
        workers = self.preset.get("num_workers")
        pin = self.preset.get("pin_memory")
        persistent = self.preset.get("persistent_workers")
        kw: dict[str, Any] = {
            "num_workers": workers,
            "pin_memory": (self.device.type == "cuda") if pin == "auto" else bool(pin),
        }
        if workers > 0:
            kw["persistent_workers"] = True if persistent == "auto" else bool(persistent)
            if self.preset.get("prefetch_factor"):
                kw["prefetch_factor"] = self.preset.get("prefetch_factor")
        return kw

    def train_loader(
        self,
        dataset: Dataset | None = None,
        batch_size: int | None = None,
        shuffle: bool = True,
        workers: bool = True,
    ) -> DataLoader:
        ds = dataset if dataset is not None else self.data.train
        bs = batch_size or self.preset.get("batch_size")
        kw = self.loader_kwargs() if workers else {}
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            ds, batch_size=bs, shuffle=shuffle, generator=g, drop_last=len(ds) >= 2 * bs, **kw
        )

    def train_batches(self, **kw: Any) -> Iterator:
        return EpochIterator(self.train_loader(**kw))

    def val_batches(self) -> Iterator:
        """Endless random val batches (no augmentation: the val set is used as it is)."""
        bs = self.preset.get("val_batch_size") or self.preset.get("batch_size")
        loader = DataLoader(
            self.data.val,
            batch_size=min(bs, len(self.data.val)),
            sampler=ForeverSampler(len(self.data.val), self.seed + 1),
            **self.loader_kwargs(),
        )
        return iter(loader)

    def val_loader(self) -> DataLoader:
        bs = self.preset.get("val_batch_size") or self.preset.get("batch_size")
        return DataLoader(self.data.val, batch_size=bs, shuffle=False, **self.loader_kwargs())

    def fixed_subset(self, n: int) -> Subset:
        """The first n train samples of a seeded permutation: the same every run."""
        g = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(len(self.data.train), generator=g)[:n].tolist()
        return Subset(self.data.train, idx)

    # ---- logging -----------------------------------------------------------------
    def log_steps(self, rows: list) -> None:
        stage = float(self.stage_index)
        self._steps_out.append_many(
            [
                (r.step, r.time, stage, r.train_loss, r.val_loss, r.data_s, r.step_s, r.gpu_s, r.lr)
                for r in rows
            ]
        )

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        import time

        from engine.torchfree.runfolder import JsonlAppender, clean_number

        if "evals" not in self._out:
            self._out["evals"] = JsonlAppender(self.folder.file("evals.jsonl"))
        row = {"step": step, "time": time.time(), "stage": self.stage_names[self.stage_index]}
        row.update({k: clean_number(v) for k, v in metrics.items()})
        self._out["evals"].append(row)

    def log_losses(self, rows: list) -> None:
        """A custom step's named losses (a GAN's G and D) to losses.bin."""
        if "losses" not in self._out:
            from engine.torchfree.losses import LossesWriter

            self._out["losses"] = LossesWriter(self.folder.path)
        self._out["losses"].append(self.stage_index, [(r.step, r.losses) for r in rows if r.losses])

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        for listener in self.eval_listeners:
            listener(step, metrics)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
