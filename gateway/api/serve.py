"""The server the gateway runs under: uvicorn with the gateway's HTTP limits, told when it
starts to stop, so that the gateway stops admitting and answers the callers it keeps
waiting before uvicorn's graceful timeout would cancel their requests (a 500)."""

from __future__ import annotations

import socket

import uvicorn
from starlette.applications import Starlette

from gateway.api.server import HttpLimits, LimitedHttpProtocol
from gateway.api.state import gateway_of
from gateway.config.settings import Settings

# Between the gateway's answer to its last waiting caller and uvicorn cutting requests off.
ANSWER_MARGIN_S = 5


class GatewayServer(uvicorn.Server):
    def __init__(self, app: Starlette, settings: Settings):
        # Keep-alive longer than the usual load balancer idle timeout (60 s): otherwise
        # the gateway closes connections a client or balancer is about to reuse.
        super().__init__(uvicorn.Config(
            app, host=settings.host, port=settings.port, log_level=settings.log_level,
            access_log=False, timeout_keep_alive=75,
            http=LimitedHttpProtocol.with_limits(HttpLimits.from_settings(settings)),
            timeout_graceful_shutdown=int(settings.shutdown_grace_s) + ANSWER_MARGIN_S))
        self.gateway_app = app
        self.grace_s = settings.shutdown_grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Called once the signal is seen, before uvicorn waits for the requests in flight.
        gateway_of(self.gateway_app).service.begin_stop(self.grace_s)
        await super().shutdown(sockets)
