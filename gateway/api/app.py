"""The Starlette app: wiring and lifespan. The lifespan owns every background loop
(membership, pools, janitor, callback deliveries), starts them in order and stops them in
reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.errors import HANDLERS
from gateway.api.openapi import build_openapi
from gateway.api.routes import ROUTES
from gateway.api.state import Gateway, attach, gateway_of
from gateway.auth.authenticator import Authenticator
from gateway.auth.keys import KeyRing
from gateway.auth.upload_tokens import UploadTokens
from gateway.callbacks.delivery import CallbackDeliverer
from gateway.callbacks.signing import secret_key
from gateway.callbacks.ssrf import CallbackPolicy
from gateway.config.profiles import load_profiles
from gateway.config.settings import Settings
from gateway.dispatch.invoke import build_dispatcher
from gateway.dispatch.parts import Parts
from gateway.errors import ConfigError
from gateway.executors import make_executor
from gateway.executors.base import Executor
from gateway.mcp.endpoint import mcp_front_door
from gateway.membership import make_membership
from gateway.metrics.registry import Metrics
from gateway.storage import make_store
from gateway.storage.base import ObjectStore
from gateway.storage.janitor import Janitor
from gateway.storage.records import InvocationStore
from gateway.tenants.directory import TenantDirectory
from gateway.tenants.limits import LimitsTable
from gateway.tenants.quota import StorageQuota

log = logging.getLogger("jobgate")
# How often the leader (Lease membership) looks for work left by replicas that died.
RECOVERY_INTERVAL_S = 15.0


def jobgate_version() -> str:
    try:
        return version("jobgate")
    except PackageNotFoundError:
        return "0.0.0"


class StartupError(RuntimeError):
    """A configuration that must not serve (said plainly, without a traceback)."""


def _server_callback_secret(settings: Settings) -> str:
    """The server's signing secret: configured, or generated once and kept in the data dir
    (so signatures stay valid across restarts). Never logged."""
    if settings.callback_secret is not None:
        return settings.callback_secret.get_secret_value()
    path = Path(settings.data_dir) / "callback-secret"
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    log.warning("no JOBGATE_CALLBACK_SECRET: generated one in %s (set it explicitly when "
                "several gateways sign callbacks)", path)
    return secret


def build_gateway(settings: Settings, *, executor: Executor | None = None,
                  store: ObjectStore | None = None) -> Gateway:
    """Everything, wired. The executor and the store are the ones the settings name,
    unless they are passed in (an embedding, a test's fake)."""
    keys = KeyRing.load(settings.api_keys, settings.api_keys_file)
    if keys.empty and not settings.is_loopback_bind:
        raise StartupError(
            f"refusing to serve on {settings.host} without API keys: set JOBGATE_API_KEYS "
            "or JOBGATE_API_KEYS_FILE (see `jobgate keys new`), or bind to 127.0.0.1")
    if settings.executor == "kubernetes" and settings.storage == "local":
        raise StartupError(
            "the kubernetes executor needs shared storage: set JOBGATE_STORAGE=s3 (workers "
            "upload their outputs there through presigned URLs)")
    try:
        limits = LimitsTable.load(settings.tenant_limits, settings.tenant_limits_file)
    except ConfigError as e:
        raise StartupError(str(e)) from None
    profiles = load_profiles(settings.profiles,
                             check_installed=settings.executor == "local")
    metrics = Metrics()
    store = store or make_store(settings)
    records = InvocationStore(store)
    membership = make_membership(settings)
    executor = executor or make_executor(settings, profiles, membership)
    policy = CallbackPolicy(settings.callback_allow)
    server_secret = _server_callback_secret(settings)
    server_secrets = [server_secret, *(s.get_secret_value()
                                       for s in settings.callback_previous_secrets)]
    for secret in server_secrets:
        try:
            secret_key(secret)
        except ValueError as e:
            raise StartupError(f"JOBGATE_CALLBACK_SECRET or JOBGATE_CALLBACK_PREVIOUS_SECRETS:"
                               f" {e}") from None
    deliverer = CallbackDeliverer(settings, records, metrics, policy, server_secrets)
    tenants = TenantDirectory([*limits.configured, *keys.tenants])
    quota = StorageQuota(records.usage, limits, metrics.tenant_stored_bytes,
                         refresh_s=settings.usage_refresh_s, tenants=tenants)
    parts = Parts(settings, profiles, executor, records, metrics, membership, limits, quota,
                  tenants)
    service = build_dispatcher(parts, deliverer, policy, UploadTokens(server_secret))
    janitor = Janitor(records, metrics, settings.janitor_interval_s)
    return Gateway(settings, profiles, Authenticator(keys), metrics, store, records,
                   membership, executor, deliverer, service, janitor)


class RequestMetrics:
    """Counts and times every request by route (the matched endpoint, not the raw path,
    so ids never explode the label set)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            metrics = gateway_of(scope["app"]).metrics
            route = getattr(scope.get("endpoint"), "__name__", "unmatched")
            metrics.http_requests.labels(scope["method"], route, str(status)).inc()
            metrics.http_duration.labels(scope["method"], route).observe(
                time.perf_counter() - start)


def create_app(settings: Settings | None = None, *, executor: Executor | None = None,
               store: ObjectStore | None = None) -> Starlette:
    settings = settings or Settings()
    gateway = build_gateway(settings, executor=executor, store=store)
    mcp = mcp_front_door(gateway, jobgate_version())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if gateway.auth.open:
            log.warning("*** NO API KEYS CONFIGURED: the gateway is OPEN to anyone who can "
                        "reach %s:%s (allowed on loopback only) ***", settings.host,
                        settings.port)
        await gateway.store.start()
        await gateway.membership.start()
        await gateway.executor.start()
        # Before the first request: what this gateway's previous run left is its own.
        recovered = await gateway.service.recover(at_start=True)
        gateway.janitor.start()
        recovery = asyncio.create_task(gateway.service.recovery_loop(RECOVERY_INTERVAL_S),
                                       name="recovery")
        usage = asyncio.create_task(gateway.service.quota.loop(), name="usage")
        log.info("jobgate %s ready: replica=%s membership=%s executor=%s storage=%s "
                 "profiles=%s recovered=%d", jobgate_version(), gateway.membership.identity,
                 gateway.membership.name, gateway.executor.name, gateway.store.name,
                 ",".join(gateway.profiles.names()), recovered)
        try:
            async with contextlib.AsyncExitStack() as front_doors:
                if mcp is not None:
                    await front_doors.enter_async_context(mcp.run())
                yield
        finally:
            await gateway.service.drain(settings.shutdown_grace_s)
            recovery.cancel()
            usage.cancel()
            await asyncio.gather(recovery, usage, return_exceptions=True)
            # Each step runs whatever the one before it raised: a stop that gives up
            # half-way leaves sessions open and the exit status says "failed".
            for step in (gateway.janitor.stop, gateway.executor.stop,
                         lambda: gateway.service.wait_all(10),
                         # Present until its own work is done or left: then the leader's.
                         gateway.membership.stop, gateway.deliverer.close,
                         gateway.records.close, gateway.store.close):
                try:
                    await step()
                except Exception:  # logged; the next step still runs
                    log.exception("a shutdown step failed; going on with the next")

    # The MCP endpoint is a sub-app beside the REST routes, not in their OpenAPI document.
    routes = [*ROUTES, *(mcp.routes if mcp is not None else [])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=HANDLERS)
    attach(app, gateway, build_openapi(jobgate_version(), ROUTES,
                                       profiles=gateway.profiles.names(),
                                       sync_wait_s=settings.sync_wait_s))
    app.add_middleware(RequestMetrics)
    return app


def app_factory() -> Any:
    """For `uvicorn --factory gateway.api.app:app_factory`."""
    return create_app()
