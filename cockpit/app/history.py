"""A run's logged history, read incrementally, shaped for drawing.

One :class:`RunHistory` per run on screen. Its ``poll`` runs on the watcher thread and reads
only the bytes added to steps.bin and evals.jsonl since the last call; the UI thread draws
from it under ``lock``. Everything that mutates it runs on the watcher thread, so the lock is
held only while new points are folded in (or a recomputed series is swapped in).

Each ladder stage trains a fresh model, so curves are kept per stage. A warm fork's curves
begin with its parent's history of the same stage up to ``fork_step`` (its parent's parent's
before that, and so on), then continue with its own.
"""

from __future__ import annotations

import bisect
import math
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

from cockpit.app.envelope import Envelope
from engine.torchfree.runfolder import JsonlTail, RunFolder, StepColumns, StepsTail

EVAL_SKIP = ("step", "time", "stage", "val_loss", "val_loss_se")
"""Keys of an evals.jsonl row that are not full-val metrics to draw."""


def finite_only(
    xs: Sequence[float], ys: Sequence[float]
) -> tuple[Sequence[float], Sequence[float]]:
    """The points whose y is finite (val loss is NaN on steps without a val batch)."""
    if math.isfinite(sum(ys)):  # C-speed check; one NaN or inf poisons the sum
        return xs, ys
    keep = [i for i, v in enumerate(ys) if v - v == 0]  # False for NaN and ±inf
    return array("d", [xs[i] for i in keep]), array("d", [ys[i] for i in keep])


def debiased_ema(
    ys: Sequence[float], beta: float, state: tuple[float, int]
) -> tuple[array, tuple[float, int]]:
    """Exponential moving average with Adam's bias correction, continued from ``state``.

    ``state`` is (the raw average, points seen); the correction ``1 - beta**t`` keeps the
    first points from being pulled towards zero."""
    ema, seen = state
    if not len(ys):
        return array("d"), state
    if beta <= 0.0:
        return array("d", ys), (ys[-1], seen + len(ys))
    keep = 1.0 - beta
    out = array("d", accumulate(ys, lambda e, v: beta * e + keep * v, initial=ema))
    del out[0]
    end = out[-1]
    # the correction is 1 within float precision after a few hundred points: apply it only there
    power = beta ** (seen + 1)
    i = 0
    while i < len(out) and power > 1e-17:
        out[i] /= 1.0 - power
        power *= beta
        i += 1
    return out, (end, seen + len(ys))


