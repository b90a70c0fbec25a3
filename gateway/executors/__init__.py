"""Executors: the Executor seam, and the registry that picks one by name."""

from __future__ import annotations

import importlib

from gateway.config.profiles import ProfileCatalog
from gateway.config.settings import Settings
from gateway.errors import ConfigError
from gateway.executors.base import Executor
from gateway.membership.base import Membership

# name -> (module, class, the extra that installs what it needs). A new executor is a
# module of its own and one line here; each is imported only when chosen.
EXECUTORS: dict[str, tuple[str, str, str | None]] = {
    "local": ("gateway.executors.local", "LocalExecutor", None),
    "kubernetes": ("gateway.executors.kubernetes", "KubernetesExecutor", "kubernetes"),
}


def make_executor(settings: Settings, profiles: ProfileCatalog,
                  membership: Membership) -> Executor:
    try:
        module, name, extra = EXECUTORS[settings.executor]
    except KeyError:
        raise ConfigError(f"executor {settings.executor!r} is not available in this build; "
                          f"known: {', '.join(EXECUTORS)}") from None
    try:
        cls = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        raise ConfigError(f"the {settings.executor} executor needs {e.name}: "
                          f"pip install 'jobgate[{extra}]'") from None
    executor: Executor = cls(settings, profiles, membership)
    return executor
