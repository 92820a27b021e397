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

from cockpit.args import UsageError, parse_sets, parse_stages
from cockpit.launch import create_run, start_engine, stop_many
from engine.torchfree.ladder import STAGES
from engine.torchfree.preset import (
    SCHEMA,
    Preset,
    PresetError,
    apply_overrides,
    parse_value,
    validate,
)
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
    if getattr(args, "tricks", False):
        if grid:
            raise UsageError(
                "--tricks and --grid do not mix: --tricks runs the preset's tricks: list against "
                "its baseline; run a grid as its own ablation."
            )
        points = [point for _, point in trick_points(base, args.preset)]
    else:
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


def room_note(runs: list[tuple[dict, Preset]], workspace: Path, parallel: int) -> str | None:
    """The header's "N at a time" when this machine's slots, not ``--parallel``, say how many
    run at once (a 2-core machine has one CPU slot: `--parallel 2` runs them one by one)."""
    from engine.torchfree import slots
    from engine.torchfree.slots.words import plural

    try:
        gpus, cpu = slots.gpu_indices(), slots.cpu_slot_count(workspace)
        kind, need = slots.demand(runs[0][1].data, gpus, cpu)
    except (slots.SlotError, IndexError):
        return None
    room = (len(gpus) if kind == "gpu" else cpu) // max(1, need)
    if room >= min(parallel, len(runs)):
        return None
    if kind == "gpu":
        return f"{room} at a time, not {parallel}: this machine has {plural(len(gpus), 'GPU')}"
    config = Path(workspace) / slots.CONFIG_NAME
    return (
        f"{room} at a time, not {parallel}: this machine has {plural(cpu, 'CPU slot')} "
        f"(${slots.CPU_SLOTS_ENV}={parallel * need} or cpu_slots: {parallel * need} in {config} "
        f"for {parallel})"
    )


def run_ablation(args: argparse.Namespace) -> int:
    from engine.torchfree.runfolder import new_run_id

    base, runs, sets, stages = plan(args)
    tricks = getattr(args, "tricks", False)
    names = [name for name, _ in trick_points(base, args.preset)] if tricks else []
    workspace = resolve_workspace(args.workspace)
    from cockpit.launchers import choose
    from cockpit.launchers.slurm import lane_extra

    where = choose(workspace, getattr(args, "launcher", None), getattr(args, "slurm", None))
    # Slurm places the jobs (and --parallel N is N lanes of singleton jobs): no local check
    slurm = where.get("launcher") == "slurm"
    parallel = args.parallel if slurm else placement(runs, workspace, args.parallel)
    group = new_run_id(f"{base.name}-{'tricks' if tricks else 'ablate'}")
    folders = [
        create_run(
            workspace,
            preset,
            overrides={**sets, **point},
            stages=stages,
            group=group,
            extra={
                "group_parallel": parallel,
                "ablation_point": point,
                **({"trick": names[i]} if tricks else {}),
                **where,
                **(lane_extra(i, parallel) if slurm else {}),
            },
        )
        for i, (point, preset) in enumerate(runs)
    ]
    procs = [start_engine(f) for f in folders]
    cap = f"{parallel} at a time" if parallel else "one per free GPU"
    if slurm and not parallel:
        cap = "as Slurm schedules them"
    elif parallel and not slurm:
        cap = room_note(runs, workspace, parallel) or cap
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
    if tricks:
        print(format_tricks_table(trick_rows(folders)))
    else:
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


# ---------------------------------------------------------------- --tricks

BASELINE = "baseline"
BINOMIAL = ("accuracy", "pixel_acc", "miou", "macro_f1")
"""Fractions of the val set: their noise is the binomial standard error sqrt(p(1-p)/n)."""


