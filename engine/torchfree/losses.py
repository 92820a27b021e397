"""Named losses beyond steps.bin's train and val loss: ``losses.bin`` and ``losses.json``.

A custom training step (``docs/custom-step.md``) may return several named losses — a GAN's
``G`` and ``D``, a model's parts of its loss. steps.bin keeps its nine documented columns (the
step's main loss is its ``train_loss``); every named loss goes here, one record per loss per
step, so stages may log different names without changing a layout:

- ``losses.bin``: little-endian float64 records ``step, stage, name, value`` (32 bytes;
  ``stage`` indexes summary.json's ``stage_names``, ``name`` indexes ``losses.json``'s
  ``names``);
- ``losses.json``: ``{"format": ..., "record_bytes": 32, "columns": [...], "names": [...]}``,
  rewritten atomically whenever a new name appears — before any record uses it.

Torch-free: the engine writes with :class:`LossesWriter`, the app reads with
:class:`LossesTail` (only whole records, only new bytes).
"""

from __future__ import annotations

import math
import struct
from array import array
from pathlib import Path

from engine.torchfree.runfolder import Appender, open_regular, read_json, write_json_atomic

LOSSES_FILE = "losses.bin"
HEADER_FILE = "losses.json"
COLUMNS = ("step", "stage", "name", "value")
_RECORD = struct.Struct("<dddd")
RECORD_BYTES = _RECORD.size


def read_names(folder: Path) -> list[str]:
    """The loss names of a run folder's losses.json ([] when there is none or it is damaged)."""
    header = read_json(Path(folder) / HEADER_FILE) or {}
    names = header.get("names")
    if not isinstance(names, list):
        return []
    return [str(n) for n in names]


class LossesWriter:
    """Appends named losses of one run folder (one writer per folder and process)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.names = read_names(self.folder)
        self._index = {n: i for i, n in enumerate(self.names)}
        self._out: Appender | None = None

    def _name_index(self, name: str) -> int:
        i = self._index.get(name)
        if i is None:
            i = self._index[name] = len(self.names)
            self.names.append(name)
            write_json_atomic(
                self.folder / HEADER_FILE,
                {
                    "format": "little-endian float64 records, one per named loss per step",
                    "record_bytes": RECORD_BYTES,
                    "columns": list(COLUMNS),
                    "names": self.names,
                },
            )
        return i

    def append(self, stage: int, rows: list[tuple[int, dict[str, float]]]) -> None:
        """``rows``: (step, {name: value}) pairs; one os.write for all of them."""
        records = []
        for step, losses in rows:
            for name, value in losses.items():
                records.append(_RECORD.pack(step, stage, self._name_index(name), value))
        if not records:
            return
        if self._out is None:
            self._out = Appender(self.folder / LOSSES_FILE)
        self._out.write(b"".join(records))


class LossesTail:
    """Reads the records appended to losses.bin since the last call, grouped per
    (stage index, loss name) as (steps, values) arrays."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.offset = 0
        self.names: list[str] = []

    def read_new(self) -> dict[tuple[int, str], tuple[array, array]]:
        path = self.folder / LOSSES_FILE
        try:
            with open_regular(path) as f:  # a FIFO in its place: OSError, not a wait forever
                f.seek(self.offset)
                raw = f.read()
        except OSError:
            return {}
        whole = len(raw) - len(raw) % RECORD_BYTES
        if not whole:
            return {}
        self.offset += whole
        values = array("d")
        values.frombytes(raw[:whole])
        if struct.pack("=d", 1.0) != struct.pack("<d", 1.0):  # pragma: no cover - big-endian
            values.byteswap()
        out: dict[tuple[int, str], tuple[array, array]] = {}
        for k in range(0, len(values), 4):
            step, stage, name, value = values[k : k + 4]
            if not (math.isfinite(stage) and math.isfinite(name)):
                continue
            i = int(name)
            if i >= len(self.names):
                self.names = read_names(self.folder)
            label = self.names[i] if 0 <= i < len(self.names) else f"loss {i}"
            xs, ys = out.setdefault((int(stage), label), (array("d"), array("d")))
            xs.append(step)
            ys.append(value)
        return out
