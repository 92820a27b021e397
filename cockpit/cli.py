"""The ``cockpit`` command line (Contract 2). Torch-free and quick to start: the heavy
imports (textual for the app) happen only in the command that needs them."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import NoReturn

from cockpit.args import UsageError, parse_sets, parse_stages
from engine.torchfree.runfolder import WorkspaceError, check_workspace, disk_full, write_error

EPILOG = """commands:
  cockpit                          the terminal app on the workspace
  cockpit run PRESET               walk the ladder; prints each stage's verdict
  cockpit ls                       the workspace's runs
  cockpit kill RUN...              stop runs and every process they started
  cockpit fork RUN --set K=V       a child run from RUN's resolved preset (--warm: from its checkpoint)
  cockpit ablate PRESET --grid K=V1,V2   one run per grid point, N at a time
  cockpit ablate PRESET --tricks       the baseline plus one run per trick switched back on
  cockpit show RUN                 the batch before the net: images, masks, tokens, rows, stats
  cockpit export RUN... --tensorboard DIR [--live]   runs as TensorBoard event files
  cockpit --tensorboard DIR        the app, with a TensorBoard log directory's runs too

workspace: --workspace DIR, else $COCKPIT_WORKSPACE, else ./runs
exit codes: 0 no stage failed · 1 a stage failed, the run died or was killed · 2 bad preset or arguments"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (not the usage block) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (`{self.prog} --help` lists the arguments)\n")


def _parser() -> argparse.ArgumentParser:
    ws = _Parser(add_help=False)
    ws.add_argument(
        "--workspace", metavar="DIR", help="where runs live (default: $COCKPIT_WORKSPACE or ./runs)"
    )

    sets = _Parser(add_help=False)
    sets.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset key by dotted path; VALUE is YAML (repeatable)",
    )
    sets.add_argument("--stages", metavar="a,b,...", help="run only these stages, in this order")

    launch = _Parser(add_help=False)  # where the engines run (cockpit/launchers, docs/slurm.md)
    launch.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        help="local processes (default) or Slurm batch jobs (default: launcher: in the "
        "workspace's cockpit.yaml)",
    )
    launch.add_argument(
        "--slurm",
        dest="slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an sbatch option for the Slurm launcher: partition, account, time, qos, "
        "cpus_per_task, mem, constraint, extra (repeatable)",
    )

    p = _Parser(
        prog="cockpit",
        parents=[ws],
        description="A terminal cockpit for training runs: the ladder of sanity checks, per-batch "
        "curves, GPU vs data-loader wait, parallel ablations.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        parents=[ws, sets, launch],
        help="walk the ladder on a preset",
        description="Start an engine on PRESET and print each stage's verdict as it lands.",
    )
    run.add_argument("preset", metavar="PRESET", help="a YAML preset, e.g. presets/quickstart.yaml")
    run.add_argument(
        "--detach", action="store_true", help="leave the run going in the background and return"
    )

    ls = sub.add_parser("ls", parents=[ws], help="list the workspace's runs")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument(
        "--tensorboard", metavar="DIR", help="also list the runs of a TensorBoard log directory"
    )

    kill = sub.add_parser("kill", parents=[ws], help="stop runs and every process they started")
    kill.add_argument("runs", nargs="+", metavar="RUN", help="run ids (a unique prefix will do)")

    fork = sub.add_parser(
        "fork", parents=[ws, sets, launch], help="a child run from RUN's resolved preset"
    )
    fork.add_argument("run", metavar="RUN")
    fork.add_argument("--warm", action="store_true", help="start from RUN's latest checkpoint")
    fork.add_argument(
        "--detach", action="store_true", help="return at once instead of following the child"
    )

    ab = sub.add_parser("ablate", parents=[ws, sets, launch], help="one run per grid point")
    ab.add_argument("preset", metavar="PRESET")
    ab.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="values to try for KEY (several --grid make a product)",
    )
    ab.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help="runs at a time (default: one per free GPU, else 1)",
    )
    ab.add_argument(
        "--tricks",
        action="store_true",
        help="the baseline plus one run per trick of the preset's tricks: (dropout, batchnorm, ...)",
    )
    ab.add_argument("--detach", action="store_true", help="queue the runs and return")

    show = sub.add_parser(
        "show", parents=[ws], help="the batch before the net: what RUN's model receives"
    )
    show.add_argument("run", metavar="RUN", help="a run id (a unique prefix will do)")
    show.add_argument("--split", choices=("train", "val", "both"), default="both")
    show.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto", help="images in colour"
    )
    show.add_argument("--width", type=int, metavar="COLUMNS", help="default: the terminal's")

    ex = sub.add_parser("export", parents=[ws], help="runs as TensorBoard event files")
    ex.add_argument("runs", nargs="+", metavar="RUN", help="run ids (a unique prefix will do)")
    ex.add_argument(
        "--tensorboard",
        metavar="DIR",
        required=True,
        help="write DIR/<run_id>/events.out.tfevents.*",
    )
    ex.add_argument(
        "--live", action="store_true", help="keep writing while the runs train (until they end)"
    )
    p.add_argument(
        "--tensorboard", metavar="DIR", help="the app: also show a TensorBoard log directory's runs"
    )
    return p


