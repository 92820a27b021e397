"""Presets: YAML loading, validation and ``--set`` overrides — torch-free.

Every mistake a user can make in a preset becomes one :class:`PresetError` whose message
names the file, the key, the line, what was expected and, for typos, the closest valid key.
Whether a ``_target_`` can be imported is checked later, in the engine (it needs the
user's modules and usually torch); that check raises the same error.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import stat
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.torchfree.ladder import DEFAULT_LADDER, STAGES, settings_fields
from engine.torchfree.tasks import TASKS


class PresetError(Exception):
    """A mistake in a preset or an override; the message is the whole story for the user."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; every ML config means a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


MAX_PRESET_BYTES = 1 << 20
"""A preset is a page of YAML; a bigger file is the wrong file (or an attack)."""
MAX_NODES = 20_000
"""Values a preset may expand to, aliases followed: a billion-laughs alias bomb stops here."""
MAX_DEPTH = 40
"""Nesting levels a preset may have."""
PLAIN_TAGS = {
    f"tag:yaml.org,2002:{t}"
    for t in ("str", "int", "float", "bool", "null", "seq", "map", "merge", "timestamp")
}


class _Bad(Exception):
    """A structural problem found while walking the YAML nodes: (line, message)."""

    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line = line


def _check_nodes(root: yaml.Node) -> None:
    """Plain values, lists and mappings only; finite, shallow and small once aliases are
    followed (aliases are shared nodes, so a walk counts what a reader would expand)."""
    count = 0
    stack: list[tuple[yaml.Node, int, frozenset]] = [(root, 0, frozenset())]
    while stack:
        node, depth, above = stack.pop()
        count += 1
        line = node.start_mark.line + 1 if node.start_mark else None
        if count > MAX_NODES:
            raise _Bad(
                None,
                f"it expands to more than {MAX_NODES} values (aliases repeated inside aliases?); "
                "a preset is small — write the values out or drop the aliases",
            )
        if depth > MAX_DEPTH:
            raise _Bad(line, f"it is nested more than {MAX_DEPTH} levels deep")
        if node.tag not in PLAIN_TAGS:
            raise _Bad(
                line,
                f"the YAML tag '{_short_tag(node.tag)}' is not allowed in a preset (plain values, "
                "lists and mappings only); remove the tag",
            )
        if id(node) in above:
            raise _Bad(
                line, "an alias refers to a node that contains it (a recursive alias); remove it"
            )
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            continue
        inner = above | {id(node)}
        stack.extend((child, depth + 1, inner) for child in reversed(children))


def _short_tag(tag: str) -> str:
    """The tag as the preset wrote it: ``!!python/object:x`` for YAML's own, ``!mine`` for a
    local one; at most 60 characters."""
    standard = "tag:yaml.org,2002:"
    return ("!!" + tag[len(standard) :] if tag.startswith(standard) else tag)[:60]


def _yaml_value(text: str) -> Any:
    """Compose, check (_check_nodes), then construct; raises yaml.YAMLError or _Bad."""
    node = yaml.compose(text, Loader=_Loader)
    if node is None:
        return None
    _check_nodes(node)
    try:
        return yaml.load(text, Loader=_Loader)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:  # e.g. a bad date
        raise _Bad(None, f"a value cannot be read ({e})") from None


def parse_value(text: str) -> Any:
    """A ``--set`` value, parsed as YAML (so ``3e-4`` is a float and ``[a, b]`` a list).
    Not YAML: the text itself. Tags, recursive aliases and alias bombs: PresetError."""
    if not text.strip():
        return ""
    try:
        return _yaml_value(text)
    except yaml.YAMLError:
        return text
    except _Bad as e:
        raise PresetError(f"the value {_short(text)!r}: {e}.") from None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        return f"'{value}' (text)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{value} (a {type(value).__name__})"  # a date or a timestamp


def _suggest(word: str, options: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(options))  # the best first; cutoff 0.6
    return f" — did you mean '{match[0]}'?" if match else ""


# ---------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Key:
    """One top-level preset key: what it accepts, its default, one line of doc."""

    check: str  # name of a checker below
    default: Any
    doc: str
    choices: tuple = ()


