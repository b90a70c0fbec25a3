"""Gateways that share one bucket, and accepted work that survives losing its worker: real
local gateways (tests.support.GatewayProcess), killed with SIGKILL and started again on
the same data dir (so the same identity)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.executors.local import process_start_time
from tests.backends import local_profiles_env, selected_configs
from tests.support import (
    KEY_A,
    CallbackReceiver,
    GatewayProcess,
    code_pid,
    invoke,
    wait_until,
)

# Says which attempt runs, then takes long enough to be running when the gateway dies.
SLOW = 'echo "attempt $JOBGATE_ATTEMPT"; sleep {s}; echo done'


def _done(c: httpx.Client, inv: str, timeout_s: float = 60) -> dict[str, Any]:
    body: dict[str, Any] = wait_until(
        lambda: (r := c.get(f"/v1/invocations/{inv}", params={"wait": 10}).json())["status"]
        not in ("queued", "running") and r, timeout_s=timeout_s, interval_s=0.2,
        message=f"{inv} finished")
    return body


def _status(c: httpx.Client, inv: str) -> str:
    return str(c.get(f"/v1/invocations/{inv}").json()["status"])


def _ran_on(body: dict[str, Any], gw: GatewayProcess) -> bool:
    """A local worker's id is PROFILE-GATEWAYPID-N: the gateway whose zygote made it."""
    assert gw.proc is not None
    return str(body["worker"]).split("-")[1] == str(gw.proc.pid)


def _alive(pid: int, started: int | None) -> bool:
    return started is not None and process_start_time(pid) == started


class AttemptWatch:
    """Samples /proc while it runs: which attempts of each invocation have a process
    alive (the runner gives the code JOBGATE_INVOCATION_ID and JOBGATE_ATTEMPT). Two
    attempts of one invocation alive in the same sample are an overlap."""

    def __init__(self, ids: list[str]):
        self.ids = set(ids)
        self.overlaps: list[tuple[str, set[str]]] = []
        self.seen: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[str, set[str]]:
        now: dict[str, set[str]] = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            fields = dict(e.decode(errors="replace").split("=", 1) for e in env if b"=" in e)
            inv = fields.get("JOBGATE_INVOCATION_ID")
            if inv in self.ids:
                now.setdefault(inv, set()).add(fields.get("JOBGATE_ATTEMPT", "?"))
        return now

    def _run(self) -> None:
        while not self._stop.is_set():
            for inv, attempts in self._sample().items():
                self.seen.setdefault(inv, set()).update(attempts)
                if len(attempts) > 1:
                    self.overlaps.append((inv, attempts))
            time.sleep(0.05)

    def __enter__(self) -> AttemptWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def shared_env(seaweedfs: Any, tmp_path: Path) -> dict[str, str]:
    """Two gateways, one bucket and prefix (docs/performance.md: each on its own data dir)."""
    return {**local_profiles_env(tmp_path),
            **seaweedfs.gateway_env(bucket="shared-gateways", prefix="jobgate")}


@pytest.fixture
def two_gateways(shared_env: dict[str, str], tmp_path: Path
                 ) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    # One machine: each its own data dir and uid range (docs/operations.md).
    env = {**shared_env, "JOBGATE_MAX_CONCURRENCY": "1"}
    a = GatewayProcess(tmp_path / "a" / "data",
                       env={**env, "JOBGATE_LOCAL_UID_RANGE": "230000-234999"})
    b = GatewayProcess(tmp_path / "b" / "data",
                       env={**env, "JOBGATE_LOCAL_UID_RANGE": "235000-239999"})
    try:
        yield a, b
    finally:
        for gw in (a, b):
            gw.stop()


