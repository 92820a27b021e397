"""Forks: a child run from a parent's resolved preset plus overrides, optionally warm."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from cockpit.launch import create_run, start_engine
from engine.torchfree.preset import (
    Preset,
    apply_overrides,
    check_stage_names,
    loads,
    read_preset_text,
    validate,
)
from engine.torchfree.runfolder import RunFolder


def parent_preset(parent: RunFolder) -> Preset:
    """The parent's resolved preset, reported against the parent's original file name."""
    request = parent.request()
    if request.get("source") in ("track", "tensorboard"):
        raise LookupError(
            f"run {parent.run_id} was recorded by your own script (cockpit.track), not "
            "started from a preset: there is no preset to fork; change the script instead"
        )
    path = parent.file("preset.yaml")
    if not path.exists():
        raise LookupError(f"run {parent.run_id} has no preset.yaml to fork from")
    preset = loads(read_preset_text(path), path)
    source = request.get("preset_path")
    # keep the original path so the child's folder is importable the same way
    if isinstance(source, str) and source:
        preset = Preset(preset.data, Path(source), {}, {})
    return preset


def fork_run(
    workspace: Path,
    parent: RunFolder,
    overrides: dict[str, Any],
    *,
    warm: bool = False,
    stages: list[str] | None = None,
    start: bool = True,
    launcher: tuple[str | None, list[str]] = (None, []),
) -> tuple[RunFolder, subprocess.Popen | None]:
    """Create (and start) a child of ``parent``; ``warm`` restores its latest checkpoint.
    ``launcher``: (--launcher, --slurm options); by default the parent's launcher and options."""
    from cockpit.launchers import choose

    base = parent_preset(parent)
    preset = apply_overrides(base, overrides) if overrides else base
    validate(preset)
    warm_from, fork_step = None, 0
    if warm:
        ckpt, problem = parent.checked_checkpoint()
        if ckpt is None and parent.file("checkpoints").joinpath("latest.json").exists():
            raise LookupError(
                f"run {parent.run_id} cannot be forked warm: {problem}; fork without --warm."
            )
        if ckpt is None:
            raise LookupError(
                f"run {parent.run_id} has no checkpoint to start warm from (only the train stage "
                "writes them); fork without --warm, or run the parent with --stages train"
            )
        warm_from, fork_step = ckpt["path"], int(ckpt.get("step", 0))
    inherited = dict(parent.summary().get("overrides") or {})
    inherited.update(overrides)
    req = parent.request()
    if stages is None:
        stages = ["train"] if warm else req.get("stages")
    if stages is not None and not (
        isinstance(stages, list) and all(isinstance(s, str) for s in stages)
    ):
        raise LookupError(f"run {parent.run_id}: run.json's stages is not a list of names.")
    if stages is not None:
        check_stage_names(stages)
    where = choose(workspace, launcher[0], launcher[1], parent_request=_released(req))
    folder = create_run(
        workspace,
        preset,
        overrides=inherited,
        stages=stages,
        parent=parent.run_id,
        fork_step=fork_step,
        warm_from=warm_from,
        group=req.get("group") if isinstance(req.get("group"), str) else None,
        extra={"preset_dir": _text(req.get("preset_dir")) or str(preset.folder), **where},
    )
    proc = start_engine(folder) if start else None
    return folder, proc


def _released(request: dict) -> dict:
    """The parent's run.json as its fork inherits it: the parent's sbatch options less
    ``--hold``/``-H`` in ``extra`` (a held parent's fork would never start by itself; a fork
    is held only by its own ``--slurm extra=--hold``)."""
    options = request.get("slurm")
    if not isinstance(options, dict) or "extra" not in options:
        return request
    from cockpit.launchers.slurm import without_hold

    return {**request, "slurm": {**options, "extra": without_hold(options["extra"])}}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