def trick_points(base: Preset, source: str) -> list[tuple[str, dict]]:
    """[("baseline", {}), (trick, overrides), ...] from the preset's ``tricks:`` mapping.

    The baseline is the preset as it passed the ladder (tricks off); each trick switches one
    back on. A prune rule is switched off for the group: every trick must run its whole budget
    to be compared (the override shows in every run's overrides)."""
    tricks = base.get("tricks") or {}
    if not tricks:
        raise UsageError(
            f"{source} declares no tricks: add a tricks: mapping of names to overrides, e.g. "
            "tricks: {dropout: {model.dropout: 0.2}, weight_decay: {optimizer.weight_decay: 0.01}} "
            "(see docs/recipe.md)."
        )
    if BASELINE in tricks:
        raise PresetError(
            f"{base.where('tricks.' + BASELINE)}: '{BASELINE}' is the name of the run without "
            "tricks; give the trick another name."
        )
    off = {}
    if (base.get("prune") or {}).get("rule", "none") != "none":
        off = {"prune.rule": "none"}
    return [(BASELINE, dict(off))] + [(str(n), {**off, **dict(v)}) for n, v in tricks.items()]


def noise_se(metric: str, value: float, n_val: int | None, val_loss_se: float | None) -> float:
    """One standard error of a run's final val ``metric``: binomial for fractions of the val
    set (n = its samples; for pixel metrics the images, since a shape's pixels move together),
    the spread over val batches for the val loss; nan when unknown."""
    if metric in BINOMIAL and n_val and math.isfinite(value) and 0 <= value <= 1:
        return math.sqrt(max(value * (1 - value), 1.0 / n_val) / n_val)
    if metric == "val_loss" and val_loss_se is not None and math.isfinite(val_loss_se):
        return float(val_loss_se)
    return math.nan


def band_metric(task_metric: str | None) -> str:
    """The metric tricks are ranked on: the task's main one when its noise is known, else the
    val loss (regression's MAE has no standard error in the run folder; the val loss has)."""
    return task_metric if task_metric in BINOMIAL else "val_loss"


def compare_to_baseline(
    base: tuple[float, float], other: tuple[float, float], metric: str, z: float = 2.0
) -> tuple[float, float, str]:
    """(difference, noise band, verdict) of (value, se) pairs: the band is ``z`` standard errors
    of the difference (the two runs' errors added in quadrature); inside it, 'within noise'."""
    diff = other[0] - base[0]
    band = z * math.hypot(base[1], other[1])
    if not (math.isfinite(diff) and math.isfinite(band)):
        return diff, band, "?"
    higher = HIGHER_IS_BETTER.get(metric, True)
    if abs(diff) <= band:
        return diff, band, "within noise"
    return diff, band, "better" if (diff > 0) == higher else "worse"


def band_text(diff: float, band: float, metric: str) -> str:
    """'+0.4% ± 0.6%' for fractions (percentage points), '-0.0123 ± 0.0200' otherwise."""
    if not math.isfinite(diff):
        return "-"
    if metric in BINOMIAL:
        text = f"{100 * diff:+.1f}%"
        return text + (f" ± {100 * band:.1f}%" if math.isfinite(band) else "")
    text = f"{diff:+.3g}"
    return text + (f" ± {band:.2g}" if math.isfinite(band) else "")


def trick_rows(folders: list[RunFolder]) -> list[dict]:
    """group_rows plus, per run, its trick, the ranking metric with its standard error, and the
    difference to the baseline with its noise band."""
    rows = group_rows(folders)
    for row, folder in zip(rows, folders):
        summary = folder.summary()
        last = folder.last_eval() or {}
        row["trick"] = folder.request().get("trick") or "?"
        row["band_metric"] = band_metric(row["metric_name"] or None)
        value = last.get(row["band_metric"])
        row["value"] = float(value) if isinstance(value, (int, float)) else math.nan
        row["n_val"] = summary.get("val_size")
        row["se"] = noise_se(
            row["band_metric"], row["value"], row["n_val"], last.get("val_loss_se")
        )
    base = next((r for r in rows if r["trick"] == BASELINE), None)
    for row in rows:
        if base is None or row is base:
            row["diff"], row["band"], row["verdict"] = math.nan, math.nan, ""
            continue
        row["diff"], row["band"], row["verdict"] = compare_to_baseline(
            (base["value"], base["se"]), (row["value"], row["se"]), row["band_metric"]
        )
    return rows


