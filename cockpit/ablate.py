"""``cockpit ablate``: one run per point of a grid, or per entry of the preset's ``ablations:``
list, all from the same resolved preset; waits and prints overrides against final metrics.

- ``--grid KEY=V1,V2,...`` (repeatable: a product); values are YAML, commas inside brackets
  or quotes stay with their value (``--grid model.widths=[8,16],[32,64]``). Without ``--grid``
  the preset's ``ablations:`` list is used.
- The stages default to ``train`` (an ablation compares training runs); ``--stages`` changes it.
- The runs share a ``group`` id (run.json and summary.json): the app's Compare view and the
  pruning rule find a group's runs by it.
- ``--parallel N`` caps how many of the group run at once. The engines enforce the cap through
  the device slots (engine/torchfree/slots.py), so it holds after this command has exited (``--detach``).
  The default is one per free GPU — the slots alone do that — or 1 on a machine without GPUs.
- Exit codes as ``cockpit run`` (Contract 2): 0 when every run passed, 1 when one failed, crashed
  or was killed — a run stopped by the pruning rule is a killed run too (the table says
  "pruned") — or Ctrl-C stopped them all, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import math
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from cockpit.cli import UsageError, parse_sets, parse_stages
from cockpit.launch import create_run, start_engine, stop_many
from engine.torchfree.ladder import STAGES
from engine.torchfree.preset import SCHEMA, Preset, PresetError, apply_overrides, parse_value, validate
from engine.torchfree.runfolder import LIVE, RunFolder, resolve_workspace
from engine.torchfree.tasks import HIGHER_IS_BETTER

DEFAULT_STAGES = ["train"]
_KEY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*$")


def split_values(text: str) -> list[str]:
    """'1e-3,[8,16],"a,b"' -> ['1e-3', '[8,16]', '"a,b"']: commas inside brackets or quotes stay."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def parse_grid(specs: list[str]) -> list[tuple[str, list[Any]]]:
    """``["optimizer.lr=1e-3,3e-3"]`` -> ``[("optimizer.lr", [0.001, 0.003])]``."""
    grid: list[tuple[str, list[Any]]] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise UsageError(
                f"--grid {spec}: expected KEY=V1,V2,... with a dotted key, e.g. --grid optimizer.lr=1e-4,3e-4."
            )
        texts = split_values(values)
        if not values.strip() or any(not t for t in texts):
            raise UsageError(
                f"--grid {spec}: a value is empty; give values separated by commas, e.g. --grid {key}=1e-4,3e-4."
            )
        if any(k == key for k, _ in grid):
            raise UsageError(
                f"--grid {key} is given twice; put all its values in one --grid {key}=V1,V2,..."
            )
        top = key.split(".")[0]
        if top not in SCHEMA and top not in STAGES:
            raise UsageError(f"--grid {spec}: '{top}' is not a preset key{_suggest(top)}.")
        grid.append((key, [parse_value(t) for t in texts]))
    return grid


def _suggest(word: str) -> str:
    match = difflib.get_close_matches(word, [*SCHEMA, *STAGES], n=1, cutoff=0.6)
    return f" — did you mean '{match[0]}'?" if match else f"; preset keys are {', '.join(SCHEMA)}"


def grid_points(grid: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in grid))]


def plan(args: argparse.Namespace) -> tuple[Preset, list[tuple[dict, Preset]], dict, list[str]]:
    """Everything checked before any run starts: (base, [(point, preset)], --set, stages)."""
    from engine.torchfree import preset as presets
    from engine.torchfree.pruning import settings_of

    sets = parse_sets(args.sets)
    base = presets.load(args.preset, sets)
    stages = parse_stages(args.stages) or list(DEFAULT_STAGES)
    if args.parallel is not None and args.parallel < 1:
        raise UsageError(
            f"--parallel {args.parallel}: give how many runs may go at once, 1 or more."
        )
    grid = parse_grid(args.grid)
    points = grid_points(grid) if grid else [dict(a) for a in base.get("ablations") or []]
    if not points:
        raise UsageError(
            f"nothing to ablate in {args.preset}: give --grid KEY=V1,V2,... or add an ablations: list "
            "to the preset, e.g. ablations: [{optimizer.lr: 1.0e-3}, {optimizer.lr: 3.0e-3}]."
        )
    settings_of(base)
    runs = []
    for point in points:
        preset = apply_overrides(base, point)
        try:
            validate(preset)
        except PresetError as e:
            raise PresetError(f"{e} (in the ablation {_point_text(point)})") from None
        runs.append((point, preset))
    return base, runs, sets, stages


def _point_text(point: dict) -> str:
    return " ".join(f"{k}={_value_text(v)}" for k, v in point.items())


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def placement(runs: list[tuple[dict, Preset]], workspace: Path, parallel: int | None) -> int | None:
    """The group's cap (default: none with GPUs, the slots give one run per free GPU; else 1),
    after checking that every run fits this machine at all."""
    from engine.torchfree import slots

    try:
        gpus = slots.gpu_indices()
        for _, preset in runs:
            slots.check_fits(
                *slots.demand(preset.data, gpus, slots.cpu_slot_count(workspace)), gpus
            )
    except slots.SlotError as e:
        raise UsageError(str(e)) from None
    return parallel or (None if gpus else 1)


