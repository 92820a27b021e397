"""LiveText draws its Text with Rich straight into strips: the same cells and colours as
Textual's Static shows for it (wrapped, styled, in a narrow width) — and a line cut with an
ellipsis gets its ellipsis, which Textual's content drops."""

from __future__ import annotations

import asyncio

import pytest
from rich.text import Text
from textual.app import App
from textual.geometry import Region
from textual.widgets import Static

from cockpit.app.widgets.live_text import LiveText


def texts() -> list[Text]:
    styled = Text.assemble(("━", "#61afef"), " train 0.0612  ", ("● full val", "bold #e6e6e6"))
    styled.append("  ema 0.9", style="dim")
    long = Text("data-bound: GPU idle 63% of the time while the loop waits on the loader; " * 2)
    cut = Text("a line too long for its place " * 4, no_wrap=True, overflow="ellipsis")
    two = Text("first line\nsecond line, a little longer")
    return [styled, long, cut, two, Text("")]


def looks(strip) -> list[tuple]:
    return [
        (ch, seg.style.color, seg.style.bold, seg.style.dim) for seg in strip for ch in seg.text
    ]


@pytest.mark.parametrize("index", range(5))
def test_live_text_draws_what_static_draws(index):
    text = texts()[index]

    class Host(App):
        CSS = "Static { height: 3; color: $text-muted; background: $panel; padding: 0 1; }"

        def compose(self):
            yield LiveText(id="live")
            yield Static(id="static")

    async def go():
        app = Host()
        async with app.run_test(size=(44, 10)) as pilot:
            live, static = app.query_one(LiveText), app.query_one("#static", Static)
            live.show(text)
            static.update(text)
            await pilot.pause()
            region = Region(0, 0, live.outer_size.width, 3)
            got = live.render_lines(region)
            want = static.render_lines(region)
            if text.overflow == "ellipsis":  # Textual's content drops Rich's overflow: cut bare
                assert got[0].text.rstrip().endswith("…")
                shown = got[0].text.rstrip()[:-1].rstrip()
                assert want[0].text.startswith(shown)
                return
            assert [s.text.rstrip() for s in got[: len(want)]] == [s.text.rstrip() for s in want]
            assert all(not s.text.strip() for s in got[len(want) :])
            for mine, theirs in zip(got, want):
                cells = len(theirs.text.rstrip())
                assert looks(mine)[:cells] == looks(theirs)[:cells]
            live.show(Text("changed"))  # a new text is drawn, not the cached one
            await pilot.pause()
            assert live.render_lines(region)[0].text.strip() == "changed"

    asyncio.run(go())
