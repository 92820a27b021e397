"""The app's GPU panel against a real NVML: open `cockpit` headless on a workspace, wait for
device samples, write an SVG screenshot and print the screen's text. For a lent GPU machine.

    python benchmarks/gpu_app_check.py WORKSPACE OUT_DIR
"""

from __future__ import annotations

import asyncio
import html
import re
import sys
import time
from pathlib import Path

from cockpit.app.main import CockpitApp

CELL_W = 12.2  # Textual's screenshots draw one terminal cell 12.2 px wide


def svg_text(svg: str) -> str:
    """Rebuild the terminal's lines from the screenshot's <text> runs, each at its column."""
    rows: dict[float, list[str]] = {}
    pattern = r'<text[^>]*? x="([\d.]+)" y="([\d.]+)" textLength[^>]*>(.*?)</text>'
    for x, y, body in re.findall(pattern, svg, re.S):
        line = rows.setdefault(float(y), [])
        col = round(float(x) / CELL_W)
        text = html.unescape(re.sub(r"<[^>]+>", "", body)).replace("\xa0", " ")
        line.extend(" " * (col + len(text) - len(line)))
        line[col : col + len(text)] = text
    return "\n".join("".join(chars).rstrip() for _, chars in sorted(rows.items()))


async def main(workspace: Path, out: Path) -> None:
    app = CockpitApp(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.monotonic() + 20
        while (not app.runs or len(app.samples) < 4) and time.monotonic() < deadline:
            await pilot.pause(0.25)
        await pilot.pause(1.0)
        svg = app.export_screenshot()
        print(f"runs: {len(app.runs)}, device samples: {len(app.samples)}, note: {app.device_note}")
        if app.samples:
            print("last sample:", app.samples[-1])
    (out / "app_gpu.svg").write_text(svg)
    print(svg_text(svg))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
