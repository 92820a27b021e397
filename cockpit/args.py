"""Arguments the CLI verbs share: their one error type and the parsers of --set and --stages."""

from __future__ import annotations


class UsageError(Exception):
    """Wrong arguments: exit 2 with one sentence."""


def parse_sets(sets: list[str]) -> dict:
    from engine.torchfree.preset import parse_override

    return dict(parse_override(s) for s in sets)


def parse_stages(text: str | None) -> list[str] | None:
    from engine.torchfree.preset import parse_stage_list

    return parse_stage_list(text)