def _user_errors() -> tuple[type[Exception], ...]:
    """What ``main`` turns into one line and exit 2. An ``except`` evaluates its classes only
    when something was raised, so the preset module (yaml, the ladder's settings: ~40 ms)
    is not imported on the way to the app's first frame."""
    from engine.torchfree.preset import PresetError

    return (PresetError, UsageError, LookupError)


def main(argv: list[str] | None = None) -> int:
    # a run folder or path with non-UTF-8 bytes in its name prints escaped, never a traceback
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="backslashreplace")
    args = _parser().parse_args(argv)
    try:
        if args.command is None:
            from cockpit.app import run_app
            from engine.torchfree.runfolder import resolve_workspace

            check_workspace(resolve_workspace(args.workspace))  # a file there: one sentence
            if getattr(args, "tensorboard", None):
                return run_app(args.workspace, tensorboard=args.tensorboard)
            return run_app(args.workspace)
        if getattr(args, "stages", None) is not None and not args.stages.strip():
            raise UsageError(
                "--stages is empty (an unset variable?); name stages, e.g. --stages init,train, "
                "or leave --stages out for the whole ladder."
            )
        handler = {
            "run": cmd_run,
            "ls": cmd_ls,
            "kill": cmd_kill,
            "fork": cmd_fork,
            "ablate": cmd_ablate,
            "export": cmd_export,
            "show": cmd_show,
        }
        return handler[args.command](args)
    except _user_errors() as e:
        msg = str(e).strip("'\"") if isinstance(e, LookupError) else str(e)
        print(f"cockpit: {msg}", file=sys.stderr)
        return 2
    except WorkspaceError as e:
        print(f"cockpit: {e}", file=sys.stderr)
        return e.code
    except OSError as e:  # a full disk or a vanished folder while writing: say which
        if isinstance(e, BrokenPipeError):  # `cockpit ls | head`: the reader left
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        print(f"cockpit: {write_error(e)}.", file=sys.stderr)
        return 1


# ---------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from cockpit.launch import create_run, start_engine
    from engine.torchfree import preset as presets
    from engine.torchfree.runfolder import resolve_workspace

    overrides = parse_sets(args.sets)
    preset = presets.load(args.preset, overrides)
    stages = parse_stages(args.stages)
    from cockpit.launchers import choose

    workspace = resolve_workspace(args.workspace)
    launcher = choose(workspace, args.launcher, args.slurm)
    folder = create_run(workspace, preset, overrides=overrides, stages=stages, extra=launcher)
    proc = start_engine(folder)
    if args.detach:
        print(f"{folder.run_id} started in the background · {folder.path}")
        print(f"  watch it: cockpit   ·   stop it: cockpit kill {folder.run_id}")
        return 0
    return watch(folder, proc)


def watch(folder, proc) -> int:
    """Follow one run on the console; Ctrl-C stops it (twice: at once)."""
    from cockpit import launch
    from cockpit.console import COLOR, Printer, follow

    p = Printer()
    summary = folder.summary()
    p.line(f"▸ {p.paint(folder.run_id, '1')}  ·  {folder.path}")
    interrupts = {"n": 0, "at": 0.0}

    def on_interrupt() -> None:
        interrupts["n"] += 1
        if interrupts["n"] == 1:
            interrupts["at"] = time.monotonic()
            p.line(
                p.paint("  stopping at the next step boundary (Ctrl-C again to kill it now)…", "33")
            )
            eng = launch.engine_process(folder)
            if eng is not None:
                import signal

                eng.send_signal(signal.SIGTERM)
            elif getattr(proc, "job_id", None):  # a Slurm job: scancel (SIGTERM to the engine)
                proc.terminate()
        else:
            launch.stop(folder, force=True)

    def tick() -> None:
        if interrupts["n"] == 1 and time.monotonic() - interrupts["at"] > launch.GRACE_S:
            launch.stop(folder, force=True)

    summary = follow(folder, proc, p, on_interrupt=on_interrupt, tick=tick)
    rc = proc.wait() if proc is not None else None
    if interrupts["n"]:
        launch.mark_killed_if_live(folder)
        summary = folder.summary()
    status = summary.get("status", "error")
    if summary.get("error_kind") == "preset" or rc == 2:
        p.line()
        print(
            f"cockpit: {summary.get('reason') or 'the preset is wrong (see engine.log)'}",
            file=sys.stderr,
        )
        return 2
    if status in ("queued", "running"):  # the engine died without a word
        status = "error"
        summary["reason"] = (
            f"the engine exited with code {rc} without finishing; see {folder.file('engine.log')}"
        )
        if disk_full(folder.path):
            summary["reason"] = f"no space left on device on {folder.path}; free some space"
    took = (summary.get("ended") or time.time()) - (
        summary.get("started") or summary.get("created") or time.time()
    )
    n = len(summary.get("stages", []))
    tail = f" — {summary['reason']}" if status != "passed" and summary.get("reason") else ""
    p.line(
        f"{p.paint(status, COLOR.get(status, '0'))} · {n} stage{'s' if n != 1 else ''} in {took:.1f} s{tail}"
    )
    p.line(p.paint(f"  run folder: {folder.path}", "2"))
    return 0 if status == "passed" else 1


