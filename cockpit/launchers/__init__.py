"""Where a run's engine runs: ``local`` (a detached process on this machine, the default) or
``slurm`` (a batch job, cockpit/launchers/slurm.py).

The choice, most specific first: ``--launcher`` on ``run``/``ablate``/``fork``; for a fork,
its parent's launcher and Slurm options; ``launcher:`` in the workspace's ``cockpit.yaml``.
Slurm options (sbatch's): the ``slurm:`` mapping of ``cockpit.yaml``, then ``--slurm KEY=VALUE``
on the command line (docs/slurm.md lists the keys). The choice is recorded in run.json
(``launcher``, ``slurm``), so ``start_engine`` and the engine inside the job know it.
"""

from __future__ import annotations

import difflib
import shlex
from pathlib import Path
from typing import Any

from cockpit.args import UsageError


class LauncherError(UsageError, LookupError):
    """A launcher setting or sbatch is wrong: one sentence (exit 2; the app shows it too)."""


LAUNCHERS = ("local", "slurm")
CONFIG_NAME = "cockpit.yaml"
SLURM_KEYS = {
    "partition": "the partition (-p)",
    "account": "the account to charge (-A)",
    "time": "the time limit, e.g. 02:00:00 (-t)",
    "qos": "the quality of service",
    "cpus_per_task": "CPUs for the job (-c)",
    "mem": "memory per node, e.g. 32G",
    "constraint": "node features, e.g. a100 (-C)",
    "gpus_per_node": "GPUs (DDP processes) per node: gpus above it run over several nodes",
    "extra": "more sbatch options, a list or one string, e.g. [--exclusive, --nice=10]",
}


def _config(workspace: Path) -> tuple[dict, str]:
    path = Path(workspace) / CONFIG_NAME
    try:
        if not path.is_file():  # none, or a workspace that is no folder: its checks say so
            return {}, str(path)
        raw = path.read_bytes()[: 1 << 20].decode("utf-8", errors="replace")
    except FileNotFoundError:
        return {}, str(path)
    except OSError as e:
        raise LauncherError(f"{path} cannot be read ({e.strerror or e}).") from None
    import yaml

    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise LauncherError(f"{path} is not valid YAML: {str(e).splitlines()[0]}.") from None
    if data is None:
        return {}, str(path)
    if not isinstance(data, dict):
        raise LauncherError(f"{path} must be a mapping of settings (e.g. launcher: slurm).")
    return data, str(path)


def check_options(options: Any, where: str) -> dict[str, Any]:
    """A ``slurm:`` mapping checked: known keys, scalar values, ``extra`` a list of options."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise LauncherError(
            f"{where} must be a mapping of sbatch options, e.g. slurm: {{partition: gpu, time: '02:00:00'}}."
        )
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in SLURM_KEYS:
            near = difflib.get_close_matches(str(key), list(SLURM_KEYS), n=1)
            hint = f" — did you mean '{near[0]}'?" if near else ""
            raise LauncherError(
                f"{where}: '{key}' is not a Slurm option cockpit knows{hint} (known: "
                f"{', '.join(SLURM_KEYS)}; anything else goes in extra)."
            )
        if key == "extra":
            if isinstance(value, str):
                value = shlex.split(value)
            if not (isinstance(value, list) and all(isinstance(v, (str, int)) for v in value)):
                raise LauncherError(
                    f"{where}.extra must be a list of sbatch options, e.g. [--exclusive, --mem=32G]."
                )
            value = [str(v) for v in value]
            bad = [v for v in value if not v.startswith("-")]
            if bad:
                raise LauncherError(
                    f"{where}.extra: '{bad[0]}' is not an sbatch option (options start with -, "
                    "e.g. --constraint=a100)."
                )
        elif key == "gpus_per_node":
            if not (str(value).isdigit() and int(value) > 0) or isinstance(value, bool):
                raise LauncherError(
                    f"{where}.gpus_per_node must be a whole number above 0 (GPUs of one node, e.g. 8)."
                )
            value = int(value)
        elif value is None or isinstance(value, (dict, list, bool)):
            raise LauncherError(f"{where}.{key} must be one value ({SLURM_KEYS[key]}).")
        else:
            value = str(value)
            if not value.strip() or any(c in value for c in "\n\r\0"):
                raise LauncherError(
                    f"{where}.{key} is empty or spans lines; give {SLURM_KEYS[key]}."
                )
        out[key] = value
    return out


def parse_slurm_args(specs: list[str] | None) -> dict[str, Any]:
    """``--slurm time=0:10:00 --slurm extra=--exclusive`` -> {"time": "0:10:00", "extra": [...]}"""
    out: dict[str, Any] = {}
    for spec in specs or []:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise LauncherError(
                f"--slurm {spec}: expected KEY=VALUE, e.g. --slurm time=01:00:00 or --slurm partition=gpu."
            )
        key = key.strip()
        if key == "extra":
            out.setdefault("extra", []).extend(shlex.split(value))
        else:
            out[key] = value
    return check_options(out, "--slurm") if out else {}


def choose(
    workspace: Path,
    launcher: str | None = None,
    slurm_args: list[str] | None = None,
    parent_request: dict | None = None,
) -> dict[str, Any]:
    """run.json's launcher fields for a new run: {"launcher": "local"}, or
    {"launcher": "slurm", "slurm": {options}}. Wrong settings: LauncherError, one sentence."""
    data, where = _config(workspace)
    if launcher is not None and launcher not in LAUNCHERS:
        raise LauncherError(f"--launcher {launcher}: expected local or slurm.")
    configured = data.get("launcher", "local")
    if configured not in LAUNCHERS:
        raise LauncherError(
            f"{where}: launcher is {configured!r}; expected local (the default) or slurm."
        )
    options = check_options(data.get("slurm"), f"{where}: slurm")
    inherited = parent_request or {}
    if launcher is None and inherited.get("launcher") in LAUNCHERS:
        launcher = inherited["launcher"]
        if launcher == "slurm" and isinstance(inherited.get("slurm"), dict):
            options = {
                **options,
                **check_options(inherited["slurm"], "the parent's run.json slurm"),
            }
    chosen = launcher or configured
    extra = parse_slurm_args(slurm_args)
    if chosen != "slurm":
        if extra:
            raise LauncherError(
                "--slurm options need the Slurm launcher: add --launcher slurm (or launcher: slurm "
                f"in {where})."
            )
        return {"launcher": "local"}
    if "extra" in extra and "extra" in options:
        extra["extra"] = [*options["extra"], *extra["extra"]]
    from cockpit.launchers import slurm

    slurm.check_client()
    return {"launcher": "slurm", "slurm": {**options, **extra}}
