"""Presets the new-run dialog offers, and the KEY=VALUE lines its overrides box takes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.torchfree.preset import PresetError, parse_override, parse_stage_list
from engine.torchfree.runfolder import iter_runs


@dataclass(frozen=True)
class PresetChoice:
    path: Path
    """Absolute path of the YAML file."""
    origin: str
    """Where it was found: './presets', the workspace, or a run that used it."""

    @property
    def label(self) -> str:
        return self.path.stem


def discover_presets(workspace: Path, cwd: Path | None = None) -> list[PresetChoice]:
    """./presets/*.yaml, the workspace's presets/ folder, and every preset file the
    workspace's runs were started from (still on disk) — each file once."""
    cwd = cwd or Path.cwd()
    found: dict[Path, PresetChoice] = {}

    def add(path: Path, origin: str) -> None:
        resolved = path.resolve()
        if resolved.is_file() and resolved not in found:
            found[resolved] = PresetChoice(resolved, origin)

    for folder, origin in ((cwd / "presets", "./presets"), (workspace / "presets", "workspace")):
        if folder.is_dir():
            for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
                add(path, origin)
    for run in iter_runs(workspace):
        source = run.request().get("preset_path")
        if source:
            add(Path(source), f"used by {run.run_id}")
    return list(found.values())


def parse_overrides(text: str) -> dict[str, Any]:
    """One KEY=VALUE per line (VALUE is YAML); blank lines and '#' comments are skipped.

    A bad line raises PresetError naming the line, e.g. 'line 2: expected KEY=VALUE ...'."""
    out: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            key, value = parse_override(stripped)
        except PresetError as e:
            message = str(e).removeprefix(f"--set {stripped}: ")
            raise PresetError(f"overrides, line {number} ('{stripped}'): {message}") from None
        out[key] = value
    return out


def parse_stages(text: str) -> list[str] | None:
    """'init, overfit_one' -> ['init', 'overfit_one']; empty -> None (the preset's ladder)."""
    return parse_stage_list(text)
