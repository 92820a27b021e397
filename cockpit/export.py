"""``cockpit export RUN... --tensorboard DIR [--live]``: cockpit runs as TensorBoard event files.

One event file per run, in ``DIR/<run_id>/`` (TensorBoard shows each as a run):

- every step of steps.bin as ``STAGE/train_loss``, ``STAGE/val_loss`` (steps with a val
  batch), ``STAGE/lr``, ``STAGE/data_s``, ``STAGE/step_s`` and ``STAGE/gpu_s`` (where
  measured) — each ladder stage trains a fresh model, so the stage is the tag's prefix and the
  step is the stage's own;
- evals.jsonl: full-val metrics as ``STAGE/eval/KEY``, per-step named values of a tracked
  script (``kind: step``) as ``STAGE/KEY``;
- text: ``preset`` (the resolved preset.yaml) and ``verdicts`` (each stage's verdict).

``--live`` keeps following the runs while they are live and exits when they have ended (or
on Ctrl-C); what is written is flushed every second, so TensorBoard shows it as it trains.
The files are rewritten from the start on each export.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from cockpit.tensorboard import EventWriter
from engine.torchfree.runfolder import LIVE, JsonlTail, RunFolder, StepsTail

STEP_TAGS = ("train_loss", "val_loss", "data_s", "step_s", "gpu_s", "lr")
EVAL_SKIP = ("step", "time", "stage", "kind")


class RunExport:
    """One run being written out; ``pump()`` writes what the run gained since the last call."""

    def __init__(self, folder: RunFolder, outdir: Path):
        self.folder = folder
        self.outdir = Path(outdir) / folder.run_id
        self.writer = EventWriter(
            self.outdir, filename=f"events.out.tfevents.{_stamp(folder)}.cockpit"
        )
        self.steps = StepsTail(folder.file("steps.bin"))
        self.evals = JsonlTail(folder.file("evals.jsonl"))
        self.stage_names: list[str] = []
        self.points = 0
        self.verdicts_written = 0
        preset = folder.preset_text()
        if preset:
            self.writer.text("preset", _code(preset), 0, _created(folder))

    def pump(self) -> int:
        """Write new steps and evals; returns the number of scalars written."""
        summary = self.folder.summary()
        self.stage_names = list(summary.get("stage_names") or self.stage_names)
        cols = self.steps.read_new()
        scalar = self.writer.scalar
        n = 0
        if len(cols):
            names = self.stage_names
            stage_col = cols["stage"]
            columns = [(name, cols[name]) for name in STEP_TAGS]
            steps, times = cols["step"], cols["time"]
            prefixes: dict[int, str] = {}
            for i in range(len(steps)):
                si = int(stage_col[i])
                prefix = prefixes.get(si)
                if prefix is None:
                    prefix = prefixes[si] = names[si] if 0 <= si < len(names) else f"stage{si}"
                step, wall = int(steps[i]), times[i]
                for name, col in columns:
                    v = col[i]
                    if v == v and v not in (math.inf, -math.inf):
                        scalar(f"{prefix}/{name}", v, step, wall)
                        n += 1
        for row in self.evals.read_new():
            stage = str(row.get("stage") or "train")
            step = int(row.get("step") or 0)
            wall = float(row.get("time") or time.time())
            middle = "" if row.get("kind") == "step" else "eval/"
            for key, v in row.items():
                if key in EVAL_SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                scalar(f"{stage}/{middle}{key}", float(v), step, wall)
                n += 1
        stages = summary.get("stages") or []
        if len(stages) > self.verdicts_written:
            lines = [
                f"- **{s.get('name')}** {s.get('status')}: {s.get('reason', '')}" for s in stages
            ]
            self.writer.text("verdicts", "\n".join(lines), len(stages), time.time())
            self.verdicts_written = len(stages)
        self.writer.flush()
        self.points += n
        return n

    def live(self) -> bool:
        return self.folder.state().get("status") in LIVE

    def close(self) -> None:
        self.writer.close()


def _created(folder: RunFolder) -> float:
    return float(folder.summary().get("created") or time.time())


def _stamp(folder: RunFolder) -> int:
    return int(_created(folder))


def _code(text: str) -> str:
    """Markdown (TensorBoard's text plugin renders it): the text as a code block."""
    return "\n".join("    " + line for line in text.splitlines())


def export(
    folders: list[RunFolder], outdir: Path, *, live: bool = False, interval: float = 1.0, say=print
) -> list[RunExport]:
    """Write each run's event file; with ``live``, follow them until none is live."""
    exports = [RunExport(f, outdir) for f in folders]
    try:
        for e in exports:
            e.pump()
            say(f"{e.folder.run_id}: {e.points} scalars → {e.writer.path}")
        if live:
            following = [e for e in exports if e.live()]
            if following:
                say(f"following {len(following)} live run(s); Ctrl-C stops (the runs go on)")
            while following:
                time.sleep(interval)
                for e in following:
                    e.pump()
                still = [e for e in following if e.live()]
                for e in following:
                    if e not in still:
                        e.pump()
                        say(f"{e.folder.run_id}: ended; {e.points} scalars in all")
                following = still
    except KeyboardInterrupt:
        say("stopped following (the runs go on)")
    finally:
        for e in exports:
            e.close()
    return exports