def rank_tricks(rows: list[dict]) -> list[dict]:
    """The baseline first, then the tricks best first; runs without a number last."""
    base = [r for r in rows if r["trick"] == BASELINE]
    rest = [r for r in rows if r["trick"] != BASELINE]
    metric = rows[0]["band_metric"] if rows else "val_loss"
    sign = 1 if HIGHER_IS_BETTER.get(metric, True) else -1
    rest.sort(key=lambda r: -sign * r["diff"] if math.isfinite(r["diff"]) else math.inf)
    return base + rest


def format_tricks_table(rows: list[dict]) -> str:
    """The baseline and one row per trick: its val metric, the difference to the baseline with
    the noise band (2 standard errors), and whether that difference is more than noise."""
    rows = rank_tricks(rows)
    metric = rows[0]["band_metric"] if rows else "val_loss"
    header = ["TRICK", "RUN", "STATUS", "STEP", "VAL LOSS", metric.upper(), "VS BASELINE", ""]
    table = [header]
    for r in rows:
        value = r["value"]
        shown = (
            f"{100 * value:.1f}%" if metric in BINOMIAL and math.isfinite(value) else _num(value)
        )
        table.append(
            [
                r["trick"],
                r["run_id"],
                "pruned" if r["pruned"] else r["status"],
                str(r["step"] or "-"),
                _num(r["val_loss"]),
                shown,
                "(reference)"
                if r["trick"] == BASELINE
                else band_text(r["diff"], r["band"], metric),
                r["verdict"],
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    base = next((r for r in rows if r["trick"] == BASELINE), None)
    n = base.get("n_val") if base is not None and metric in BINOMIAL else None
    how = (
        f"binomial standard error of {metric} on {n} val samples"
        if n
        else f"standard error of {metric}"
    )
    out.append(
        f"  ± is the noise band: 2 standard errors of the difference ({how}, both runs); "
        "a difference inside it is no evidence either way — run more seeds or a larger val set."
    )
    out += [
        f"  {r['trick']} ({r['run_id']}): {r['reason']}"
        for r in rows
        if r["status"] not in ("passed",) and r["reason"]
    ]
    return "\n".join(out)


_TRICK_INFO: dict[str, tuple[str | None, int | None]] = {}


def _trick_info(path: Path) -> tuple[str | None, int | None]:
    """(trick name, val set size) of a run folder, read once it is known (cached)."""
    key = str(path)
    if key in _TRICK_INFO:
        return _TRICK_INFO[key]
    folder = RunFolder(path)
    info = (folder.request().get("trick"), folder.summary().get("val_size"))
    if info[0] is None or info[1] is not None:  # not a trick run, or complete: keep it
        _TRICK_INFO[key] = info
    return info


def baseline_bands(states: list, metric: str) -> dict:
    """For the app's compare view: run id -> its difference to the group's baseline run with
    the noise band ('+0.4% ± 3.8% ≈'; ▲ better, ▼ worse, ≈ within noise), when the compared
    runs come from ``cockpit ablate --tricks``; {} otherwise."""
    from rich.text import Text

    infos = {s.run_id: _trick_info(s.snapshot.path) for s in states}
    base = next((s for s in states if infos[s.run_id][0] == BASELINE), None)
    if base is None:
        return {}

    def value_se(state) -> tuple[float, float]:
        row = state.last_eval or {}
        v = row.get(metric)
        v = float(v) if isinstance(v, (int, float)) else math.nan
        return v, noise_se(metric, v, infos[state.run_id][1], row.get("val_loss_se"))

    ref = value_se(base)
    out = {}
    marks = {"better": ("▲", "#98c379"), "worse": ("▼", "#e06c75"), "within noise": ("≈", "dim")}
    for state in states:
        if state is base:
            out[state.run_id] = Text("baseline", style="dim")
            continue
        diff, band, verdict = compare_to_baseline(ref, value_se(state), metric)
        mark, style = marks.get(verdict, ("", "dim"))
        out[state.run_id] = Text(f"{band_text(diff, band, metric)} {mark}".strip(), style=style)
    return out