def _fmt(x, digits: int = 4) -> str:
    from engine.torchfree.numbers import significant

    return significant(x, digits, "-")


def cmd_ls(args: argparse.Namespace) -> int:
    from cockpit.app.formatting import age
    from engine.torchfree.runfolder import display_status, iter_runs, resolve_workspace

    ws = check_workspace(resolve_workspace(args.workspace))
    snaps = [r.snapshot() for r in iter_runs(ws)]
    if getattr(args, "tensorboard", None):  # TensorBoard runs, mirrored (cockpit/tensorboard.py)
        from cockpit.tensorboard import snapshots

        snaps += snapshots(args.tensorboard)
    if args.json:
        print(json.dumps([s.to_json() for s in snaps], indent=1))
        return 0
    if not snaps:
        print(f"no runs in {ws} — start one with: cockpit run presets/quickstart.yaml")
        return 0
    rows = [("RUN", "PRESET", "STATUS", "STAGE", "STEP", "TRAIN", "VAL", "METRIC", "AGE")]
    for s in snaps:
        metric = f"{s.metric_name} {_fmt(s.metric, 3)}" if s.metric_name else "-"
        status = display_status(s.status, s.reason)  # 'pruned', as the app says
        status += f" ({s.queue})" if s.status == "queued" and s.queue else ""
        if s.slurm_job and s.status != "queued":  # running on node1, killed (timeout)
            where = f" on {s.node}" if s.node and s.status == "running" else ""
            ended = s.slurm_state if s.status in ("killed", "error") and s.slurm_state else ""
            status += f" (slurm {s.slurm_job}{where}{', ' + ended.lower() if ended else ''})"
        rows.append(
            (
                s.run_id,
                s.preset,
                status,
                s.stage or "-",
                str(s.step or "-"),
                _fmt(s.train_loss),
                _fmt(s.val_loss),
                metric,
                age(time.time() - s.created),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    from engine.torchfree import slots

    try:
        devices = slots.describe_slots(ws)
    except slots.SlotError as e:  # a bad slot setting: say so, the runs are listed anyway
        devices = str(e)
    if devices:
        print(devices)
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    from cockpit.launch import RunElsewhere, stop_many
    from engine.torchfree.runfolder import display_status, find_run, resolve_workspace

    ws = resolve_workspace(args.workspace)
    folders = list({f.path: f for f in (find_run(ws, ref) for ref in args.runs)}.values())
    code = 0
    for f, (was_running, seconds) in zip(folders, stop_many(folders)):
        if isinstance(was_running, RunElsewhere):
            print(f"{f.run_id}: not stopped — {was_running}".replace(f" — {f.run_id} ", " — it "))
            code = 1
        elif was_running:
            print(
                f"{f.run_id}: killed in {seconds:.1f} s, its processes gone and its slot free "
                f"(data kept in {f.path})"
            )
        else:
            state = f.state()
            print(
                f"{f.run_id}: not running ({display_status(state.get('status'), state.get('reason'))})"
            )
    return code


def cmd_fork(args: argparse.Namespace) -> int:
    from cockpit.fork import fork_run
    from engine.torchfree.runfolder import find_run, resolve_workspace

    ws = resolve_workspace(args.workspace)
    parent = find_run(ws, args.run)
    folder, proc = fork_run(
        ws,
        parent,
        parse_sets(args.sets),
        warm=args.warm,
        stages=parse_stages(args.stages),
        launcher=(args.launcher, args.slurm),
    )
    how = f"warm from its step {folder.request().get('fork_step')}" if args.warm else "cold"
    if args.detach:
        print(f"{folder.run_id} forked from {parent.run_id} ({how}) · {folder.path}")
        return 0
    print(f"forked from {parent.run_id}, {how}")
    return watch(folder, proc)


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cockpit.export import export
    from engine.torchfree.runfolder import find_run, resolve_workspace

    ws = check_workspace(resolve_workspace(args.workspace))
    folders = list({f.path: f for f in (find_run(ws, ref) for ref in args.runs)}.values())
    export(folders, Path(args.tensorboard), live=args.live)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from cockpit.show import cmd_show as show

    return show(args)


def cmd_ablate(args: argparse.Namespace) -> int:
    from cockpit.ablate import run_ablation

    return run_ablation(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