@dataclass(frozen=True)
class PruneSettings:
    rule: str = field(
        default="none",
        metadata={
            "doc": "'median': stop a run whose metric is worse than the median of its peers at the same step"
        },
    )
    metric: str = field(
        default="val_loss",
        metadata={"doc": "what to compare: val_loss, or a full-val metric such as accuracy"},
    )
    warmup_steps: int = field(default=100, metadata={"doc": "never prune before this step"})
    every: int = field(default=100, metadata={"doc": "compare at every this many steps"})
    min_peers: int = field(
        default=2, metadata={"doc": "runs that must have reached the step before one is compared"}
    )


SCHEMA: dict[str, Key] = {
    "name": Key("str", None, "shown in the app and used in run ids (default: the file's stem)"),
    "task": Key(
        "choice", "classification", "decides the default loss, the metrics and the checks", TASKS
    ),
    "seed": Key("int", 0, "seeds torch, python and the data order"),
    "device": Key("device", "auto", "auto | cpu | cuda | cuda:N"),
    "gpus": Key("nonneg_int", 1, "GPUs the run needs (0 = CPU); more than 1 trains under DDP"),
    "model": Key("target", None, "the model: target(**rest)"),
    "models": Key(
        "targets",
        None,
        "several models by name instead of model, e.g. {G: {_target_: ...}, D: {...}}; needs step",
    ),
    "data": Key("target", None, "returns (train_set, val_set): target(**rest)"),
    "loss": Key(
        "target", None, "default: cross-entropy (classification, segmentation), MSE (regression)"
    ),
    "optimizer": Key(
        "target", {"_target_": "torch.optim.Adam", "lr": 1e-3}, "target(model.parameters(), **rest)"
    ),
    "optimizers": Key(
        "targets", None, "one optimizer per name of models (a name not listed gets optimizer)"
    ),
    "step": Key(
        "target",
        None,
        "your own training step: target(models, batch, optimizers=None, **rest) returns the "
        "losses (docs/custom-step.md)",
    ),
    "scheduler": Key(
        "target", None, "optional LR schedule, target(optimizer, **rest), stepped every batch"
    ),
    "batch_size": Key("pos_int", 32, "train batch size"),
    "val_batch_size": Key("pos_int", None, "val batch size (default: batch_size)"),
    "num_workers": Key("nonneg_int", 0, "DataLoader workers (0 loads in the training process)"),
    "pin_memory": Key(
        "auto_bool", "auto", "pin host memory for faster copies (auto: on with CUDA)"
    ),
    "persistent_workers": Key(
        "auto_bool", "auto", "keep workers between epochs (auto: on when num_workers > 0)"
    ),
    "prefetch_factor": Key(
        "pos_int", None, "batches each worker loads ahead (PyTorch's default: 2)"
    ),
    "grad_clip": Key("pos_float", None, "clip the gradient norm to this value"),
    "precision": Key(
        "choice",
        "fp32",
        "fp32 | bf16 (autocast) | fp16 (autocast and a gradient scaler), in every stage",
        ("fp32", "bf16", "fp16"),
    ),
    "compile": Key(
        "compile",
        False,
        "torch.compile the model: false | true | default | reduce-overhead | max-autotune",
    ),
    "stages": Key("stages", None, "stages to run, in order (default: the whole ladder)"),
    "ablations": Key(
        "ablations", None, "a list of override mappings, one run each, for `cockpit ablate`"
    ),
    "tricks": Key(
        "tricks", None, "name -> override mapping: one run per trick for `cockpit ablate --tricks`"
    ),
    "prune": Key("section", None, "pruning rule for ablations"),
}
SECTIONS: dict[str, type] = {"prune": PruneSettings}
REQUIRED = ("model", "data")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,3})?)$")


