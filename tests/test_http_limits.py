"""HTTP limits of the gateway's server, over raw sockets to a real gateway on 127.0.0.1:
header block size and count (431), header and body read timeouts (408, then closed),
slow clients that do not hold the server, and keep-alive that still works."""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import KEY_A, GatewayProcess

TIMEOUT_S = 1.0  # the header and body timeouts of the gateway under test
WAIT_S = TIMEOUT_S + 5.0  # the most a test waits for the gateway to act on a timeout


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        err: dict[str, Any] = json.loads(self.body)["error"]
        assert set(err) == {"code", "message", "details"}
        return err


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Default size limits, short timeouts."""
    gw = GatewayProcess(tmp_path_factory.mktemp("http-limits") / "data", env={
        "JOBGATE_HTTP_HEADER_TIMEOUT_S": str(TIMEOUT_S),
        "JOBGATE_HTTP_BODY_TIMEOUT_S": str(TIMEOUT_S)}).start()
    yield gw
    gw.stop()


def connect(gw: GatewayProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=WAIT_S)


def request(path: str = "/healthz", *headers: str, method: str = "GET",
            body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_answer(sock: socket.socket) -> Answer | None:
    """One response from ``sock``, or None when it was closed without one."""
    resp = http.client.HTTPResponse(sock)
    try:
        resp.begin()
        body = resp.read()
    except (http.client.RemoteDisconnected, ConnectionResetError):
        return None
    return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)


def send_and_read(gw: GatewayProcess, data: bytes) -> Answer | None:
    with connect(gw) as sock:
        # Refused before it was all sent: the answer may still be there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return read_answer(sock)


def closed_soon(sock: socket.socket) -> bool:
    """The server closed (or half-closed) ``sock`` within WAIT_S, after any answer."""
    sock.settimeout(WAIT_S)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


# -- header size and count -----------------------------------------------------------------


def test_a_100_kb_header_is_431(gateway: GatewayProcess) -> None:
    answer = send_and_read(gateway, request("/healthz", "X-Big: " + "a" * 100_000))
    assert answer is not None and answer.status == 431
    err = answer.error()
    assert err["code"] == "RequestHeadersTooLarge"
    assert err["details"]["limit"] == 16 * 1024
    assert answer.headers["connection"] == "close"


def test_a_header_that_never_ends_is_431_without_waiting_for_the_timeout(
        gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
        for _ in range(64):  # 64 x 1 KiB, bounded; the limit is 16 KiB
            try:
                sock.sendall(b"a" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([sock], [], [], 0)[0]:
                break
        answer = read_answer(sock)
    assert answer is not None and answer.status == 431, answer


def test_1000_headers_are_431(gateway: GatewayProcess) -> None:
    headers = [f"X-H{i}: v" for i in range(1000)]
    answer = send_and_read(gateway, request("/healthz", *headers))
    assert answer is not None and answer.status == 431
    err = answer.error()
    assert err["code"] == "RequestHeadersTooLarge"
    assert err["details"]["limit"] == 100


def test_up_to_the_limits_is_fine(gateway: GatewayProcess) -> None:
    # Host and 99 more: 100 header fields.
    answer = send_and_read(gateway, request("/healthz", *[f"X-H{i}: v" for i in range(99)]))
    assert answer is not None and answer.status == 200, answer
    answer = send_and_read(gateway, request("/healthz", *[f"X-H{i}: v" for i in range(100)]))
    assert answer is not None and answer.status == 431
    answer = send_and_read(gateway, request("/healthz", "X-Big: " + "a" * 15_000))
    assert answer is not None and answer.status == 200, answer


def test_the_limits_are_settings(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "data", env={"JOBGATE_HTTP_MAX_HEADER_BYTES": "2048",
                                                "JOBGATE_HTTP_MAX_HEADERS": "10"}).start()
    try:
        small = send_and_read(gw, request("/healthz", "X-Big: " + "a" * 1500))
        big = send_and_read(gw, request("/healthz", "X-Big: " + "a" * 3000))
        many = send_and_read(gw, request("/healthz", *[f"X-H{i}: v" for i in range(10)]))
        assert small is not None and small.status == 200
        assert big is not None and big.status == 431 and big.error()["details"]["limit"] == 2048
        assert many is not None and many.status == 431 and many.error()["details"]["limit"] == 10
    finally:
        gw.stop()


def test_a_malformed_request_is_400_in_the_error_shape(gateway: GatewayProcess) -> None:
    answer = send_and_read(gateway, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer is not None and answer.status == 400
    assert answer.error()["code"] == "BadRequest"


# -- timeouts ------------------------------------------------------------------------------


def test_half_a_header_then_silence_is_408_and_closed(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: abc")
        answer = read_answer(sock)
        assert answer is not None and answer.status == 408, answer
        err = answer.error()
        assert err["code"] == "RequestTimeout"
        assert err["details"]["setting"] == "JOBGATE_HTTP_HEADER_TIMEOUT_S"
        assert closed_soon(sock)


def test_slow_headers_are_cut_and_do_not_hold_the_server(gateway: GatewayProcess) -> None:
    """Slowloris: 20 connections sending their headers a byte at a time. The header timeout
    is a deadline from the first byte, not a gap between bytes."""
    socks = [connect(gateway) for _ in range(20)]
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    answers: dict[int, Answer | None] = {}
    served_meanwhile = False
    try:
        deadline = time.monotonic() + WAIT_S
        sent = 0
        while len(answers) < len(socks) and time.monotonic() < deadline:
            for i, sock in enumerate(socks):
                if i in answers:
                    continue
                try:
                    sock.send(head[sent:sent + 1])
                except OSError:
                    answers[i] = None
            sent += 1
            readable = select.select([s for i, s in enumerate(socks) if i not in answers],
                                     [], [], 0.05)[0]
            for sock in readable:
                answers[socks.index(sock)] = read_answer(sock)
            if sent == 5:  # all 20 are mid-header
                r = httpx.get(gateway.url + "/healthz", timeout=WAIT_S)
                served_meanwhile = r.status_code == 200
        assert served_meanwhile
        assert len(answers) == len(socks), f"{len(socks) - len(answers)} slow clients held"
        assert all(a is None or a.status == 408 for a in answers.values()), answers
        assert sum(a is not None for a in answers.values()) >= 1
    finally:
        for sock in socks:
            sock.close()


def body_request(body_length: int) -> bytes:
    return request("/v1/invocations", f"Authorization: Bearer {KEY_A}",
                   "Content-Type: application/json", f"Content-Length: {body_length}",
                   method="POST")


def test_a_body_that_stalls_is_408_and_closed(gateway: GatewayProcess) -> None:
    body = json.dumps({"profile": "no-such-profile", "code": "print(1)"}).encode()
    with connect(gateway) as sock:
        sock.sendall(body_request(len(body)) + body[:10])
        answer = read_answer(sock)
        assert answer is not None and answer.status == 408, answer
        err = answer.error()
        assert err["code"] == "RequestTimeout"
        assert err["details"]["setting"] == "JOBGATE_HTTP_BODY_TIMEOUT_S"
        assert closed_soon(sock)
    # The gateway is fine afterwards, and the app heard a disconnect, not an error.
    assert httpx.get(gateway.url + "/healthz", timeout=WAIT_S).status_code == 200
    assert "Traceback" not in gateway.log()


def test_the_body_timeout_is_a_gap_not_a_total(gateway: GatewayProcess) -> None:
    body = json.dumps({"profile": "no-such-profile", "code": "print(1)"}).encode()
    pieces = [body[i:i + 12] for i in range(0, len(body), 12)]
    with connect(gateway) as sock:
        sock.sendall(body_request(len(body)))
        for piece in pieces:  # gaps of a third of the timeout; longer than it in all
            time.sleep(TIMEOUT_S / 3)
            sock.sendall(piece)
        answer = read_answer(sock)
    assert len(pieces) * TIMEOUT_S / 3 > TIMEOUT_S
    assert answer is not None and answer.status == 422, answer
    assert answer.error()["code"] == "ProfileNotFound"


# -- keep-alive ----------------------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        for _ in range(3):
            sock.sendall(request("/healthz"))
            answer = read_answer(sock)
            assert answer is not None and answer.status == 200
            assert answer.headers.get("connection") != "close"
    with httpx.Client(base_url=gateway.url, timeout=WAIT_S) as client:
        assert all(client.get("/healthz").status_code == 200 for _ in range(20))


def test_an_idle_keep_alive_connection_outlives_the_header_timeout(
        gateway: GatewayProcess) -> None:
    """Between requests the keep-alive timeout (75 s) applies, not the header timeout: the
    header timer starts with a request's first byte."""
    with connect(gateway) as sock:
        sock.sendall(request("/healthz"))
        first = read_answer(sock)
        assert first is not None and first.status == 200
        assert not select.select([sock], [], [], TIMEOUT_S * 2.5)[0]  # not closed meanwhile
        sock.sendall(request("/healthz"))
        second = read_answer(sock)
        assert second is not None and second.status == 200


def test_a_fresh_idle_connection_outlives_the_header_timeout(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        assert not select.select([sock], [], [], TIMEOUT_S * 2.5)[0]
        sock.sendall(request("/healthz"))
        answer = read_answer(sock)
        assert answer is not None and answer.status == 200
