"""Bad input, as a new user or a hostile one would type it: every case exits 2 (or 1 for the
machine's fault) with exactly one sentence on stderr, no traceback, no hang, and no run folder
left behind. In process (``cockpit.cli.main``), so the whole suite takes a few seconds; the
engine is never started (a case that got that far fails).

The cases come from issue 8's report (106 inputs, 8 tracebacks, 3 hangs, 2 actions on the
wrong run) and from what scripts and shells really pass: unset variables (``kill "$RUN"``),
PyYAML's known hazards (tags, the "billion laughs" alias bomb — CVE-2017-18342 and PyYAML
issue #420 https://github.com/yaml/pyyaml/issues/420), FIFOs and devices where a file is
expected, and a planted checkpoint pointing outside its run folder.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cockpit import cli, launch
from engine.torchfree.runfolder import iter_runs, write_json_atomic

BASE = """name: abuse
task: classification
model: {_target_: mytask.MLP, in_dim: 16, classes: 4}
data: {_target_: mytask.make_data}
optimizer: {_target_: torch.optim.Adam, lr: 1.0e-3}
"""

BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")),
        "model: {_target_: m.M}",
        "data: {_target_: m.d}",
    ]
)

BOMB_FLOW = (
    "{"
    + ", ".join(
        ["a: &a [" + ",".join(["x"] * 9) + "]"]
        + [f"{c}: &{c} [{','.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    )
    + "}"
)

# (case id, preset text or bytes, words expected in the one line)
PRESET_FILES = [
    ("empty", "", "empty"),
    ("only-comments", "# nothing here\n", "empty"),
    ("a-list", "- model\n- data\n", "mapping of keys"),
    ("a-scalar", "hello\n", "mapping of keys"),
    ("binary", b"\x00\x01\x02\xff" * 200, "binary"),
    ("latin-1", "name: caf\xe9\n".encode("latin-1") + BASE.encode(), "not UTF-8"),
    ("utf-16", BASE.encode("utf-16"), "UTF-8"),
    ("python-object", BASE + "x: !!python/object:os.system {}\n", "tag"),
    ("python-apply", "model: !!python/object/apply:os.system ['id']\n", "tag"),
    ("python-name", "model: !!python/name:os.system\n", "tag"),
    ("local-tag", BASE + "seed: !custom 3\n", "tag"),
    ("binary-tag", BASE + "name: !!binary aGVsbG8=\n", "tag"),
    ("set-tag", BASE + "stages: !!set {init: null}\n", "tag"),
    ("recursive-alias", BASE + "stages: &s [init, *s]\n", "recursive alias"),
    ("alias-bomb", BOMB, "expands to more than"),
    ("deep-nesting", BASE + "model2: " + "[" * 200 + "]" * 200 + "\n", "nested"),
    ("list-as-key", BASE + "? [a, b]\n: c\n", "key must be plain text"),
    ("mapping-as-key", BASE + "? {a: 1}\n: c\n", "key must be plain text"),
    ("duplicate-key", BASE + "seed: 1\nseed: 2\n", "given twice"),
    ("unclosed-brace", "model: {_target_: a.B\ndata: {_target_: a.c}\n", "YAML syntax error"),
    ("tab-indent", "model:\n\t_target_: a.B\n", "YAML syntax error"),
    ("unknown-key", BASE + "optimzer: {}\n", "did you mean 'optimizer'"),
    ("no-model", "data: {_target_: a.b}\n", "no 'model'"),
    ("no-data", "model: {_target_: a.B}\n", "no 'data'"),
    ("model-a-string", "model: mytask.MLP\ndata: {_target_: a.b}\n", "mapping with a _target_"),
    ("model-no-target", "model: {in_dim: 3}\ndata: {_target_: a.b}\n", "no _target_"),
    ("target-not-dotted", "model: {_target_: os}\ndata: {_target_: a.b}\n", "dotted path"),
    (
        "target-injection",
        "model: {_target_: 'os.system; rm -rf ~'}\ndata: {_target_: a.b}\n",
        "dotted path",
    ),
    ("target-a-number", "model: {_target_: 42}\ndata: {_target_: a.b}\n", "dotted path"),
    ("huge", BASE + "# " + "x" * (1 << 20) + "\n", "at most 1 MB"),
]

# (case id, extra preset line(s), words) — one wrong value each, on top of BASE
BAD_VALUES = [
    ("task", "task: translation", "one of classification"),
    ("device", "device: gpu", "auto, cpu, cuda"),
    ("device-index-huge", "device: 'cuda:99999999999999999999'", "auto, cpu, cuda"),
    ("gpus-negative", "gpus: -1", "gpus must be"),
    ("gpus-huge", "gpus: 1000000000000000000000000000000", "gpus must be"),
    ("batch-zero", "batch_size: 0", "batch_size must be an integer > 0"),
    ("batch-negative", "batch_size: -5", "batch_size must be an integer > 0"),
    ("batch-26-digits", "batch_size: 12345678901234567890123456", "from 1 to"),
    ("batch-float", "batch_size: 1.5", "batch_size must be an integer"),
    ("batch-bool", "batch_size: true", "batch_size must be an integer"),
    ("batch-text", "batch_size: '32'", "batch_size must be an integer"),
    ("val-batch-zero", "val_batch_size: 0", "val_batch_size must be"),
    ("workers-negative", "num_workers: -1", "num_workers must be"),
    ("workers-million", "num_workers: 1000000", "from 0 to 1024"),
    ("prefetch-zero", "prefetch_factor: 0", "prefetch_factor must be"),
    ("pin-yes", "pin_memory: sometimes", "true, false or auto"),
    ("persistent-no-workers", "persistent_workers: true", "needs num_workers > 0"),
    ("clip-negative", "grad_clip: -1", "grad_clip must be"),
    ("clip-inf", "grad_clip: .inf", "finite number"),
    ("clip-nan", "grad_clip: .nan", "finite number"),
    ("seed-float", "seed: 1.5", "seed must be an integer"),
    ("seed-huge", "seed: 99999999999999999999999", "seed must be an integer from"),
    ("stages-text", "stages: init", "list of stage names"),
    ("stages-empty", "stages: []", "stages is empty"),
    ("stages-unknown", "stages: [init, overfit]", "'overfit' is not a stage"),
    ("stages-number", "stages: [1]", "is not a stage"),
    ("train-list", "train: [1, 2]", "train must be a mapping"),
    ("train-unknown", "train: {stpes: 3}", "did you mean 'steps'"),
    ("train-steps-zero", "train: {steps: 0}", "train.steps must be greater than 0"),
    ("train-steps-negative", "train: {steps: -1}", "train.steps must not be negative"),
    ("train-steps-huge", "train: {steps: 100000000000000000000}", "at most"),
    ("train-steps-float", "train: {steps: 1.5}", "train.steps must be an integer"),
    ("train-seconds-zero", "train: {seconds: 0}", "greater than 0"),
    ("train-seconds-nan", "train: {seconds: .nan}", "finite number"),
    ("overfit-reach-zero", "overfit_one: {reach: 0}", "greater than 0"),
    ("overfit-lr-negative", "overfit_one: {lr: -1}", "must not be negative"),
    ("overfit-lr-text", "overfit_one: {lr: fast}", "overfit_one.lr must be a number"),
    ("eval-every-negative", "generalize: {eval_every: -1}", "must not be negative"),
    ("speed-batches-zero", "speed: {batches: 0}", "greater than 0"),
    ("init-samples-zero", "init: {samples: 0}", "greater than 0"),
    ("prune-every-zero", "prune: {rule: median, every: 0}", "prune.every must be greater than 0"),
    ("prune-list", "prune: [median]", "prune must be a mapping"),
    ("ablations-mapping", "ablations: {lr: 1}", "list of mappings"),
    ("ablations-unknown-key", "ablations: [{optimzer.lr: 1}]", "not a preset key"),
    ("name-empty", "name: ''", "non-empty text"),
    ("name-list", "name: [a]", "non-empty text"),
]

# (case id, --set override, words)
BAD_OVERRIDES = [
    ("lr-fast", "optimizer.lr=fast", "optimizer.lr must be a finite number > 0, got 'fast'"),
    ("lr-negative", "optimizer.lr=-1", "optimizer.lr must be"),
    ("lr-zero", "optimizer.lr=0", "optimizer.lr must be"),
    ("lr-nan", "optimizer.lr=.nan", "finite number"),
    ("lr-inf", "optimizer.lr=.inf", "finite number"),
    ("lr-list", "optimizer.lr=[1]", "optimizer.lr must be"),
    ("wd-negative", "optimizer.weight_decay=-1", "optimizer.weight_decay must be"),
    ("momentum-2", "optimizer.momentum=2", "optimizer.momentum must be"),
    ("betas-one", "optimizer.betas=[0.9]", "optimizer.betas must be two numbers"),
    ("betas-big", "optimizer.betas=[1.5, 0.9]", "optimizer.betas must be two numbers"),
    ("eps-zero", "optimizer.eps=0", "optimizer.eps must be"),
    ("batch-abc", "batch_size=abc", "batch_size must be an integer > 0, got 'abc'"),
    ("batch-26-digits", "batch_size=12345678901234567890123456", "from 1 to"),
    ("steps-zero", "train.steps=0", "train.steps must be greater than 0"),
    ("seed-inf", "seed=1e400", "seed must be an integer"),
    ("no-equals", "nonsense", "expected KEY=VALUE"),
    ("no-key", "=3", "expected KEY=VALUE"),
    ("leading-dot", ".lr=1", "expected KEY=VALUE"),
    ("double-dot", "optimizer..lr=1", "expected KEY=VALUE"),
    ("typo-top", "optimizr.lr=1", "did you mean 'optimizer'"),
    ("sub-key-of-scalar", "batch_size.x=1", "batch_size must be an integer > 0, got a mapping"),
    ("python-tag", "model=!!python/object/apply:os.system [id]", "tag"),
    ("recursive", "stages=&a [*a]", "recursive alias"),
    ("alias-bomb", "model.x=" + BOMB_FLOW, "expands to more than"),
    ("huge-value", "name=" + "x" * ((1 << 20) + 1), "longer than"),
]

ARGUMENTS = [
    ("unknown-command", ["frobnicate"], "invalid choice"),
    ("run-without-preset", ["run"], "required"),
    ("unknown-option", ["ls", "--frobnicate"], "unrecognized arguments"),
    ("kill-nothing", ["kill"], "required"),
    ("parallel-text", ["ablate", "p.yaml", "--parallel", "x"], "invalid int value"),
]


@pytest.fixture
def no_engine(monkeypatch):
    """Any case that gets as far as starting an engine has failed to be refused."""

    def refuse(folder):
        raise AssertionError(f"an engine was started for {folder.path}")

    monkeypatch.setattr(launch, "start_engine", refuse)
    monkeypatch.setattr("cockpit.fork.start_engine", refuse)
    monkeypatch.delenv("COCKPIT_WORKSPACE", raising=False)
    monkeypatch.delenv("COCKPIT_SHARE", raising=False)


def refused(capsys, argv: list[str], code: int = 2) -> str:
    """Run the CLI; assert the exit code and exactly one line on stderr, no traceback."""
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert rc == code, (rc, out.err, out.out)
    assert len(lines) == 1, out.err
    assert "Traceback" not in out.err + out.out
    return lines[0]


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("case, content, words", PRESET_FILES, ids=[c[0] for c in PRESET_FILES])
def test_bad_preset_files(no_engine, capsys, tmp_path, case, content, words):
    ws = tmp_path / "ws"
    preset = write(tmp_path / f"{case}.yaml", content)
    line = refused(capsys, ["run", str(preset), "--workspace", str(ws)])
    assert words in line and str(preset) in line
    assert not list(iter_runs(ws))


@pytest.mark.parametrize("case, extra, words", BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_bad_values(no_engine, capsys, tmp_path, case, extra, words):
    ws = tmp_path / "ws"
    base = "\n".join(line for line in BASE.splitlines() if not line.startswith(("name:", "task:")))
    preset = write(tmp_path / "p.yaml", base + "\n" + extra + "\n")
    line = refused(capsys, ["run", str(preset), "--workspace", str(ws)])
    assert words in line and str(preset) in line
    assert not list(iter_runs(ws))


@pytest.mark.parametrize("case, override, words", BAD_OVERRIDES, ids=[c[0] for c in BAD_OVERRIDES])
def test_bad_overrides(no_engine, capsys, tmp_path, case, override, words):
    ws = tmp_path / "ws"
    preset = write(tmp_path / "p.yaml", BASE)
    line = refused(capsys, ["run", str(preset), "--set", override, "--workspace", str(ws)])
    assert words in line
    assert not list(iter_runs(ws))


@pytest.mark.parametrize(
    "case, stages, words",
    [
        ("comma", ",", "needs stage names"),
        ("empty-variable", "", "--stages is empty"),
        ("blank", "  ", "--stages is empty"),
        ("unknown", "init,overfit", "'overfit' is not a stage"),
    ],
)
def test_bad_stages(no_engine, capsys, tmp_path, case, stages, words):
    preset = write(tmp_path / "p.yaml", BASE)
    line = refused(capsys, ["run", str(preset), "--stages", stages, "--workspace", str(tmp_path)])
    assert words in line


@pytest.mark.parametrize("case, argv, words", ARGUMENTS, ids=[c[0] for c in ARGUMENTS])
def test_bad_arguments(no_engine, capsys, case, argv, words):
    assert words in refused(capsys, argv)


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo.yaml"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    "case, make, words",
    [
        ("fifo", _fifo, "not a regular file"),  # used to wait for a writer forever
        ("dev-zero", lambda t: Path("/dev/zero"), "not a regular file"),  # used to never end
        ("dev-null", lambda t: Path("/dev/null"), "not a regular file"),
        ("folder", lambda t: t, "is a folder"),
        ("missing", lambda t: t / "nope.yaml", "no such preset file"),
        ("missing-folder", lambda t: t / "no" / "such" / "p.yaml", "does not exist either"),
        ("name-too-long", lambda t: t / ("x" * 5000 + ".yaml"), "cannot read the preset"),
        ("symlink-loop", lambda t: _loop(t), "cannot read the preset"),
    ],
)
def test_preset_paths_that_are_not_presets(no_engine, capsys, tmp_path, case, make, words):
    path = make(tmp_path)
    line = refused(capsys, ["run", str(path), "--workspace", str(tmp_path / "ws")])
    assert words in line


def _loop(tmp_path: Path) -> Path:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.symlink_to(b)
    b.symlink_to(a)
    return a


# ---- workspaces ------------------------------------------------------------------------


def test_workspace_that_is_a_file(no_engine, capsys, tmp_path):
    preset = write(tmp_path / "p.yaml", BASE.replace("mytask", "zoo"))
    ws = write(tmp_path / "ws", "not a folder")
    for argv in ([], ["run", str(preset)], ["ls"], ["ls", "--json"]):  # [] is the app
        line = refused(capsys, [*argv, "--workspace", str(ws)])
        assert "is a file, not a folder" in line


def test_workspace_under_a_file(no_engine, capsys, tmp_path):
    preset = write(tmp_path / "p.yaml", BASE)
    blocker = write(tmp_path / "blocker", "x")
    line = refused(capsys, ["run", str(preset), "--workspace", str(blocker / "runs")])
    assert "cannot create the workspace" in line or "cannot be used" in line


def test_read_only_workspace(no_engine, capsys, tmp_path):
    ws = tmp_path / "ro"
    ws.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ws)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        preset = write(tmp_path / "p.yaml", BASE)
        line = refused(capsys, ["run", str(preset), "--workspace", str(ws)])
        assert "read-only file system" in line
    finally:
        subprocess.run(["umount", str(ws)], check=False)


@pytest.mark.parametrize("where", ["env", "file"])
def test_bad_sharing_setting(no_engine, capsys, tmp_path, monkeypatch, where):
    ws = tmp_path / "ws"
    ws.mkdir()
    if where == "env":
        monkeypatch.setenv("COCKPIT_SHARE", "everyone")
    else:
        (ws / "cockpit.yaml").write_text("share: world\n")
    preset = write(tmp_path / "p.yaml", BASE)
    line = refused(capsys, ["run", str(preset), "--workspace", str(ws)])
    assert "expected private" in line and "or group" in line


# ---- run references ----------------------------------------------------------------------


@pytest.fixture
def parent(tmp_path) -> tuple[Path, Path]:
    """A finished run folder (written by hand: no engine) beside a second one."""
    ws = tmp_path / "ws"
    for name in ("alpha-20260101-000000-aaaa", "beta-20260101-000000-bbbb"):
        run = ws / name
        run.mkdir(parents=True)
        write_json_atomic(
            run / "summary.json",
            {"run_id": name, "preset": "abuse", "status": "passed", "stages": [], "created": 1.0},
        )
        write_json_atomic(run / "run.json", {"run_id": name, "stages": ["train"], "created": 1.0})
        (run / "preset.yaml").write_text(BASE)
    return ws, ws / "alpha-20260101-000000-aaaa"


@pytest.mark.parametrize("verb", ["kill", "fork"])
@pytest.mark.parametrize("ref", ["", " ", "\t", "\n"], ids=["empty", "space", "tab", "newline"])
def test_blank_references_act_on_nothing(no_engine, capsys, parent, verb, ref):
    ws, _ = parent
    line = refused(capsys, [verb, ref, "--workspace", str(ws)])
    assert "empty run reference" in line
    assert len(list(iter_runs(ws))) == 2


@pytest.mark.parametrize(
    "verb, ref, words",
    [
        ("kill", "nope", "no run 'nope'"),
        ("fork", "nope", "no run 'nope'"),
        ("kill", "alpha\x01", "control characters"),
        ("kill", " alpha", "spaces around it"),
        ("fork", "alpha-20260101-000000-aaaa ", "spaces around it"),
    ],
)
def test_references_that_match_no_run(no_engine, capsys, parent, verb, ref, words):
    ws, _ = parent
    assert words in refused(capsys, [verb, ref, "--workspace", str(ws)])


def test_an_ambiguous_prefix_acts_on_nothing(no_engine, capsys, parent):
    ws, _ = parent
    for name in ("gamma-1", "gamma-2"):
        (ws / name).mkdir()
        write_json_atomic(ws / name / "summary.json", {"status": "passed"})
    assert "matches 2 runs" in refused(capsys, ["kill", "gamma", "--workspace", str(ws)])


PLANTS = {
    "parent-dir": lambda run: {"file": "../../evil.pt", "step": 1},
    "absolute": lambda run: {"file": "/etc/passwd", "step": 1},
    "sub-folder": lambda run: {"file": "sub/step_000000001.pt", "step": 1},
    "not-a-name": lambda run: {"file": ["step_1.pt"], "step": 1},
    "no-file": lambda run: {"step": 1},
    "step-text": lambda run: {"file": "step_000000001.pt", "step": "1; rm"},
}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_fork_warm_refuses_a_planted_latest_json(no_engine, capsys, parent, tmp_path, plant):
    ws, run = parent
    ckpt = run / "checkpoints"
    ckpt.mkdir()
    (ckpt / "step_000000001.pt").write_bytes(b"x")
    (tmp_path / "evil.pt").write_bytes(b"planted")
    write_json_atomic(ckpt / "latest.json", PLANTS[plant](run))
    line = refused(capsys, ["fork", run.name, "--warm", "--workspace", str(ws)])
    assert "cannot be forked warm" in line
    assert "refused" in line or "expected" in line or "does not exist" in line
    assert len(list(iter_runs(ws))) == 2


@pytest.mark.parametrize("plant", ["symlinked-file", "symlinked-folder", "fifo", "garbage"])
def test_fork_warm_refuses_planted_checkpoint_files(no_engine, capsys, parent, tmp_path, plant):
    ws, run = parent
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "step_000000001.pt").write_bytes(b"planted")
    latest = {"file": "step_000000001.pt", "step": 1}
    if plant == "symlinked-folder":
        (run / "checkpoints").symlink_to(outside)
        write_json_atomic(outside / "latest.json", latest)
    else:
        ckpt = run / "checkpoints"
        ckpt.mkdir()
        if plant == "symlinked-file":
            (ckpt / "step_000000001.pt").symlink_to(outside / "step_000000001.pt")
        elif plant == "fifo":
            os.mkfifo(ckpt / "step_000000001.pt")
        if plant == "garbage":
            (ckpt / "latest.json").write_bytes(b"\xff\xfe{not json")
        else:
            write_json_atomic(ckpt / "latest.json", latest)
    line = refused(capsys, ["fork", run.name, "--warm", "--workspace", str(ws)])
    assert "cannot be forked warm" in line
    assert len(list(iter_runs(ws))) == 2


@pytest.mark.parametrize(
    "case, content, words",
    [
        ("garbage", b"{[: :", "YAML syntax error"),
        ("tag", b"model: !!python/object/apply:os.system [id]\n", "tag"),
        ("not-utf8", b"name: \xff\n" + BASE.encode(), "not UTF-8"),
        ("bomb", BOMB.encode(), "expands to more than"),
        ("missing", None, "has no preset.yaml"),
    ],
)
def test_fork_of_a_run_with_a_bad_preset(no_engine, capsys, parent, case, content, words):
    ws, run = parent
    if content is None:
        (run / "preset.yaml").unlink()
    else:
        (run / "preset.yaml").write_bytes(content)
    assert words in refused(capsys, ["fork", run.name, "--workspace", str(ws)])
    assert len(list(iter_runs(ws))) == 2


def test_fork_of_a_run_whose_preset_is_a_fifo(no_engine, capsys, parent):
    ws, run = parent
    (run / "preset.yaml").unlink()
    os.mkfifo(run / "preset.yaml")
    assert "not a regular file" in refused(capsys, ["fork", run.name, "--workspace", str(ws)])


def test_fork_of_a_run_whose_run_json_is_forged(no_engine, capsys, parent):
    ws, run = parent
    (run / "run.json").write_text(json.dumps({"stages": "init; rm -rf ~"}))
    assert "not a list of names" in refused(capsys, ["fork", run.name, "--workspace", str(ws)])