MAX_INT = 2**31 - 1
"""Counts and sizes stop here: anything bigger overflows torch's C ints (or never ends)."""
INT_LIMITS: dict[str, tuple[int, int]] = {
    "seed": (-(2**63), 2**63 - 1),
    "gpus": (0, 1024),
    "num_workers": (0, 1024),
    "prefetch_factor": (1, 1024),
    "batch_size": (1, 1 << 24),
    "val_batch_size": (1, 1 << 24),
}
POSITIVE_SETTINGS = {
    # counts that must be at least 1: zero steps "pass" on nothing (a NaN verdict)
    "steps",
    "samples",
    "batches",
    "batch",
    "overlap_samples",
    "val_samples",
    "max_params",
    "every",
    "min_peers",
    # budgets and rates that must be above 0
    "seconds",
    "max_batch_s",
    "lr",
    "reach",
    "min_lr",
    "max_lr",
    "diverge",
}
NUMERIC_OPTIMIZER_ARGS = {
    # name: (lowest, highest, lowest allowed itself)
    "lr": (0.0, math.inf, False),
    "weight_decay": (0.0, math.inf, True),
    "momentum": (0.0, 1.0, True),
    "dampening": (0.0, 1.0, True),
    "eps": (0.0, math.inf, False),
    "alpha": (0.0, math.inf, True),
}


def _check_top(key: str, spec: Key, value: Any) -> str | None:
    """What the value should have been, or None when it fits."""
    c = spec.check
    if value is None and spec.default is None:  # optional, and left out
        return None
    if c == "str":
        return None if isinstance(value, str) and value else "non-empty text"
    if c == "choice":
        return None if value in spec.choices else "one of " + ", ".join(spec.choices)
    if c == "compile":
        modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        ok = isinstance(value, bool) or value in modes
        return None if ok else "true, false or a torch.compile mode (" + ", ".join(modes) + ")"
    if c in ("int", "nonneg_int", "pos_int"):
        kind = {"int": "an integer", "nonneg_int": "an integer ≥ 0", "pos_int": "an integer > 0"}
        lowest = {"int": None, "nonneg_int": 0, "pos_int": 1}[c]
        if not _is_int(value) or (lowest is not None and value < lowest):
            return kind[c]
        lo, hi = INT_LIMITS[key]  # every integer key has its limits (tests hold this)
        return None if lo <= value <= hi else f"an integer from {lo} to {hi}"
    if c == "pos_float":
        ok = _is_num(value) and math.isfinite(value) and value > 0
        return None if ok else "a finite number > 0"
    if c == "device":
        return (
            None if isinstance(value, str) and _DEVICE.match(value) else "auto, cpu, cuda or cuda:N"
        )
    if c == "auto_bool":
        return None if isinstance(value, bool) or value == "auto" else "true, false or auto"
    if c == "target":
        return None  # checked in detail by _check_target
    if c == "stages":
        return (
            None if isinstance(value, list) else "a list of stage names, e.g. [init, overfit_one]"
        )
    if c == "ablations":
        ok = isinstance(value, list) and all(isinstance(a, dict) for a in value)
        return (
            None
            if ok
            else "a list of mappings of dotted keys to values, e.g. [{optimizer.lr: 3e-4}]"
        )
    if c == "tricks":
        ok = isinstance(value, dict) and all(isinstance(v, dict) and v for v in value.values())
        return (
            None
            if ok
            else "a mapping of trick names to overrides, e.g. {dropout: {model.dropout: 0.2}}"
        )
    if c == "section":
        return None if isinstance(value, dict) else "a mapping"
    if c == "targets":
        ok = isinstance(value, dict) and bool(value)  # each entry: _check_target
        return (
            None
            if ok
            else "a mapping of names to {_target_: ...} mappings, e.g. {G: {_target_: mytask.G}}"
        )
    raise AssertionError(c)


def _annotation_fits(annotation: Any, value: Any) -> str | None:
    """Check a settings value against its dataclass annotation (str under PEP 563)."""
    names = {"__builtins__": {}, "float": float, "int": int, "str": str, "bool": bool}
    hint = annotation if not isinstance(annotation, str) else eval(annotation, names)
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        return None if type(None) in options else _describe(options)
    for opt in options:
        if opt is float and _is_num(value):
            return None
        if opt is int and _is_int(value):
            return None
        if opt is bool and isinstance(value, bool):
            return None
        if opt is str and isinstance(value, str):
            return None
    return _describe(options)


def _describe(options: tuple) -> str:
    names = {float: "a number", int: "an integer", bool: "true or false", str: "text"}
    parts = [names[o] for o in options if o in names]
    if type(None) in options:
        parts.append("null")
    return " or ".join(parts)


