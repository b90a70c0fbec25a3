"""Loads the cluster plugin for these tests when tests/conftest.py has not already
(``pytest_plugins`` is only honoured in the top-level conftest)."""

from __future__ import annotations

import pytest

PLUGIN = "tests.cluster.fixtures"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(PLUGIN):
        config.pluginmanager.import_plugin(PLUGIN)
