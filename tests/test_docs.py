"""Docs that users read stay in step with the code."""

from __future__ import annotations

from gateway.config.settings import Settings
from tests.support import ROOT


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f"JOBGATE_{name.upper()}" for name in Settings.model_fields
               if f"`JOBGATE_{name.upper()}`" not in text]
    assert not missing, f"undocumented settings: {missing}"


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text()[:1200]
    assert "make run" in head and "make test" in head