# ---------------------------------------------------------------- the preset


@dataclass
class Preset:
    """A loaded preset: its data, where it came from, and where each key was written."""

    data: dict[str, Any]
    path: Path
    lines: dict[str, int] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # dotted key -> "--set k=v"

    @property
    def name(self) -> str:
        return self.data.get("name") or self.path.stem

    @property
    def folder(self) -> Path:
        return self.path.resolve().parent

    def get(self, key: str, default: Any = None) -> Any:
        if key in SCHEMA and key not in self.data:
            d = SCHEMA[key].default
            return copy.deepcopy(d) if d is not None else default
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def stages(self) -> list[str]:
        return list(self.data.get("stages") or DEFAULT_LADDER)

    def stage_values(self, name: str) -> dict[str, Any]:
        return dict(self.data.get(name) or {})

    def where(self, key: str) -> str:
        """'file, line N' (or the override that set it) for messages."""
        if key in self.origins:
            return f"{self.path} ({self.origins[key]})"
        probe = key
        while probe:
            if probe in self.lines:
                return f"{self.path}, line {self.lines[probe]}"
            probe = probe.rpartition(".")[0]
        return str(self.path)

    def error(self, key: str, message: str) -> PresetError:
        return PresetError(f"{self.where(key)}: {message}")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False, default_flow_style=None, width=100)


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> Preset:
    """Read, override and validate a preset; raise PresetError on any mistake."""
    path = Path(path)
    preset = loads(read_preset_text(path), path)
    if overrides:
        preset = apply_overrides(preset, overrides)
    validate(preset)
    return preset


