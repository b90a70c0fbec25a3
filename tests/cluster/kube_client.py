"""Raw-JSON access to the Kubernetes API over kubernetes-asyncio's connection and auth.

The generated API classes turn every object into a model and back; the test harness and
the test node agent only shuffle JSON, so they use kubernetes-asyncio for what matters
(kubeconfig loading, TLS, credentials) and speak plain REST paths on its aiohttp session.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio import client, config

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class KubeError(Exception):
    """A non-2xx answer from the API server, with its Status object when there is one."""

    def __init__(self, status: int, body: JSON | str) -> None:
        self.status = status
        self.body = body
        self.reason = body.get("reason", "") if isinstance(body, dict) else ""
        message = body.get("message", "") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")


class KubeClient:
    """One connection pool to one API server; use as an async context manager."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self.host = str(api.configuration.host)

    @classmethod
    async def from_kubeconfig(cls, path: str | Path, context: str | None = None) -> KubeClient:
        cfg = client.Configuration()
        await config.load_kube_config(
            config_file=str(path), context=context, client_configuration=cfg
        )
        return cls(client.ApiClient(cfg))

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._api.close()

    @property
    def _session(self) -> aiohttp.ClientSession:
        session: aiohttp.ClientSession = self._api.rest_client.pool_manager
        return session

    async def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        # Adds "authorization: Bearer ..." for token and exec-plugin kubeconfigs.
        await self._api.update_params_for_auth(headers, [], ["BearerToken"])
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        limit_s: float = 30.0,
    ) -> JSON:
        """One API call; returns the decoded answer, raises KubeError on non-2xx."""
        data = None if body is None else orjson.dumps(body)
        headers = await self._headers(content_type if data is not None else None)
        async with self._session.request(
            method,
            self.host + path,
            params=_query(query),
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=limit_s),
        ) as resp:
            raw = await resp.read()
        decoded: Any
        try:
            decoded = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            decoded = raw.decode(errors="replace")
        if not 200 <= resp.status < 300:
            raise KubeError(resp.status, decoded)
        if not isinstance(decoded, dict):
            return {"text": decoded}
        return decoded

    async def text(
        self, path: str, *, query: Mapping[str, str | int | bool] | None = None,
        limit_s: float = 30.0,
    ) -> str:
        """GET a plain-text endpoint (pod logs)."""
        headers = await self._headers(None)
        headers["Accept"] = "*/*"
        async with self._session.get(
            self.host + path, params=_query(query), headers=headers,
            timeout=aiohttp.ClientTimeout(total=limit_s),
        ) as resp:
            raw = await resp.read()
            if not 200 <= resp.status < 300:
                try:
                    raise KubeError(resp.status, json.loads(raw))
                except ValueError:
                    raise KubeError(resp.status, raw.decode(errors="replace")) from None
            return raw.decode(errors="replace")

    async def get(self, path: str, **query: str | int | bool) -> JSON:
        return await self.request("GET", path, query=query)

    async def create(self, path: str, body: JSON, **query: str | int | bool) -> JSON:
        return await self.request("POST", path, body=body, query=query)

    async def patch(self, path: str, body: JSON, content_type: str = MERGE_PATCH) -> JSON:
        return await self.request("PATCH", path, body=body, content_type=content_type)

    async def delete(self, path: str, body: JSON | None = None) -> JSON:
        return await self.request("DELETE", path, body=body)

    async def watch(
        self, path: str, query: Mapping[str, str | int | bool], timeout_seconds: int = 60
    ) -> AsyncIterator[JSON]:
        """One watch request: yields events until the server ends it (timeoutSeconds)."""
        params = dict(query, watch="true", timeoutSeconds=timeout_seconds)
        headers = await self._headers(None)
        # The server closes the stream after timeoutSeconds; the client limit is a backstop.
        timeout = aiohttp.ClientTimeout(total=timeout_seconds + 30, sock_connect=10)
        async with self._session.get(
            self.host + path, params=_query(params), headers=headers, timeout=timeout
        ) as resp:
            if resp.status != 200:
                raise KubeError(resp.status, (await resp.read()).decode(errors="replace"))
            # Split lines ourselves: aiohttp's line reader caps a line at 64 KiB, and one
            # event carries a whole object.
            pending = b""
            async for chunk in resp.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield orjson.loads(line)


def _query(query: Mapping[str, str | int | bool] | None) -> dict[str, str]:
    if not query:
        return {}
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in query.items()}
