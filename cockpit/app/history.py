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

import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate, pairwise
from pathlib import Path

from cockpit.app.envelope import Envelope, numpy
from engine.torchfree.losses import LOSSES_FILE, LossesTail
from engine.torchfree.runfolder import STEP_COLUMNS, JsonlTail, RunFolder, open_regular, read_json

EVAL_SKIP = ("step", "time", "stage", "val_loss", "val_loss_se")
"""Keys of an evals.jsonl row that are not full-val metrics to draw."""
DRAWN = ("step", "stage", "train_loss", "val_loss")
"""The steps.bin columns the curves need: only these are decoded."""
CHUNK_RECORDS = 1 << 15
"""Records decoded at a time (2.4 MB of steps.bin, cache-sized): a 10M-step run is read in
bounded memory."""


class StepsReader:
    """Incremental, vectorised reader of steps.bin: only whole records, only new bytes, only
    the columns drawn (a column the file's layout lacks comes back as NaN)."""

    def __init__(self, path: Path, columns: Sequence[str] = DRAWN):
        self.path = path
        self.offset = 0
        layout = STEP_COLUMNS
        header = read_json(path.with_suffix(".json"))
        if header and isinstance(header.get("columns"), list) and header["columns"]:
            layout = tuple(str(c) for c in header["columns"])
        self.width = len(layout)
        self.record = 8 * self.width
        self.wanted = {name: layout.index(name) if name in layout else None for name in columns}

    def read_new(self, chunk: int = CHUNK_RECORDS) -> Iterator[dict]:
        """Column arrays (float64) of the records appended since the last call, a chunk at a
        time; the offset moves past each chunk as it is handed out. One small buffer is
        reused (it stays in the CPU cache: reading and picking the columns cost one pass)."""
        np = numpy()
        try:
            f = open_regular(self.path)  # closed below (a generator); a FIFO: OSError, at once
        except OSError:
            return
        try:
            new = os.fstat(f.fileno()).st_size - self.offset
        except OSError:
            new = chunk * self.record
        if new < self.record:  # nothing new (a poll of a live run, four times a second)
            f.close()
            return
        # a buffer for what is there (a live run's poll reads a few records, not 2.4 MB)
        buf = bytearray(min(chunk, new // self.record + 1) * self.record)
        picks = [i for i in self.wanted.values() if i is not None]
        try:
            f.seek(self.offset)
            pending = 0  # bytes of a record cut in two by the last read
            while True:
                got = f.readinto(memoryview(buf)[pending:])
                if not got:
                    return
                size = pending + got
                n = size // self.record
                if n:
                    rows = np.frombuffer(buf, dtype="<f8", count=n * self.width)
                    rows = rows.reshape(n, self.width)
                    picked = np.empty((len(picks), n))  # native float64, one column a row
                    for k, i in enumerate(picks):
                        picked[k] = rows[:, i]
                    cols, k = {}, 0
                    for name, i in self.wanted.items():
                        if i is None:
                            cols[name] = np.full(n, math.nan)
                        else:
                            cols[name] = picked[k]
                            k += 1
                    self.offset += n * self.record
                    yield cols
                pending = size - n * self.record
                if pending:
                    buf[:pending] = buf[n * self.record : size]
        finally:
            f.close()


def finite_only(xs: Sequence[float], ys: Sequence[float]) -> tuple:
    """The points whose x and y are finite (val loss is NaN on steps without a val batch)."""
    np = numpy()
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    if math.isfinite(float(xs.sum()) + float(ys.sum())):  # one NaN or inf poisons a sum
        return xs, ys
    keep = np.isfinite(ys) & np.isfinite(xs)
    return xs[keep], ys[keep]


EMA_BLOCK = 1024
"""Points per block of the vectorised EMA (see ``debiased_ema``)."""
EMA_LOOP_MAX = 64
"""Up to this many new points (a live run's poll) the exact loop is cheaper than the blocks."""


@lru_cache(maxsize=32)
def _ema_weights(beta: float, size: int) -> tuple:
    """beta**-k, (1 - beta) * beta**k and beta**(k + 1) for k < size."""
    np = numpy()
    k = np.arange(size, dtype=np.float64)
    return beta**-k, (1.0 - beta) * beta**k, beta ** (k + 1)


def debiased_ema(ys: Sequence[float], beta: float, state: tuple[float, int]) -> tuple:
    """Exponential moving average with Adam's bias correction, continued from ``state``.

    ``state`` is (the raw average, points seen); the correction ``1 - beta**t`` keeps the
    first points from being pulled towards zero. Vectorised: within a block of ``B`` points
    the average is ``(1 - beta) * beta**t * cumsum(y_k * beta**-k)`` plus what the previous
    block carried in, ``beta**(t + 1) * carry``; only the carries (one per block) are chained
    in Python. ``B`` keeps ``beta**-B`` far from overflowing; values so large that it would
    anyway take the exact loop."""
    np = numpy()
    ema, seen = state
    ys = np.asarray(ys, dtype=np.float64)
    n = len(ys)
    if not n:
        return ys, state
    if beta <= 0.0:
        return ys.copy(), (float(ys[-1]), seen + n)
    keep = 1.0 - beta
    size = max(1, min(EMA_BLOCK, int(300.0 / -math.log(beta))))
    up, down, carry_in = _ema_weights(beta, size)
    if n > EMA_LOOP_MAX and max(ys.max(), -ys.min(), abs(ema)) * up[-1] < 1e300:
        blocks = -(-n // size)
        work = np.zeros((blocks, size))
        work.reshape(-1)[:n] = ys
        np.multiply(work, up, out=work)
        np.cumsum(work, axis=1, out=work)
        np.multiply(work, down, out=work)
        # the average entering each block: chained in Python, one multiply-add per block
        lasts = work[:, -1].tolist()
        carries = list(accumulate(lasts[:-1], lambda c, v: beta**size * c + v, initial=ema))
        work += np.multiply.outer(np.array(carries), carry_in)
        out = work.reshape(-1)[:n]
    else:  # a live run's few new points, or values near the float range: the exact loop
        out = np.array(
            list(accumulate(ys.tolist(), lambda e, v: beta * e + keep * v, initial=ema))[1:]
        )
    end = float(out[-1])
    # the correction is 1 within float precision after a few hundred points: apply it only there
    corrected = min(n, max(0, math.ceil(math.log(1e-17) / math.log(beta)) - seen))
    if corrected:
        out[:corrected] /= 1.0 - beta ** (seen + 1 + np.arange(corrected, dtype=np.float64))
    return out, (end, seen + n)


class SmoothedSeries:
    """One per-step series: its raw envelope and the envelope of its debiased EMA.

    The points themselves are not kept (a 10M-step run would hold 160 MB per series): a new
    smoothing re-reads them from steps.bin (see ``RunHistory``)."""

    def __init__(self, beta: float, start: tuple[float, int] = (0.0, 0)):
        self.beta = beta
        self.count = 0
        self.first_x = math.nan
        self.last_x = math.nan
        self.last_y = math.nan
        self.raw = Envelope()
        self.smooth = Envelope()
        self._state = start

    def __len__(self) -> int:
        return self.count

    @property
    def ema_state(self) -> tuple[float, int]:
        """Where a continuation (a warm fork's own points) picks up the average."""
        return self._state

    def extend(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        xs, ys = finite_only(xs, ys)
        if not len(ys):
            return
        if not self.count:
            self.first_x = float(xs[0])
        self.count += len(ys)
        self.last_x, self.last_y = float(xs[-1]), float(ys[-1])
        self.raw.extend(xs, ys)
        smoothed, self._state = debiased_ema(ys, self.beta, self._state)
        self.smooth.extend(xs, smoothed)

    def last(self) -> float:
        return self.last_y

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
    losses: dict[str, SmoothedSeries] = field(default_factory=dict)
    """A custom training step's named losses (losses.bin), e.g. a GAN's G and D."""

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
        self._steps = StepsReader(folder.file("steps.bin"))
        self._evals = JsonlTail(folder.file("evals.jsonl"))
        self._losses = LossesTail(folder.path)
        self._wanted_beta = beta
        self._sizes: tuple = ()
        """The sizes of steps.bin, evals.jsonl and losses.bin at the last poll."""

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
        if not self.loaded or self._wanted_beta != self.beta:
            # the first read, or a new smoothing: everything from disk, swapped in at once
            # (the points are not kept in memory; reading them again is a vectorised pass)
            beta = self._wanted_beta
            steps, evals = StepsReader(self.folder.file("steps.bin")), JsonlTail(self._evals.path)
            summary = self.folder.summary()
            names = list(summary.get("stage_names") or [])
            stages = self._fresh_stages(names, summary, beta)
            _ingest(stages, names, steps.read_new(), evals.read_new(), beta)
            losses = LossesTail(self.folder.path)
            _ingest_losses(stages, names, losses.read_new(), beta)
            with self.lock:
                self._steps, self._evals, self._losses, self.beta = steps, evals, losses, beta
                self.stage_names, self.stages = names, stages
                self.loaded = True
            return True
        # the files have not grown: nothing to read (three stats instead of three opens, four
        # times a second for a history on screen)
        sizes = tuple(
            _size(path)
            for path in (self._steps.path, self._evals.path, self._losses.folder / LOSSES_FILE)
        )
        if sizes == self._sizes:
            return False
        self._sizes = sizes
        changed = False
        names = self.stage_names
        for cols in self._steps.read_new():
            changed = True
            top = cols["stage"][-1]
            if math.isfinite(top) and int(top) >= len(names):  # stage names came late
                names = list(self.folder.summary().get("stage_names") or names)
            with self.lock:
                self.stage_names = names
                _ingest(self.stages, names, [cols], [], self.beta)
        evals = self._evals.read_new()
        if evals:
            changed = True
            with self.lock:
                _ingest(self.stages, names, [], evals, self.beta)
        named = self._losses.read_new()
        if named:
            changed = True
            with self.lock:
                _ingest_losses(self.stages, names, named, self.beta)
        return changed

    def _fresh_stages(
        self, names: list[str], summary: dict, beta: float
    ) -> dict[str, StageHistory]:
        stages = {name: _empty_stage(name, beta) for name in names}
        fork_step = summary.get("fork_step")
        parent = summary.get("parent")
        if parent and fork_step:
            prefix = inherited_history(self.folder.path.parent / parent, float(fork_step), beta)
            if prefix is not None and prefix.name in stages:
                own = stages[prefix.name]
                own.inherited, own.fork_step = prefix, float(fork_step)
                own.train = SmoothedSeries(beta, prefix.train.ema_state)
                own.val = SmoothedSeries(beta, prefix.val.ema_state)
        return stages


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _empty_stage(name: str, beta: float) -> StageHistory:
    return StageHistory(name, SmoothedSeries(beta), SmoothedSeries(beta))


def _segments(stage_col) -> list[tuple[float, int, int]]:
    """(stage value, first record, end) of each run of equal stage values in a chunk."""
    np = numpy()
    if not len(stage_col):
        return []
    stage_col = np.where(np.isnan(stage_col), -math.inf, stage_col)  # damaged runs stay one
    cuts = (np.flatnonzero(stage_col[1:] != stage_col[:-1]) + 1).tolist()
    bounds = [0, *cuts, len(stage_col)]
    return [(float(stage_col[i]), i, j) for i, j in pairwise(bounds)]


def _stage_name(value: float, names: list[str]) -> str | None:
    if not math.isfinite(value):  # a damaged record: nowhere to draw it
        return None
    i = int(value)
    return names[i] if 0 <= i < len(names) else f"stage {i}"


def _ingest(
    stages: dict[str, StageHistory],
    names: list[str],
    chunks,
    evals: list[dict],
    beta: float,
    upto_step: float | None = None,
    only: str | None = None,
) -> None:
    """Route step records (column chunks) and eval rows to their stages.

    Stages run in order, so each stage's records are one contiguous slice of a chunk, handed
    to its series whole (vectorised); ``only`` keeps one stage, ``upto_step`` its first part."""
    np = numpy()
    for cols in chunks:
        for value, start, end in _segments(cols["stage"]):
            name = _stage_name(value, names)
            if name is None or (only is not None and name != only):
                continue
            stage = stages.get(name)
            if stage is None:
                stage = stages[name] = _empty_stage(name, beta)
            xs = cols["step"][start:end]
            stop = len(xs) if upto_step is None else int(np.searchsorted(xs, upto_step, "right"))
            stage.train.extend(xs[:stop], cols["train_loss"][start : start + stop])
            stage.val.extend(xs[:stop], cols["val_loss"][start : start + stop])
    for row in evals:
        if upto_step is not None and _number(row.get("step")) > upto_step:
            continue
        name = str(row.get("stage", ""))
        if only is not None and name != only:
            continue
        stage = stages.get(name)
        if stage is None:
            stage = stages[name] = _empty_stage(name, beta)
        stage.evals.append(row)


def _ingest_losses(stages: dict[str, StageHistory], names: list[str], named: dict, beta: float):
    """A custom step's named losses, (stage index, name) -> (steps, values), to their stages."""
    for (index, loss), (xs, ys) in named.items():
        name = _stage_name(float(index), names)
        if name is None:
            continue
        stage = stages.get(name)
        if stage is None:
            stage = stages[name] = _empty_stage(name, beta)
        stage.losses.setdefault(loss, SmoothedSeries(beta)).extend(xs, ys)


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


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
    source = _stage_at_step(parent.file("steps.bin"), names, fork_step)
    if source is None:
        return None
    stage = None
    grand, grand_step = summary.get("parent"), summary.get("fork_step")
    if grand and grand_step:
        stage = inherited_history(parent_path.parent / grand, float(grand_step), beta, depth + 1)
    if stage is None or stage.name != source:
        stage = _empty_stage(source, beta)
    evals = JsonlTail(parent.file("evals.jsonl")).read_new()
    steps = StepsReader(parent.file("steps.bin")).read_new()
    _ingest({source: stage}, names, steps, evals, beta, upto_step=fork_step, only=source)
    return stage


def _stage_at_step(path: Path, names: list[str], step: float) -> str | None:
    """The last stage whose records include ``step`` (two columns read, vectorised)."""
    np = numpy()
    found = None
    for cols in StepsReader(path, ("step", "stage")).read_new():
        hits = np.flatnonzero(cols["step"] == step)
        if len(hits):
            found = float(cols["stage"][hits[-1]])
    if found is None:
        return None
    name = _stage_name(found, names)
    return name if name in names else None