def read_preset_text(path: Path) -> str:
    """A preset file's text: a regular file (no FIFO, device or folder), at most
    MAX_PRESET_BYTES, UTF-8. PresetError with a sentence for anything else."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without waiting
    except FileNotFoundError:
        hint = _near_files(path)
        raise PresetError(f"{path}: no such preset file{hint}") from None
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) else str(e)
        raise PresetError(f"{path}: cannot read the preset ({why}).") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise PresetError(f"{path}: is a folder, not a preset; give one of its .yaml files.")
        if not stat.S_ISREG(st.st_mode):
            raise PresetError(
                f"{path}: is not a regular file (a FIFO, a device or a socket); a preset is a "
                "YAML file."
            )
        if st.st_size > MAX_PRESET_BYTES:
            raise PresetError(
                f"{path}: is {st.st_size:,} bytes; a preset is at most "
                f"{MAX_PRESET_BYTES >> 20} MB of YAML — is it the right file?"
            )
        try:
            raw = os.read(fd, MAX_PRESET_BYTES + 1)
        except OSError as e:
            raise PresetError(f"{path}: cannot read the preset ({e.strerror}).") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_PRESET_BYTES:  # a file that grew (or lies about its size)
        raise PresetError(f"{path}: is larger than {MAX_PRESET_BYTES >> 20} MB; not a preset.")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise PresetError(f"{path}: is UTF-16 text; save the preset as UTF-8.")
    if b"\0" in raw:
        raise PresetError(f"{path}: holds NUL bytes, so it is binary, not a YAML preset.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PresetError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the "
            "preset as UTF-8."
        ) from None


def _near_files(path: Path) -> str:
    folder = path.parent  # Path("p.yaml").parent is Path(".")
    if not folder.is_dir():
        return f" (the folder {folder} does not exist either)."
    by_stem = {p.stem: p.name for p in sorted(folder.glob("*.y*ml"))}
    match = difflib.get_close_matches(path.stem, list(by_stem))  # difflib's cutoff: 0.6
    if match:  # the stems are compared: '.yaml' itself makes every two names look alike
        return f" — did you mean {folder / by_stem[match[0]]}?"
    if by_stem:
        return f"; presets in {folder}: {', '.join(sorted(by_stem.values())[:6])}."
    return "."


def loads(text: str, path: Path) -> Preset:
    if len(text) > MAX_PRESET_BYTES:
        raise PresetError(f"{path}: is larger than {MAX_PRESET_BYTES >> 20} MB; not a preset.")
    try:
        node = yaml.compose(text, Loader=_Loader)
        if node is not None:
            _check_nodes(node)
    except _Bad as e:
        where = f", line {e.line}" if e.line else ""
        raise PresetError(f"{path}{where}: {e}.") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = (e.problem or e.context or "invalid YAML").strip()
        raise PresetError(f"{path}{where}: YAML syntax error: {problem}.") from None
    except yaml.YAMLError as e:
        first = (str(e).strip().splitlines() or ["invalid YAML"])[0]
        raise PresetError(f"{path}: YAML syntax error: {first}.") from None
    except RecursionError:
        raise PresetError(f"{path}: nested too deeply to read as a preset.") from None
    if node is None:
        raise PresetError(f"{path}: the preset is empty; it needs at least model and data.")
    if not isinstance(node, yaml.MappingNode):
        line = node.start_mark.line + 1
        raise PresetError(
            f"{path}, line {line}: a preset is a mapping of keys (model:, data:, ...), not "
            f"{_NODE_KINDS[node.id]}."
        )
    lines: dict[str, int] = {}
    _record_lines(node, "", lines, path)
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:  # e.g. a list used as a key
        mark = e.problem_mark or e.context_mark
        where = f", line {mark.line + 1}" if mark else ""
        problem = (e.problem or e.context or "invalid YAML").strip()
        raise PresetError(f"{path}{where}: {problem}.") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise PresetError(f"{path}: a value cannot be read ({first}).") from None
    return Preset(data=data, path=path, lines=lines)


_NODE_KINDS = {"mapping": "a mapping", "sequence": "a list", "scalar": "a single value"}
"""What a YAML node is, in the words of a message."""


def _record_lines(node: yaml.Node, prefix: str, out: dict[str, int], path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for knode, vnode in node.value:
            line = knode.start_mark.line + 1
            if not isinstance(knode, yaml.ScalarNode):
                raise PresetError(
                    f"{path}, line {line}: a key must be plain text, not {_NODE_KINDS[knode.id]}."
                )
            key = str(knode.value)
            dotted = f"{prefix}.{key}" if prefix else key
            if key in seen:
                raise PresetError(f"{path}, line {line}: '{dotted}' is given twice; keep one.")
            seen.add(key)
            out[dotted] = line
            _record_lines(vnode, dotted, out, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[f"{prefix}[{i}]"] = item.start_mark.line + 1
            _record_lines(item, f"{prefix}[{i}]", out, path)


def parse_override(text: str) -> tuple[str, Any]:
    """'optimizer.lr=3e-4' -> ('optimizer.lr', 0.0003)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if (
        not sep
        or not key
        or not re.match(r"^[A-Za-z_][\w.]*$", key)
        or ".." in key
        or key.endswith(".")
    ):
        raise PresetError(
            f"--set {text}: expected KEY=VALUE with a dotted key, e.g. --set optimizer.lr=3e-4."
        )
    if len(text) > MAX_PRESET_BYTES:
        raise PresetError(f"--set {key}=...: the value is longer than a whole preset may be.")
    try:
        return key, parse_value(value)
    except PresetError as e:
        raise PresetError(f"--set {key}=...: {e}") from None


def override_origin(key: str, value: Any) -> str:
    return f"--set {key}={_short(value)}"


def apply_overrides(preset: Preset, overrides: dict[str, Any]) -> Preset:
    data = copy.deepcopy(preset.data)
    origins = dict(preset.origins)
    for key, value in overrides.items():
        origin = override_origin(key, value)
        parts = key.split(".")
        top = parts[0]
        if top not in SCHEMA and top not in STAGES:
            raise PresetError(
                f"{origin}: '{top}' is not a preset key{_suggest(top, [*SCHEMA, *STAGES])}"
                + ("" if _suggest(top, [*SCHEMA, *STAGES]) else f"; keys: {', '.join(SCHEMA)}.")
            )
        node = data
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:  # `--set optimizer.lr=...` without an optimizer: the default's lr
                default = SCHEMA[top].default if i == 0 and top in SCHEMA else None
                nxt = node[part] = copy.deepcopy(default) if isinstance(default, dict) else {}
            if not isinstance(nxt, dict):
                raise PresetError(
                    f"{origin}: '{'.'.join(parts[: i + 1])}' is {_kind(nxt)}, not a mapping, "
                    "so it has no sub-keys to set."
                )
            node = nxt
        node[parts[-1]] = value
        origins[key] = origin
    return Preset(data=data, path=preset.path, lines=preset.lines, origins=origins)


