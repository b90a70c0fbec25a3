"""A callback receiver for load tests: counts deliveries and checks every signature.

    POST /hook          a delivery from the gateway (answered 200 at once)
    GET  /wait/{id}     blocks until the delivery of invocation {id} arrived (or
                        ?timeout=S passed), then answers what was received, as JSON
    GET  /stats         totals: deliveries, invocations, duplicates, bad signatures

The benchmark starts one in its own process; a locust run without one starts its own.
Each load-test user asks ``/wait/{id}`` for its own invocation, so a missing, late or
badly signed callback fails that user's request instead of disappearing in a total.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gateway.callbacks.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, verify

MAX_WAIT_S = 60.0
# Deliveries remembered for /wait; the oldest are forgotten past this (memory bound).
MAX_REMEMBERED = 200_000


class CallbackCounter:
    def __init__(self, secret: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.secret = secret
        self._cond = threading.Condition()
        self._seen: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._delivery_ids: set[str] = set()
        self.deliveries = 0
        self.duplicates = 0
        self.bad_signatures = 0
        self.unreadable = 0
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server names it so
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                counter._record(body, {k.lower(): v for k, v in self.headers.items()})
                self._answer(200, b"")

            def do_GET(self) -> None:  # http.server names it so
                url = urlsplit(self.path)
                if url.path == "/stats":
                    self._answer(200, json.dumps(counter.stats()).encode())
                elif url.path.startswith("/wait/"):
                    timeout = float(parse_qs(url.query).get("timeout", ["30"])[0])
                    seen = counter.wait(url.path[len("/wait/"):], timeout)
                    self._answer(200, json.dumps(seen).encode())
                else:
                    self._answer(404, b"")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="callback-receiver")

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}"

    @property
    def hook_url(self) -> str:
        return self.base_url + "/hook"

    def start(self) -> CallbackCounter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> CallbackCounter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, body: bytes, headers: dict[str, str]) -> None:
        signature_ok = verify(self.secret, body, headers.get(SIGNATURE_HEADER.lower(), ""))
        try:
            doc = json.loads(body)
            inv_id = str(doc["id"])
        except (ValueError, KeyError, TypeError):
            with self._cond:
                self.deliveries += 1
                self.unreadable += 1
            return
        delivery = headers.get(DELIVERY_HEADER.lower(), "")
        with self._cond:
            self.deliveries += 1
            self.bad_signatures += not signature_ok
            if delivery in self._delivery_ids:
                self.duplicates += 1  # at-least-once: a retry of one we already have
            self._delivery_ids.add(delivery)
            entry = self._seen.get(inv_id)
            if entry is None:
                self._seen[inv_id] = {
                    "received": True, "signature_ok": signature_ok,
                    "event": headers.get(EVENT_HEADER.lower()),
                    "delivery": delivery, "status": doc.get("status"),
                    "stdout": doc.get("stdout"), "deliveries": 1,
                    "received_at": time.time(),
                }
                while len(self._seen) > MAX_REMEMBERED:
                    self._seen.popitem(last=False)
            else:
                entry["deliveries"] += 1
                entry["signature_ok"] = entry["signature_ok"] and signature_ok
            self._cond.notify_all()

    def wait(self, invocation_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + min(max(timeout_s, 0.0), MAX_WAIT_S)
        with self._cond:
            while invocation_id not in self._seen:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return {"received": False}
                self._cond.wait(remaining)
            return dict(self._seen[invocation_id])

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"deliveries": self.deliveries, "invocations": len(self._seen),
                    "duplicates": self.duplicates, "bad_signatures": self.bad_signatures,
                    "unreadable": self.unreadable}