def run_ablation(args: argparse.Namespace) -> int:
    from engine.torchfree.runfolder import new_run_id

    base, runs, sets, stages = plan(args)
    workspace = resolve_workspace(args.workspace)
    parallel = placement(runs, workspace, args.parallel)
    group = new_run_id(f"{base.name}-ablate")
    folders = [
        create_run(
            workspace,
            preset,
            overrides={**sets, **point},
            stages=stages,
            group=group,
            extra={"group_parallel": parallel, "ablation_point": point},
        )
        for point, preset in runs
    ]
    procs = [start_engine(f) for f in folders]
    cap = f"{parallel} at a time" if parallel else "one per free GPU"
    print(
        f"ablation {group}: {len(folders)} runs of {base.name} ({', '.join(stages)}), {cap} · {workspace}"
    )
    if args.detach:
        for folder, (point, _) in zip(folders, runs):
            print(f"  {folder.run_id}  {_point_text(point)}")
        print(
            f"  watch them: cockpit ls   ·   stop them: cockpit kill {' '.join(f.run_id for f in folders)}"
        )
        return 0
    interrupted = follow(folders, procs, [p for p, _ in runs])
    rows = group_rows(folders)
    print()
    print(format_table(rows, keys=list(dict.fromkeys(k for p, _ in runs for k in p))))
    failed = [r for r in rows if is_failure(r)]
    return 1 if interrupted or failed else 0


def is_failure(row: dict) -> bool:
    return row["status"] in ("failed", "error", "killed")


def follow(folders: list[RunFolder], procs: list[subprocess.Popen], points: list[dict]) -> bool:
    """Print each run's changes until all have ended; Ctrl-C stops them all. True if interrupted."""
    seen: dict[str, tuple] = {}
    width = max(len(f.run_id) for f in folders)
    try:
        while True:
            live = False
            for folder, proc, point in zip(folders, procs, points):
                proc.poll()  # reap our child as soon as it exits
                state = folder.state()
                status = state.get("status", "?")
                live = live or status in LIVE or proc.returncode is None
                mark = (status, state.get("queue"))
                if seen.get(folder.run_id) != mark:
                    seen[folder.run_id] = mark
                    print(
                        f"  {folder.run_id:<{width}}  {_point_text(point)}  {_status_text(state)}",
                        flush=True,
                    )
            if not live:
                return False
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("  stopping every run of the ablation…", flush=True)
        stop_many(folders)
        for proc in procs:
            proc.wait()
        return True


def _status_text(state: dict) -> str:
    status = state.get("status", "?")
    if status == "queued":
        return "queued" + (f": {state['queue']}" if state.get("queue") else "")
    if status == "running":
        return f"running on {state.get('slots') or 'its slot'}"
    return status + (f" — {state['reason']}" if state.get("reason") and status != "passed" else "")


def group_rows(folders: list[RunFolder]) -> list[dict]:
    """Per run: overrides, status and final numbers (the train stage's, else the last logged).

    ``train_loss`` is the mean of the last 10 batches, ``val_loss`` the last full-val loss,
    ``metric`` the task's main full-val metric — the same for finished and stopped runs."""
    rows = []
    for folder in folders:
        state = folder.state()
        snap = folder.snapshot()
        tail = [x for x in folder.last_steps(10)["train_loss"] if math.isfinite(x)]
        last_eval = folder.last_eval() or {}
        rows.append(
            {
                "run_id": folder.run_id,
                "overrides": state.get("overrides") or {},
                "point": folder.request().get("ablation_point") or {},
                "status": state.get("status", "?"),
                "reason": state.get("reason") or "",
                "pruned": state.get("pruned"),
                "step": snap.step,
                "train_loss": sum(tail) / len(tail) if tail else math.nan,
                "val_loss": last_eval.get("val_loss")
                if last_eval.get("val_loss") is not None
                else math.nan,
                "metric_name": snap.metric_name,
                "metric": snap.metric,
            }
        )
    return rows


def best_row(rows: list[dict]) -> dict | None:
    """The run with the best main metric (or, without one, the lowest val loss)."""
    scored = [r for r in rows if math.isfinite(r["metric"])]
    if scored:
        higher = HIGHER_IS_BETTER.get(scored[0]["metric_name"], True)
        return (max if higher else min)(scored, key=lambda r: r["metric"])
    scored = [r for r in rows if math.isfinite(r["val_loss"])]
    return min(scored, key=lambda r: r["val_loss"]) if scored else None


def _num(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.4g}"


def format_table(rows: list[dict], keys: list[str]) -> str:
    """Overrides against final numbers; ★ marks the best run."""
    metric = next((r["metric_name"] for r in rows if r["metric_name"]), "")
    best = best_row(rows)
    header = [
        "",
        "RUN",
        *keys,
        "STATUS",
        "STEP",
        "TRAIN LOSS",
        "VAL LOSS",
        *([metric.upper()] if metric else []),
    ]
    table = [header]
    for r in rows:
        status = "pruned" if r["pruned"] else r["status"]
        line = [
            "★" if r is best else "",
            r["run_id"],
            *[_value_text(r["point"].get(k, "-")) for k in keys],
            status,
            str(r["step"] or "-"),
            _num(r["train_loss"]),
            _num(r["val_loss"]),
        ]
        if metric:
            line.append(_num(r["metric"]))
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    notes = [
        f"  {r['run_id']}: {r['reason']}"
        for r in rows
        if r["status"] not in ("passed",) and r["reason"]
    ]
    return "\n".join(out + notes)
