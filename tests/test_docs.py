"""README stays true to the code: the stage-settings table is generated from the settings'
own docs, and every preset key the validator accepts is documented."""

from __future__ import annotations

from engine.torchfree.ladder import settings_table
from engine.torchfree.preset import SCHEMA
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_has_the_generated_stage_settings_table():
    table = settings_table()
    assert table in README, (
        "README's stage-settings table is out of date; paste the output of\n"
        "  python -c 'from engine.torchfree.ladder import settings_table; print(settings_table())'"
    )


def test_every_preset_key_is_in_the_readme():
    missing = [key for key in SCHEMA if f"`{key}`" not in README]
    assert not missing, f"preset keys missing from README's key table: {missing}"
