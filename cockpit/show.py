"""``cockpit show RUN``: the batch before the net, headless — and the drawing the app reuses.

Reads ``batches/train.json`` and ``batches/val.json`` from the run folder (engine/batches.py
writes them when the run starts: the first train batch and the first val batch, exactly as the
model receives them) and draws them in the terminal:

- images with half-block characters (two pixels a cell: ``▀`` in the top pixel's colour on the
  bottom pixel's), after mapping the batch's value range to black..white — the range is stated,
  so a batch normalised to [-2, 2] or stuck in [0, 255] shows;
- masks in one colour per class, sequences as token ids, tabular rows as numbers;
- every tensor's shape, dtype, statistics (per channel for images) and the labels.

Without colour (``NO_COLOR``, a pipe, ``--color never``) images fall back to shading
characters and masks to class digits. Torch-free: drawing is a list of lines of
``(text, fg, bg)`` runs, turned into ANSI here and into rich Text by the app.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from engine.torchfree.runfolder import RunFolder, display_status, read_json

SPLITS = ("train", "val")
RAMP = " ░▒▓█"
PALETTE = [
    (40, 40, 40),
    (229, 80, 80),
    (97, 175, 239),
    (152, 195, 121),
    (229, 192, 123),
    (198, 120, 221),
    (86, 182, 194),
    (229, 140, 60),
    (240, 240, 240),
    (120, 120, 200),
]
"""Mask classes: 0 (background) dark, then distinct colours; ids past the palette wrap."""

Run = tuple[str, tuple[int, int, int] | None, tuple[int, int, int] | None]
Line = list[Run]


def load(folder: RunFolder) -> dict[str, dict]:
    """{split: snapshot} for the splits the engine wrote."""
    out = {}
    for split in SPLITS:
        data = read_json(folder.file("batches") / f"{split}.json")
        if isinstance(data, dict) and data.get("tensors") is not None:
            out[split] = data
    return out


def num(x: Any) -> str:
    if x is None:
        return "nan"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    x = float(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.3g}"


def stats_text(s: dict) -> str:
    if not s or s.get("min") is None:
        return "no finite values" if s else ""
    text = f"min {num(s['min'])} max {num(s['max'])} mean {num(s['mean'])} std {num(s['std'])}"
    if s.get("nonfinite"):
        text += f" · {s['nonfinite']} non-finite!"
    return text


# ---------------------------------------------------------------- drawing pieces


def _grey(v: float, lo: float, hi: float) -> tuple[int, int, int]:
    t = 0.0 if hi <= lo else min(1.0, max(0.0, (v - lo) / (hi - lo)))
    g = round(255 * t)
    return (g, g, g)


def _pixel(sample: list, y: int, x: int, lo: float, hi: float) -> tuple[int, int, int]:
    """One pixel of a (C, H, W) sample: grey for 1 channel, RGB for 3+, (R, G, 0) for 2."""
    vals = [ch[y][x] for ch in sample[:3]]
    vals = [lo if v is None else v for v in vals]
    if len(vals) == 1:
        return _grey(vals[0], lo, hi)
    rgb = [_grey(v, lo, hi)[0] for v in vals] + [0] * (3 - len(vals))
    return (rgb[0], rgb[1], rgb[2])


def image_cells(sample: list, lo: float, hi: float, color: bool) -> list[Line]:
    """A (C, H, W) sample as ceil(H/2) lines of W cells."""
    h, w = len(sample[0]), len(sample[0][0])
    lines = []
    for y in range(0, h, 2):
        line: Line = []
        for x in range(w):
            top = _pixel(sample, y, x, lo, hi)
            bottom = _pixel(sample, y + 1, x, lo, hi) if y + 1 < h else (0, 0, 0)
            if color:
                line.append(("▀", top, bottom))
            else:
                level = (sum(top) + sum(bottom)) / (6 * 255)
                line.append((RAMP[min(len(RAMP) - 1, int(level * len(RAMP)))], None, None))
        lines.append(line)
    return lines


def mask_cells(mask: list, color: bool) -> list[Line]:
    h, w = len(mask), len(mask[0])
    lines = []
    for y in range(0, h, 2):
        line: Line = []
        for x in range(w):
            top = int(mask[y][x])
            bottom = int(mask[y + 1][x]) if y + 1 < h else 0
            if color:
                line.append(("▀", PALETTE[top % len(PALETTE)], PALETTE[bottom % len(PALETTE)]))
            else:
                c = top or bottom
                line.append(("·" if c == 0 else str(c % 10), None, None))
        lines.append(line)
    return lines


def side_by_side(tiles: list[list[Line]], captions: list[str], width: int, gap: int = 2) -> list:
    """Tiles left to right, wrapped at ``width``, each with its caption below."""
    out: list[Line] = []
    if not tiles:
        return out
    tile_w = max(sum(len(r[0]) for r in line) for line in tiles[0])
    per_row = max(1, (width + gap) // (tile_w + gap))
    for start in range(0, len(tiles), per_row):
        row = tiles[start : start + per_row]
        caps = captions[start : start + per_row]
        height = max(len(t) for t in row)
        for y in range(height):
            line: Line = []
            for i, tile in enumerate(row):
                if i:
                    line.append((" " * gap, None, None))
                line += tile[y] if y < len(tile) else [(" " * tile_w, None, None)]
            out.append(line)
        cap_line = (" " * gap).join(c[:tile_w].ljust(tile_w) for c in caps).rstrip()
        out.append([(cap_line, None, None)])
    return out


def plain(text: str) -> Line:
    return [(text, None, None)]


# ---------------------------------------------------------------- one batch


def _labels_of(snap: dict) -> list[str]:
    """Per-sample captions from the target: its label (by class name when the data set has
    ``classes``), or its row of numbers."""
    for t in snap["tensors"]:
        if t["name"] != "input" and t["kind"] == "labels":
            names = snap.get("classes")
            return [(names[v] if names and 0 <= v < len(names) else str(v)) for v in t["values"]]
    for t in snap["tensors"]:
        if t["name"] != "input" and t["kind"] == "table":
            return [" ".join(num(v) for v in row) for row in t["values"]]
    return []


def draw_batch(snap: dict, width: int = 80, color: bool = True, samples: int = 8) -> list[Line]:
    """The lines that show one split's batch: header, each tensor drawn and described."""
    out: list[Line] = []
    bs = snap.get("batch_size")
    out.append(
        [
            (f"{snap.get('split', '?')} batch", (229, 192, 123), None),
            (
                f" · {snap.get('structure', '')}" + (f" · batch size {bs}" if bs else ""),
                None,
                None,
            ),
        ]
    )
    captions = _labels_of(snap)
    for t in snap["tensors"]:
        shape = str(tuple(t["shape"]))
        out.append(
            plain(f"{t['name']}: {t['kind']} {shape} {t['dtype']}  {stats_text(t['stats'])}")
        )
        kind, values = t["kind"], t.get("values") or []
        values = values[:samples] if kind in ("image", "mask", "tokens", "table") else values
        stride = f", every {t['stride']}th pixel" if t.get("stride", 1) > 1 else ""
        if kind == "image" and values:
            lo, hi = t["stats"].get("min"), t["stats"].get("max")
            lo = 0.0 if lo is None else lo
            hi = lo + 1.0 if hi is None else hi
            chans = len(values[0])
            mapping = "grey" if chans == 1 else ("RGB" if chans >= 3 else "red/green")
            out.append(
                plain(f"  values {num(lo)}..{num(hi)} shown black..white ({mapping}{stride})")
            )
            for c, cs in enumerate(t.get("channels") or []):
                out.append(plain(f"  channel {c}: {stats_text(cs)}"))
            tiles = [image_cells(s, lo, hi, color) for s in values]
            caps = captions[: len(tiles)] if t["name"] == "input" else []
            out += side_by_side(tiles, caps + [""] * (len(tiles) - len(caps)), width)
        elif kind == "mask" and values:
            classes = t.get("classes") or []
            names = snap.get("classes") or []
            legend: Line = [("  classes ", None, None)]
            for c in classes[:12]:
                legend += [("██" if color else str(c % 10), PALETTE[c % len(PALETTE)], None)]
                legend += [(f" {names[c] if 0 <= c < len(names) else c}  ", None, None)]
            out.append([*legend, (f"({stride.strip(', ')})" if stride else "", None, None)])
            tiles = [mask_cells(m, color) for m in values]
            out += side_by_side(tiles, [""] * len(tiles), width)
        elif kind == "tokens" and values:
            for i, row in enumerate(values):
                text = " ".join(str(v) for v in row)
                out.append(plain(f"  [{i}] {text[: width - 6]}"))
        elif kind == "table" and values:
            cols = t.get("channels") or []
            for c, cs in enumerate(cols[:6]):
                out.append(plain(f"  column {c}: {stats_text(cs)}"))
            if len(cols) > 6:
                out.append(plain(f"  ... {len(cols) - 6} more columns"))
            for i, row in enumerate(values):
                text = " ".join(f"{num(v):>7}" for v in row)
                out.append(plain(f"  [{i}] {text[: width - 6]}"))
        elif kind == "labels" and values:
            names = snap.get("classes")
            counts = t.get("counts") or {}
            shown = " ".join(str(v) for v in values)
            out.append(plain(f"  {shown[: width - 2]}"))
            parts = [
                f"{names[int(k)] if names and int(k) < len(names) else k}×{n}"
                for k, n in counts.items()
            ]
            out.append(plain(f"  in this batch: {', '.join(parts)}"[:width]))
        elif kind in ("values", "array") and values:
            flat = values if kind == "values" else values[0]
            out.append(plain("  " + " ".join(num(v) for v in flat)[: width - 2]))
    out.append(plain(""))
    return out


