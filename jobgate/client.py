"""``from jobgate.client import Client``: the same objects as ``gateway.client``."""

from __future__ import annotations

from gateway.client import *  # noqa: F403 - a re-export, by design
from gateway.client import __all__ as __all__