def _short(value: Any) -> str:
    text = (
        value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    )
    text = text.removesuffix("\n...").strip()
    return text if len(text) <= 40 else text[:37] + "..."


def validate(preset: Preset) -> None:
    data = preset.data
    for key, value in data.items():
        key = str(key)
        if key in STAGES:
            _check_settings(preset, key, value, settings_fields(key))
            continue
        if key not in SCHEMA:
            hint = _suggest(key, [*SCHEMA, *STAGES])
            raise preset.error(
                key,
                f"'{key}' is not a preset key{hint}"
                + (
                    ""
                    if hint
                    else f"; preset keys are {', '.join(SCHEMA)}, and one section per stage."
                ),
            )
        spec = SCHEMA[key]
        expected = _check_top(key, spec, value)
        if expected:
            raise preset.error(key, f"{key} must be {expected}, got {_kind(value)}.")
        if spec.check == "target" and (value is not None or spec.default is not None):
            _check_target(preset, key, value)  # `optimizer: null` too: it has no default then
            if key == "optimizer":
                _check_optimizer_args(preset, value)
        if value is None:  # an optional key given as null: as if it were left out
            continue
        if spec.check == "targets":
            for name, entry in value.items():
                _check_target(preset, f"{key}.{name}", entry)
        if key == "optimizers":  # keyed by the names of models
            models = data.get("models") or {}
            extra = [str(n) for n in value if n not in models]
            if extra:
                raise preset.error(
                    f"optimizers.{extra[0]}",
                    f"optimizers.{extra[0]} names no model of models"
                    f"{_suggest(extra[0], [str(m) for m in models])}; optimizers are keyed by "
                    f"the names of models ({', '.join(map(str, models)) or 'none'}).",
                )
        if spec.check == "section":
            fields = {f.name: f for f in dataclasses.fields(SECTIONS[key])}
            _check_settings(preset, key, value, fields)
        if key == "stages":
            _check_stage_list(preset, value)
        if key == "tricks":
            for trick, entry in value.items():
                for dotted in entry:
                    top = str(dotted).split(".")[0]
                    if top not in SCHEMA and top not in STAGES:
                        raise preset.error(
                            f"tricks.{trick}",
                            f"trick '{trick}' sets '{dotted}', but '{top}' is not a preset key"
                            f"{_suggest(top, [*SCHEMA, *STAGES])}",
                        )
        if key == "ablations":
            for i, entry in enumerate(value):
                for dotted in entry:
                    top = str(dotted).split(".")[0]
                    if top not in SCHEMA and top not in STAGES:
                        raise preset.error(
                            f"ablations[{i}]",
                            f"ablation {i + 1} sets '{dotted}', but '{top}' is not a preset key"
                            f"{_suggest(top, [*SCHEMA, *STAGES])}",
                        )
    if data.get("models") is not None and data.get("model") is not None:
        raise preset.error(
            "models", "the preset has both model and models; keep one (models: for several)."
        )
    for key in REQUIRED:
        if data.get(key) is None and not (key == "model" and data.get("models") is not None):
            raise PresetError(
                f"{preset.path}: the preset has no '{key}'; add e.g. "
                f"{key}: {{_target_: mytask.{'MLP' if key == 'model' else 'make_data'}}}."
            )
    if data.get("persistent_workers") is True and not data.get("num_workers"):
        raise preset.error(
            "persistent_workers",
            "persistent_workers: true needs num_workers > 0; set num_workers or drop persistent_workers.",
        )