def test_a_peer_starting_on_the_same_bucket_leaves_live_work_alone(
        two_gateways: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, b = two_gateways
    a.start()
    with a.client() as ca:
        running = invoke(ca, profile="bash", mode="async", code=SLOW.format(s=6)).json()["id"]
        pid = wait_until(lambda: code_pid(running), timeout_s=20, message="code running")
        started = process_start_time(pid)
        queued = invoke(ca, profile="bash", mode="async", code="echo queued").json()["id"]
        assert _status(ca, queued) == "queued"
        # B starts, crashes and starts again: its recovery runs twice over A's records.
        b.start()
        b.kill()
        b.start()
        with b.client() as cb:
            assert _status(cb, running) == "running"  # one bucket: B sees it, and leaves it
            assert _status(cb, queued) == "queued"
        assert _alive(pid, started), "A's invocation was ended by B's start"
        body = _done(ca, running)
        assert (body["status"], body["attempts"], body["attempt_history"]) == \
            ("succeeded", 1, []), body
        assert body["stdout"] == "attempt 1\ndone\n"
        assert _ran_on(body, a)
        other = _done(ca, queued)
        assert (other["status"], other["attempts"], other["stdout"]) == \
            ("succeeded", 1, "queued\n"), other
        assert _ran_on(other, a)
    assert "recovering" not in b.log()


def test_restarted_gateways_recover_their_own_work_and_only_their_own(
        two_gateways: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, b = two_gateways
    a.start()
    b.start()
    with a.client() as ca, b.client() as cb:
        of_a = invoke(ca, profile="bash", mode="async", code=SLOW.format(s=8)).json()["id"]
        of_b = invoke(cb, profile="bash", mode="async", code=SLOW.format(s=8)).json()["id"]
        pids = {inv: wait_until(lambda inv=inv: code_pid(inv), timeout_s=20,
                                message=f"{inv} running") for inv in (of_a, of_b)}
    b_before = b.proc.pid if b.proc else None
    a.kill()
    b.kill()
    a.start()  # at once, the same identity: its own worker is ended, its invocation rerun
    with a.client() as ca:
        body = _done(ca, of_a)
        assert (body["status"], body["attempts"], body["stdout"]) == \
            ("succeeded", 2, "attempt 2\ndone\n"), body
        [lost] = body["attempt_history"]
        assert (lost["attempt"], lost["reason"]) == (1, "WorkerLost")
        assert "restarted" in lost["message"]
        assert _ran_on(body, a)
        # B is down, but A cannot know it is for good: B's invocation is left to B.
        left = ca.get(f"/v1/invocations/{of_b}").json()
        assert (left["status"], left["attempts"]) == ("running", 1), left
    # B's worker outlived B, finished, and stored its report itself (S3 storage).
    wait_until(lambda: not os.path.exists(f"/proc/{pids[of_b]}"), timeout_s=20)
    time.sleep(2)
    b.start()
    with b.client() as cb:
        body = _done(cb, of_b)
        assert (body["status"], body["attempts"], body["stdout"], body["attempt_history"]) \
            == ("succeeded", 1, "attempt 1\ndone\n", []), body
        assert str(body["worker"]).split("-")[1] == str(b_before)


@pytest.mark.parametrize("storage", [c for c in selected_configs() if c in ("local", "s3")])
def test_async_work_running_when_the_gateway_is_killed_runs_again(
        storage: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = local_profiles_env(tmp_path)
    if storage == "s3":
        env.update(request.getfixturevalue("seaweedfs").gateway_env(
            bucket="crash-retries", prefix=tmp_path.name))
    gw = GatewayProcess(tmp_path / "data", env=env).start()
    sync_call: list[BaseException] = []

    def sync_invocation() -> None:
        try:
            with gw.client() as c:
                invoke(c, profile="bash", code=SLOW.format(s=30))
        except httpx.HTTPError as e:  # the gateway dies under it
            sync_call.append(e)

    try:
        with CallbackReceiver() as receiver:
            with gw.client() as c:
                failing = invoke(c, profile="bash", mode="async", code="echo no; exit 3")
                failing_id = failing.json()["id"]
                assert _done(c, failing_id)["status"] == "failed"
                ids = [invoke(c, profile="bash", mode="async", code=SLOW.format(s=5),
                              callback={"url": receiver.url} if i == 0 else None
                              ).json()["id"] for i in range(10)]
                threading.Thread(target=sync_invocation, daemon=True).start()
                pids = {inv: wait_until(lambda inv=inv: code_pid(inv), timeout_s=30,
                                        message=f"{inv} running") for inv in ids}
                started = {inv: process_start_time(pid) for inv, pid in pids.items()}
                sync_id = wait_until(lambda: [i["id"] for i in c.get(
                    "/v1/invocations", params={"status": "running"}).json()["items"]
                    if i["mode"] == "sync"], timeout_s=20, message="sync call running")[0]
            with AttemptWatch([*ids, sync_id]) as watch:
                gw.kill()
                # The runners outlive their gateway and its zygotes: they took their work.
                assert all(_alive(pids[i], started[i]) for i in ids)
                gw.start()
                # Ready means the previous run's workers are gone, before any rerun.
                assert not [i for i in ids if _alive(pids[i], started[i])]
                with gw.client() as c:
                    bodies = [_done(c, inv) for inv in ids]
                    sync_body = _done(c, sync_id)
                    failed = c.get(f"/v1/invocations/{failing_id}").json()
            assert not watch.overlaps, watch.overlaps
            assert {watch.seen.get(inv, frozenset()) >= {"1", "2"} for inv in ids} == {True}
            for body in bodies:
                assert (body["status"], body["attempts"], body["max_attempts"]) == \
                    ("succeeded", 2, 3), body
                assert body["stdout"] == "attempt 2\ndone\n"
                [lost] = body["attempt_history"]
                assert (lost["attempt"], lost["reason"]) == (1, "WorkerLost")
            # A sync call is one attempt unless it asks for more: the crash ends it.
            assert sync_call
            assert (sync_body["status"], sync_body["reason"], sync_body["attempts"],
                    sync_body["max_attempts"]) == ("error", "WorkerLost", 1, 1), sync_body
            # Failing by itself is the code's doing: never run again, crash or not.
            assert (failed["status"], failed["reason"], failed["attempts"],
                    failed["attempt_history"]) == ("failed", "NonZeroExit", 1, []), failed
            [hook] = receiver.wait_for(lambda got: len(got) >= 1)
            sent = hook.json()
            assert sent["id"] == ids[0]
            assert (sent["status"], sent["attempts"]) == ("succeeded", 2)
            assert sent["attempt_history"][0]["reason"] == "WorkerLost"
    finally:
        gw.stop()


def test_max_attempts_is_validated_and_capped(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "data", env={**local_profiles_env(tmp_path),
                                                "JOBGATE_MAX_ATTEMPTS": "2"}).start()
    try:
        with gw.client() as c:
            body = invoke(c, profile="bash", mode="async", code="echo hi").json()
            assert _done(c, body["id"])["max_attempts"] == 2  # the default, capped
            assert invoke(c, profile="bash", code="echo hi").json()["max_attempts"] == 1
            refused = invoke(c, profile="bash", mode="async", code="echo", max_attempts=3)
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"]["details"] == {"max_attempts": 2}
            assert invoke(c, profile="bash", code="echo", max_attempts=0).status_code == 422
    finally:
        gw.stop()


def test_one_data_dir_serves_one_gateway(tmp_path: Path) -> None:
    env = local_profiles_env(tmp_path)
    first = GatewayProcess(tmp_path / "data", env=env).start()
    try:
        second = GatewayProcess(tmp_path / "data", env=env)
        with pytest.raises(RuntimeError, match="another gateway is running with the data dir"):
            second.start()
        with first.client(KEY_A) as c:
            assert invoke(c, profile="bash", code="echo still").json()["stdout"] == "still\n"
    finally:
        first.stop()


def test_a_stop_leaves_no_pending_marker_of_a_finished_invocation(tmp_path: Path) -> None:
    """Finished invocations' markers wait a moment to be deleted together; a stop
    (SIGTERM) deletes what still waits, so the next start has nothing to look at."""
    gw = GatewayProcess(tmp_path / "data", env=local_profiles_env(tmp_path)).start()
    try:
        with gw.client() as c:
            for i in range(3):
                assert invoke(c, profile="bash", code=f"echo {i}").json()["status"] == \
                    "succeeded"
    finally:
        gw.stop()
    assert "Traceback" not in gw.log()
    assert list((tmp_path / "data" / "objects" / "_pending" / "tenant-a").iterdir()) == []
