"""Docs that users read stay in step with the code."""

from __future__ import annotations

import sys

from gateway.config.settings import variables
from tests.support import ROOT


def test_every_setting_is_documented() -> None:
    """Every variable the settings read, the groups' and the older names included."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in variables() if f"`{name}`" not in text]
    assert not missing, f"undocumented settings: {missing}"


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text()[:1200]
    assert "make run" in head and "make test" in head


def test_the_seccomp_table_is_the_filter() -> None:
    """docs/security.md shows the filter as it is built, reason by reason."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("seccomp_doc",
                                                  ROOT / "runtimes" / "seccomp_filter.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    assert module.markdown().strip() in (ROOT / "docs" / "security.md").read_text()


def test_every_reason_is_documented() -> None:
    from gateway.models import Reason

    text = (ROOT / "docs" / "api.md").read_text()
    assert not [r.value for r in Reason if f"| `{r.value}` |" not in text]
