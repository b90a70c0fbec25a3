"""The app's state: the Gateway the app was built with and the OpenAPI document derived
from it, attached once by ``create_app`` and read back typed (``gateway_of(request.app)``
in a route handler)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette

from gateway.auth.authenticator import Authenticator
from gateway.callbacks.delivery import CallbackDeliverer
from gateway.config.profiles import ProfileCatalog
from gateway.config.settings import Settings
from gateway.dispatch.invoke import Dispatcher
from gateway.executors.base import Executor
from gateway.membership.base import Membership
from gateway.metrics.registry import Metrics
from gateway.storage.base import ObjectStore
from gateway.storage.janitor import Janitor
from gateway.storage.records import InvocationStore


@dataclass
class Gateway:
    """Everything a request handler may use, built once per app."""

    settings: Settings
    profiles: ProfileCatalog
    auth: Authenticator
    metrics: Metrics
    store: ObjectStore
    records: InvocationStore
    membership: Membership
    executor: Executor
    deliverer: CallbackDeliverer
    service: Dispatcher
    janitor: Janitor


def attach(app: Starlette, gateway: Gateway, openapi: dict[str, Any]) -> None:
    app.state.jobgate = gateway
    app.state.openapi = openapi


def gateway_of(app: Starlette) -> Gateway:
    gateway = app.state.jobgate
    if not isinstance(gateway, Gateway):
        raise TypeError(f"not a jobgate app: its state holds {type(gateway).__name__}")
    return gateway


def openapi_of(app: Starlette) -> dict[str, Any]:
    document: dict[str, Any] = app.state.openapi
    return document