def _check_target(preset: Preset, key: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise preset.error(
            key,
            f"{key} must be a mapping with a _target_, e.g. {key}: {{_target_: mytask.Thing}}, "
            f"got {_kind(value)}.",
        )
    target = value.get("_target_")
    if target is None:
        hint = _suggest("_target_", [str(k) for k in value])
        raise preset.error(
            key,
            f"{key} has no _target_{hint}; add the dotted path of what builds it, "
            f"e.g. _target_: mytask.{'Model' if key == 'model' else 'thing'}.",
        )
    if not isinstance(target, str) or not re.match(r"^[A-Za-z_][\w]*([.:][A-Za-z_]\w*)+$", target):
        raise preset.error(
            f"{key}._target_",
            f"{key}._target_ must be a dotted path such as torch.optim.Adam or mytask:make_data, "
            f"got {_kind(target)}.",
        )


def _check_optimizer_args(preset: Preset, value: dict) -> None:
    """The optimizer's well-known numeric arguments are numbers in range before torch sees
    them (``lr: fast`` would otherwise fail deep inside the optimizer's constructor)."""
    for name, (lo, hi, lo_ok) in NUMERIC_OPTIMIZER_ARGS.items():
        if name not in value:
            continue
        v = value[name]
        dotted = f"optimizer.{name}"
        ok = _is_num(v) and math.isfinite(v) and (v >= lo if lo_ok else v > lo) and v <= hi
        if not ok:
            rng = f"{'≥' if lo_ok else '>'} {lo:g}" + (f" and ≤ {hi:g}" if hi != math.inf else "")
            raise preset.error(dotted, f"{dotted} must be a finite number {rng}, got {_kind(v)}.")
    betas = value.get("betas")
    if betas is not None and not (
        isinstance(betas, list)
        and len(betas) == 2
        and all(_is_num(b) and 0 <= b < 1 for b in betas)
    ):
        raise preset.error(
            "optimizer.betas",
            f"optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got {_kind(betas)}.",
        )


def _check_stage_list(preset: Preset, value: list) -> None:
    if not value:
        raise preset.error(
            "stages", "stages is empty; name at least one stage, or drop the key for the ladder."
        )
    for i, name in enumerate(value):
        if not isinstance(name, str) or name not in STAGES:
            raise preset.error(
                f"stages[{i}]",
                f"stages: '{name}' is not a stage{_suggest(str(name), STAGES)}; stages are "
                f"{', '.join(STAGES)}.",
            )


def _check_settings(preset: Preset, section: str, value: Any, fields: dict) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise preset.error(section, f"{section} must be a mapping of settings, got {_kind(value)}.")
    for key, v in value.items():
        dotted = f"{section}.{key}"
        if key not in fields:
            hint = _suggest(str(key), fields)
            raise preset.error(
                dotted,
                f"'{key}' is not a setting of {section}{hint}"
                + ("" if hint else f"; its settings are {', '.join(fields)}."),
            )
        expected = _annotation_fits(fields[key].type, v)
        if expected:
            raise preset.error(dotted, f"{dotted} must be {expected}, got {_kind(v)}.")
        if _is_num(v) and not math.isfinite(v):
            raise preset.error(dotted, f"{dotted} must be a finite number, got {v}.")
        if _is_num(v) and v < 0:
            raise preset.error(dotted, f"{dotted} must not be negative, got {v}.")
        if _is_num(v) and key in POSITIVE_SETTINGS and v <= 0:
            raise preset.error(dotted, f"{dotted} must be greater than 0, got {v}.")
        if _is_int(v) and v > MAX_INT:
            raise preset.error(dotted, f"{dotted} must be at most {MAX_INT}, got {_kind(v)}.")


def parse_stage_list(text: str | None) -> list[str] | None:
    """'init, overfit_one' or 'init overfit_one' -> ['init', 'overfit_one'], validated; empty
    text -> None (the preset's own ladder). The one parser of --stages and the app's field."""
    if text is None or not text.strip():
        return None
    names = [s for s in re.split(r"[,\s]+", text) if s]
    if not names:
        raise PresetError("--stages needs stage names, e.g. --stages init,overfit_one")
    return check_stage_names(names)


def check_stage_names(names: list[str]) -> list[str]:
    """Validate ``--stages a,b``; raise PresetError with a suggestion."""
    for name in names:
        if name not in STAGES:
            raise PresetError(
                f"--stages: '{name}' is not a stage{_suggest(name, STAGES)}; stages are "
                f"{', '.join(STAGES)}."
            )
    return names
