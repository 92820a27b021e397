"""Every key of the app, by context (Contract 4's keys plus the views' own).

The screens take their BINDINGS from here and the help screen lists these same tables, so
the help can never drift from what the keys do.
"""

from __future__ import annotations

from textual.binding import Binding

EVERYWHERE = [
    Binding("n", "new_run", "new run"),
    Binding("f", "fork", "fork"),
    Binding("x", "kill", "kill"),
    Binding("space", "mark", "mark"),
    Binding("c", "compare", "compare"),
    Binding("l", "log_scale", "log scale", show=False),
    Binding("b", "markers", "braille / block / dot markers", show=False),
    Binding("question_mark", "help", "help", key_display="?"),
    Binding("q", "quit", "quit"),
]
"""On the runs list, the run view and the compare view (not in dialogs)."""

RUNS_LIST = [
    Binding("enter", "open_run", "open", show=False),
    Binding("slash", "filter", "filter", key_display="/", show=False),
    Binding("s", "sort", "sort by the next column", show=False),
    Binding("S", "reverse_sort", "reverse the sort", show=False),
    Binding("g", "gpu_view", "GPU panel: util / memory / power", show=False),
    Binding("escape", "clear_filter", "clear the filter", show=False),
]

RUN_VIEW = [
    Binding("escape,backspace", "back", "back", key_display="esc"),
    Binding("left_square_bracket", "stage(-1)", "previous stage", key_display="[", show=False),
    Binding("right_square_bracket", "stage(1)", "next stage", key_display="]", show=False),
    Binding("plus,equals_sign", "smoothing(1)", "smoother curves", key_display="+", show=False),
    Binding("minus", "smoothing(-1)", "rougher curves", key_display="-", show=False),
    Binding("1", "tab('curves')", "curves", show=False),
    Binding("2", "tab('ladder')", "ladder", show=False),
    Binding("3", "tab('log')", "log", show=False),
    Binding("4", "tab('preset')", "preset", show=False),
    Binding("5", "tab('batch')", "the batch the model receives", show=False),
    Binding("j", "scroll(1)", "scroll down", show=False),
    Binding("k", "scroll(-1)", "scroll up", show=False),
]

COMPARE_VIEW = [
    Binding("escape,backspace", "back", "back", key_display="esc"),
    Binding("enter", "open_run", "open", show=False),
    Binding("r", "rank_metric", "rank by the next metric", show=False),
    Binding("g", "group", "next group of runs", show=False),
    Binding("v", "curve_kind", "overlay: train / val / metric", show=False),
    Binding("plus,equals_sign", "smoothing(1)", "smoother curves", key_display="+", show=False),
    Binding("minus", "smoothing(-1)", "rougher curves", key_display="-", show=False),
]

DIALOG = [
    Binding("ctrl+s", "start", "start"),
    Binding("escape", "cancel", "cancel", key_display="esc"),
]

CONFIRM = [
    Binding("y", "confirm", "yes, kill it"),
    Binding("n,escape", "cancel", "no, keep it", key_display="n/esc"),
]

MOVES = [("j k ↑ ↓", "move the cursor"), ("tab", "next field or tab")]
"""Keys handled by the widgets themselves, listed in the help too."""

HELP_SECTIONS: list[tuple[str, list[Binding]]] = [
    ("everywhere", EVERYWHERE),
    ("runs list", RUNS_LIST),
    ("run view", RUN_VIEW),
    ("compare view", COMPARE_VIEW),
    ("new run / fork dialogs", DIALOG),
    ("kill confirmation", CONFIRM),
]

KEY_NAMES = {
    "space": "space",
    "question_mark": "?",
    "slash": "/",
    "escape": "esc",
    "backspace": "⌫",
    "left_square_bracket": "[",
    "right_square_bracket": "]",
    "plus": "+",
    "equals_sign": "=",
    "minus": "-",
    "enter": "enter",
    "ctrl+s": "ctrl+s",
}


def key_label(binding: Binding) -> str:
    """'esc ⌫' for 'escape,backspace' — every key that does it."""
    return " ".join(KEY_NAMES.get(k.strip(), k.strip()) for k in binding.key.split(","))
