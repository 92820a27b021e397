"""The preset reader's limits and sentences at their edges (engine/torchfree/preset.py).

Written after the mutation benchmark (benchmarks/mutation.sh preset) showed these could
change unnoticed: the nesting limit (at it / one past it), the line a structural error
names, the words for tags, recursive aliases and a value's kind.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.torchfree import preset as presets
from engine.torchfree.preset import MAX_DEPTH, PresetError
from tests.conftest import ZOO

BASE = (ZOO / "blobs.yaml").read_text()
N = len(BASE.splitlines())  # the line after the base preset is line N + 1


def _load(tmp_path: Path, text: str):
    shutil.copy(ZOO / "zoo.py", tmp_path / "zoo.py")  # the preset's own module, beside it
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p, lambda: presets.load(p)


def _nested(levels: int) -> str:
    """``extra:`` holding ``levels`` nested flow lists below the top mapping."""
    return "[" * levels + "1" + "]" * levels


def test_nesting_is_refused_one_level_past_the_limit(tmp_path):
    # the top mapping is depth 0, `extra`'s value depth 1, each list one more
    _ok_path, ok = _load(tmp_path, BASE + f"extra: {_nested(MAX_DEPTH - 1)}\n")
    with pytest.raises(PresetError) as e:
        ok()
    assert "nested more than" not in str(e.value)  # refused for its unknown key, not its depth
    p, bad = _load(tmp_path, BASE + f"extra: {_nested(MAX_DEPTH)}\n")
    with pytest.raises(PresetError) as e:
        bad()
    assert str(e.value) == f"{p}, line {N + 1}: it is nested more than {MAX_DEPTH} levels deep."


def test_a_tag_is_named_with_its_line(tmp_path):
    p, load = _load(tmp_path, BASE + "seed: !!python/object:os.system 1\n")
    with pytest.raises(PresetError) as e:
        load()
    assert str(e.value).startswith(
        f"{p}, line {N + 1}: the YAML tag '!!python/object:os.system' is not allowed in a preset "
        "(plain values, lists and mappings only); remove the tag"
    )


def test_a_recursive_alias_is_named_with_its_line(tmp_path):
    p, load = _load(tmp_path, BASE + "loss: &a\n  x: *a\n")
    with pytest.raises(PresetError) as e:
        load()
    assert str(e.value) == (
        f"{p}, line {N + 1}: an alias refers to a node that contains it (a recursive alias); remove it."
    )


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("null", "nothing (null)"),
        ("true", "true (a boolean)"),
        ("1.5", "1.5 (a number)"),
        ("abc", "'abc' (text)"),
        ("[1, 2]", "a list"),
        ("{a: 1}", "a mapping"),
    ],
)
def test_a_wrongly_typed_value_is_described_by_its_kind(tmp_path, value, kind):
    p, load = _load(tmp_path, BASE.replace("batch_size: 32\n", "") + f"batch_size: {value}\n")
    with pytest.raises(PresetError) as e:
        load()
    assert str(e.value).startswith(f"{p}, line {N}: batch_size must be an integer > 0, got ")
    assert f"got {kind}" in str(e.value)