class SmoothedSeries:
    """One per-step series: its raw envelope and the envelope of its debiased EMA."""

    def __init__(self, beta: float, start: tuple[float, int] = (0.0, 0)):
        self.beta = beta
        self.xs = array("d")
        """Raw x, kept to recompute the EMA when the smoothing changes."""
        self.ys = array("d")
        """Raw y (finite values only)."""
        self.raw = Envelope()
        self.smooth = Envelope()
        self._state = start

    def __len__(self) -> int:
        return len(self.ys)

    @property
    def ema_state(self) -> tuple[float, int]:
        """Where a continuation (a warm fork's own points) picks up the average."""
        return self._state

    def extend(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        xs, ys = finite_only(xs, ys)
        if not len(ys):
            return
        self.xs.extend(xs)
        self.ys.extend(ys)
        self.raw.extend(xs, ys)
        smoothed, self._state = debiased_ema(ys, self.beta, self._state)
        self.smooth.extend(xs, smoothed)

    def resmoothed(self, beta: float, start: tuple[float, int] = (0.0, 0)) -> SmoothedSeries:
        """A copy with another smoothing (the raw envelope is shared: it does not change)."""
        out = SmoothedSeries(beta, start)
        out.xs, out.ys, out.raw = self.xs, self.ys, self.raw
        smoothed, out._state = debiased_ema(self.ys, beta, start)
        out.smooth.extend(self.xs, smoothed)
        return out

    def last(self) -> float:
        return self.ys[-1] if self.ys else math.nan

    def smoothed_last(self) -> float:
        """The debiased EMA at the latest point."""
        ema, seen = self._state
        if not seen:
            return math.nan
        return ema if self.beta <= 0 else ema / (1.0 - self.beta**seen)


@dataclass
class StageHistory:
    """The curves of one ladder stage."""

    name: str
    train: SmoothedSeries
    val: SmoothedSeries
    evals: list[dict] = field(default_factory=list)
    inherited: StageHistory | None = None
    """A warm fork's parent's history of this stage, up to ``fork_step``."""
    fork_step: float | None = None

    @property
    def steps(self) -> int:
        """Steps logged by this run in this stage (the parent's not counted)."""
        return len(self.train)

    def metric_names(self) -> list[str]:
        names: dict[str, None] = {}
        for history in (self.inherited, self):
            for row in history.evals if history else ():
                for key, value in row.items():
                    if key not in EVAL_SKIP and isinstance(value, (int, float)):
                        names[key] = None
        return list(names)

    def eval_series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of one full-val metric, the parent's part included."""
        xs: list[float] = []
        ys: list[float] = []
        for history in (self.inherited, self):
            for row in history.evals if history else ():
                value = row.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    xs.append(float(row.get("step", 0)))
                    ys.append(float(value))
        return xs, ys


class RunHistory:
    """Everything one run logged, per stage, fed incrementally by :meth:`poll`."""

    def __init__(self, folder: RunFolder, beta: float = 0.9):
        self.folder = folder
        self.beta = beta
        self.lock = threading.Lock()
        """Held by the watcher while it changes the curves, by the UI while it reads them."""
        self.loaded = False
        """True once the history on disk has been read (until then the view says 'loading')."""
        self.stages: dict[str, StageHistory] = {}
        self.stage_names: list[str] = []
        self._steps = StepsTail(folder.file("steps.bin"))
        self._evals = JsonlTail(folder.file("evals.jsonl"))
        self._wanted_beta = beta

    @property
    def run_id(self) -> str:
        return self.folder.run_id

    def request_smoothing(self, beta: float) -> None:
        """Ask for another smoothing; the watcher thread recomputes on its next poll."""
        self._wanted_beta = beta

    def latest_stage(self) -> str | None:
        """The last stage (in ladder order) that logged steps or evals."""
        names = self.stages_with_data()
        return names[-1] if names else None

    def stages_with_data(self) -> list[str]:
        """Stages that logged something, in ladder order (then any the summary did not name)."""
        with self.lock:
            names = [*self.stage_names, *(n for n in self.stages if n not in self.stage_names)]
            return [
                n
                for n in names
                if (s := self.stages.get(n)) and (s.steps or s.evals or s.inherited)
            ]

    # ---- the watcher thread's side -------------------------------------------------
    def poll(self) -> bool:
        """Read what was appended since the last call; True when the curves changed."""
        changed = False
        if self._wanted_beta != self.beta:
            self._resmooth(self._wanted_beta)
            changed = True
        cols = self._steps.read_new()
        evals = self._evals.read_new()
        if not self.loaded:
            summary = self.folder.summary()
            names = list(summary.get("stage_names") or [])
            stages = self._fresh_stages(names, summary)
            _ingest(stages, names, cols, evals, self.beta)
            with self.lock:
                self.stage_names, self.stages = names, stages
                self.loaded = True
            return True
        if not len(cols) and not evals:
            return changed
        names = self.stage_names
        if len(cols) and int(cols["stage"][-1]) >= len(names):  # stage names came late
            names = list(self.folder.summary().get("stage_names") or names)
        with self.lock:
            self.stage_names = names
            _ingest(self.stages, names, cols, evals, self.beta)
        return True

    def _fresh_stages(self, names: list[str], summary: dict) -> dict[str, StageHistory]:
        stages = {name: _empty_stage(name, self.beta) for name in names}
        fork_step = summary.get("fork_step")
        parent = summary.get("parent")
        if parent and fork_step:
            prefix = inherited_history(
                self.folder.path.parent / parent, float(fork_step), self.beta
            )
            if prefix is not None and prefix.name in stages:
                own = stages[prefix.name]
                own.inherited, own.fork_step = prefix, float(fork_step)
                own.train = SmoothedSeries(self.beta, prefix.train.ema_state)
                own.val = SmoothedSeries(self.beta, prefix.val.ema_state)
        return stages

    def _resmooth(self, beta: float) -> None:
        replaced = {}
        for name, stage in self.stages.items():
            replaced[name] = _resmoothed_stage(stage, beta)
        with self.lock:
            self.stages = replaced
            self.beta = beta


def _empty_stage(name: str, beta: float) -> StageHistory:
    return StageHistory(name, SmoothedSeries(beta), SmoothedSeries(beta))


def _resmoothed_stage(stage: StageHistory, beta: float) -> StageHistory:
    inherited = _resmoothed_stage(stage.inherited, beta) if stage.inherited else None
    train_start = inherited.train.ema_state if inherited else (0.0, 0)
    val_start = inherited.val.ema_state if inherited else (0.0, 0)
    return StageHistory(
        stage.name,
        stage.train.resmoothed(beta, train_start),
        stage.val.resmoothed(beta, val_start),
        stage.evals,
        inherited,
        stage.fork_step,
    )


def _ingest(
    stages: dict[str, StageHistory],
    names: list[str],
    cols: StepColumns,
    evals: list[dict],
    beta: float,
    upto_step: float | None = None,
) -> None:
    """Route new step records and eval rows to their stages.

    Stages run in order, so the stage column never decreases: each stage's records are one
    contiguous slice, found by bisection instead of a Python loop over a million records."""
    for i, start, end in _stage_slices(cols):
        name = names[i] if 0 <= i < len(names) else f"stage {i}"
        stage = stages.get(name)
        if stage is None:
            stage = stages[name] = _empty_stage(name, beta)
        xs = cols["step"][start:end]
        stop = len(xs) if upto_step is None else bisect.bisect_right(xs, upto_step)
        stage.train.extend(xs[:stop], cols["train_loss"][start : start + stop])
        stage.val.extend(xs[:stop], cols["val_loss"][start : start + stop])
    for row in evals:
        if upto_step is not None and float(row.get("step", 0)) > upto_step:
            continue
        name = str(row.get("stage", ""))
        stage = stages.get(name)
        if stage is None:
            stage = stages[name] = _empty_stage(name, beta)
        stage.evals.append(row)


def inherited_history(
    parent_path: Path, fork_step: float, beta: float, depth: int = 0
) -> StageHistory | None:
    """The parent's history of the stage the fork continues, up to ``fork_step``, as one
    stage: a parent that is itself a warm fork brings its own parent's history first.

    That stage is the parent's last one that logged ``fork_step`` (where its checkpoint was
    taken)."""
    parent = RunFolder(parent_path)
    summary = parent.summary()
    if not summary or depth > 32:  # a lineage cycle can only come from hand-edited folders
        return None
    names = list(summary.get("stage_names") or [])
    cols = StepsTail(parent.file("steps.bin")).read_new()
    source = _stage_at_step(cols, names, fork_step)
    if source is None:
        return None
    stage = None
    grand, grand_step = summary.get("parent"), summary.get("fork_step")
    if grand and grand_step:
        stage = inherited_history(parent_path.parent / grand, float(grand_step), beta, depth + 1)
    if stage is None or stage.name != source:
        stage = _empty_stage(source, beta)
    evals = [
        r for r in JsonlTail(parent.file("evals.jsonl")).read_new() if r.get("stage") == source
    ]
    _ingest(
        {source: stage}, names, _only_stage(cols, names, source), evals, beta, upto_step=fork_step
    )
    return stage


def _stage_slices(cols: StepColumns) -> list[tuple[int, int, int]]:
    """(stage index, first record, end) of each stage's contiguous run of records."""
    stage_col = cols["stage"]
    out = []
    start = 0
    while start < len(stage_col):
        end = bisect.bisect_right(stage_col, stage_col[start], lo=start)
        out.append((int(stage_col[start]), start, end))
        start = end
    return out


def _stage_at_step(cols: StepColumns, names: list[str], step: float) -> str | None:
    steps = cols["step"]
    for index, start, end in reversed(_stage_slices(cols)):
        at = bisect.bisect_left(steps, step, lo=start, hi=end)  # steps ascend within a stage
        if at < end and steps[at] == step:
            return names[index] if 0 <= index < len(names) else None
    return None


def _only_stage(cols: StepColumns, names: list[str], name: str) -> StepColumns:
    index = names.index(name)
    for i, start, end in _stage_slices(cols):
        if i == index:
            return StepColumns({key: col[start:end] for key, col in cols.columns.items()})
    return StepColumns()