# ---------------------------------------------------------------- output


def to_ansi(lines: list[Line], color: bool) -> str:
    text = []
    for line in lines:
        parts = []
        for chunk, fg, bg in line:
            if color and (fg or bg):
                codes = []
                if fg:
                    codes.append(f"38;2;{fg[0]};{fg[1]};{fg[2]}")
                if bg:
                    codes.append(f"48;2;{bg[0]};{bg[1]};{bg[2]}")
                parts.append(f"\x1b[{';'.join(codes)}m{chunk}\x1b[0m")
            else:
                parts.append(chunk)
        text.append("".join(parts).rstrip())
    return "\n".join(text)


def use_color(choice: str) -> bool:
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()


def render(folder: RunFolder, split: str = "both", width: int = 80, color: bool = True) -> str:
    """What ``cockpit show`` prints for a run folder."""
    snaps = load(folder)
    if not snaps:
        st = folder.state()
        state = display_status(str(st.get("status", "?")), st.get("reason"))
        return (
            f"{folder.run_id}: no batch snapshot yet (the engine writes batches/ when the run "
            f"starts; this run is {state}, and runs from before cockpit show have none)"
        )
    lines: list[Line] = [plain(f"{folder.run_id} · the batch before the net")]
    for name in SPLITS if split == "both" else (split,):
        if name in snaps:
            lines += draw_batch(snaps[name], width, color)
        else:
            lines.append(plain(f"{name} batch: not written"))
    return to_ansi(lines, color)


def cmd_show(args: Any) -> int:
    from engine.torchfree.runfolder import find_run, resolve_workspace

    folder = find_run(resolve_workspace(args.workspace), args.run)
    width = args.width or min(shutil.get_terminal_size((80, 24)).columns, 160)
    text = render(folder, args.split, width, use_color(args.color))
    print(text)
    return 0 if load(folder) else 1
