"""Mutation score of the modules whose logic users trust (driven by benchmarks/mutation.sh).

For each module: a scratch copy of the checkout (``git archive HEAD``, or the working tree with
``--worktree``), a ``[tool.mutmut]`` section naming the one file to mutate and the tests that
judge it, the tests run once clean (a test that already fails is deselected and reported: a
mutant cannot be judged by it), then ``mutmut run``. mutmut 3 runs, for each mutant, only the
tests that called the mutated function (it records that in one traced run), in processes
forked from one warmed-up pytest — so torch is imported once per module, not per mutant.

Score = killed / (killed + survived + no tests); a timeout counts as killed (the mutant made
the tests hang), "no tests" counts against the score (nothing runs that code). The survivors
are printed as diffs. ``--quick`` judges a deterministic third of each module's mutants.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name: (the file mutated, the tests that judge it). In-process tests only: mutmut learns
# which tests reach a function by tracing calls in the pytest process, so a test that reaches
# it only through a `cockpit` subprocess would never be picked for its mutants.
MODULES: dict[str, tuple[str, list[str]]] = {
    "pruning": (
        "engine/torchfree/pruning.py",
        ["tests/test_pruning.py", "tests/test_boundaries.py", "-k", "not stage and not speed"],
    ),
    # slots: the fast in-process unit tests only (one poll at a time, fake clocks, a stand-in
    # NVML); tests/test_slots.py's threads and engine processes wait on the queue, so a
    # mutant that breaks it would cost each of them its timeout
    "slots": (
        "engine/torchfree/slots/*.py",
        [
            "tests/test_slots_units.py",
            "tests/test_boundaries.py",
            "-k",
            "slots_units or what_a_preset_asks_for or fits_with_exactly or cpu_slots_from_one_up"
            " or waiting_run_is_said",
        ],
    ),
    "kill": (
        "cockpit/launch.py",
        ["tests/test_launch_inprocess.py", "tests/test_kill.py", "tests/test_slots.py"],
    ),
    "runfolder": (
        "engine/torchfree/runfolder.py",
        [
            "tests/test_runfolder.py",
            "tests/test_runfolder_edges.py",
            "tests/test_runfolder_more.py",
            "tests/test_atomic.py",
            "tests/test_kill.py",
            "tests/app/test_data.py",
        ],
    ),
    "preset": (
        "engine/torchfree/preset.py",
        ["tests/test_preset.py", "tests/test_preset_edges.py", "tests/test_preset_more.py"],
    ),
    "stage_base": ("engine/stages/base.py", ["tests/test_boundaries.py"]),
    "speed": (
        "engine/stages/speed.py",
        [
            "tests/test_speed_stage.py",
            "tests/test_speed_busy.py",
            "tests/test_boundaries.py",
            "-k",
            "speed",
        ],
    ),
}
"""name: (the file mutated, the pytest arguments that select the tests judging it)."""
PYTEST_ARGS = ["-p", "no:cacheprovider", "-q", "-x", "-m", "not slow", "-W", "ignore"]
KILLED = {1, 3, 36, 24, -24, 152, 255, 37}  # killed, pytest error, timeouts, type check
SURVIVED = {0}
NO_TESTS = {5, 33}


def sh(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, text=True, capture_output=True, **kw)


def scratch_copy(worktree: bool) -> Path:
    work = Path(tempfile.mkdtemp(prefix="cockpit-mutation-"))
    if worktree:
        files = sh(["git", "ls-files", "-co", "--exclude-standard"], ROOT).stdout.split("\n")
        for f in filter(None, files):
            src = ROOT / f
            if src.is_file() and not f.startswith(("runs/", "mutants/")):
                (work / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, work / f)
    else:
        tar = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "xf", "-"], cwd=work, input=tar.stdout, check=True)
    return work


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def configure(work: Path, target: str, tests: list[str], deselect: list[str]) -> None:
    base = (work / "pyproject.toml").read_text().split("\n[tool.mutmut]")[0]
    args = PYTEST_ARGS + [a for d in deselect for a in ("--deselect", d)]
    (work / "pyproject.toml").write_text(
        base.rstrip()
        + "\n\n[tool.mutmut]\n"
        + 'source_paths = ["engine", "cockpit"]\n'
        + f"only_mutate = {toml_list([target])}\n"
        + f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
        + f"pytest_add_cli_args = {toml_list(args)}\n"
        + 'also_copy = ["presets", "benchmarks"]\n'
        + "timeout_multiplier = 5.0\n"
    )


def failing_tests(work: Path, tests: list[str], env: dict) -> list[str]:
    """Node ids that fail on the unmutated code (they cannot judge a mutant)."""
    args = [a for a in PYTEST_ARGS if a != "-x"]
    out = sh([sys.executable, "-m", "pytest", *args, "-rf", *tests], work, env=env).stdout
    return [
        line.split(" ", 2)[1]
        for line in out.splitlines()
        if line.startswith(("FAILED ", "ERROR ")) and "::" in line
    ]


def results(work: Path, target: str) -> dict[str, int | None]:
    """Exit code by mutant, over every file the pattern ``target`` names."""
    codes: dict[str, int | None] = {}
    for meta in sorted((work / "mutants").glob(target + ".meta")):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def sample(names: list[str], share: int = 3) -> list[str]:
    """A deterministic 1/share of the mutants (by a hash of the name, not their order)."""
    return [n for n in sorted(names) if zlib.crc32(n.encode()) % share == 0]


def run_module(name: str, work: Path, quick: bool, jobs: int, env: dict) -> dict:
    target, tests = MODULES[name]
    t0 = time.monotonic()
    shutil.rmtree(work / "mutants", ignore_errors=True)
    configure(work, target, tests, [])
    broken = failing_tests(work, tests, env)
    configure(work, target, tests, broken)
    mutmut = [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)]
    if quick:  # generate and trace first (a name that matches nothing), then judge a sample
        sh([*mutmut, "no-such-mutant-*"], work, env=env)
        names = sample(list(results(work, target)))
        proc = sh([*mutmut, *names], work, env=env) if names else None
    else:
        proc = sh(mutmut, work, env=env)
    codes = results(work, target)
    if quick:
        codes = {k: v for k, v in codes.items() if k in set(sample(list(codes)))}
    if not codes and proc is not None:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    killed = [k for k, v in codes.items() if v in KILLED]
    survived = [k for k, v in codes.items() if v in SURVIVED]
    untested = [k for k, v in codes.items() if v in NO_TESTS]
    other = [k for k, v in codes.items() if k not in {*killed, *survived, *untested}]
    judged = len(killed) + len(survived) + len(untested)
    return {
        "module": name,
        "file": target,
        "mutants": len(codes),
        "killed": len(killed),
        "survived": survived,
        "no_tests": untested,
        "other": other,
        "score": len(killed) / judged if judged else float("nan"),
        "seconds": time.monotonic() - t0,
        "deselected": broken,
    }


def show(work: Path, names: list[str], env: dict, limit: int) -> None:
    for n in names[:limit]:
        diff = sh([sys.executable, "-m", "mutmut", "show", n], work, env=env).stdout
        body = [
            ln
            for ln in diff.splitlines()
            if ln.startswith(("-", "+")) and ln[:3] not in ("---", "+++")
        ]
        print(f"    {n}")
        for ln in body[:6]:
            print(f"        {ln}")
    if len(names) > limit:
        print(f"    ... and {len(names) - limit} more (--show-all lists them)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    ap.add_argument(
        "--quick", action="store_true", help="judge a deterministic third of the mutants"
    )
    ap.add_argument("--worktree", action="store_true", help="the working tree, not HEAD")
    ap.add_argument("--jobs", type=int, default=2, help="mutants judged at once (default 2)")
    ap.add_argument("--show-all", action="store_true", help="every survivor's diff")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = ap.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown module {unknown[0]}; choose from {', '.join(MODULES)}")
    if (
        shutil.which("mutmut") is None
        and sh([sys.executable, "-m", "mutmut", "--version"], ROOT).returncode
    ):
        print("mutmut is not installed: pip install 'mutmut>=3,<4'", file=sys.stderr)
        return 2
    work = scratch_copy(args.worktree)
    # one thread per process: mutmut forks each mutant's pytest from a warmed-up one, and a
    # child forked after OpenMP's thread pool started can spin forever (a false "timeout")
    env = {
        **os.environ,
        "PYTHONPATH": "",
        "COCKPIT_WORKSPACE": str(work / "runs"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(
        f"mutation testing {'the working tree' if args.worktree else 'HEAD'} in {work} ({started})"
    )
    rows = []
    t0 = time.monotonic()
    try:
        for name in args.modules or list(MODULES):
            print(f"  {name}: mutating {MODULES[name][0]} ...", flush=True)
            r = run_module(name, work, args.quick, args.jobs, env)
            rows.append(r)
            print(
                f"  {name:11} {r['file']:32} {r['mutants']:5} mutants  {r['killed']:5} killed  "
                f"{len(r['survived']):4} survived  {len(r['no_tests']):4} no tests  "
                f"score {100 * r['score']:5.1f}%  ({r['seconds']:.0f} s)"
            )
            if r["deselected"]:
                print(f"    deselected (failing before any mutation): {', '.join(r['deselected'])}")
            show(work, r["survived"] + r["no_tests"], env, 10**6 if args.show_all else 15)
            sys.stdout.flush()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    killed = sum(r["killed"] for r in rows)
    judged = sum(r["killed"] + len(r["survived"]) + len(r["no_tests"]) for r in rows)
    total = time.monotonic() - t0
    score = killed / judged if judged else float("nan")
    print(
        f"score {100 * score:.1f}% ({killed} of {judged} mutants killed) in {total / 60:.1f} min, {started}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"started": started, "score": score, "modules": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
