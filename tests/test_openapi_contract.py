"""The OpenAPI document is the contract. schemathesis reads /openapi.json from a running
gateway, sends every operation what the document allows (and what it does not), then
chains operations through the document's links (create -> read, logs, artifacts, cancel),
and checks each answer against the document: no 5xx, a documented status, content type
and headers, a body that is exactly the documented schema.

The gateway is its own: local executor, local storage, profiles whose runs are short (a
generated invocation runs real code, and a sync one always ends within the sync wait)."""

from __future__ import annotations

import collections
import hashlib
import os
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from _pytest.nodeid import NodeId
from _pytest.nodes import Node
from hypothesis import HealthCheck, settings
from hypothesis.errors import Flaky
from starlette.responses import Response
from starlette.routing import Mount, Route

from gateway.api.openapi import DocumentMismatch, build_openapi
from gateway.api.routes import ROUTES, get_invocation
from tests.support import KEY_A, CallbackReceiver, GatewayProcess, running_gateway

# schemathesis 4.32 (from_fixture) renames the running item through Node._nodeid, which
# pytest 9.2 replaced with Node._id: give it the old name back.
if not hasattr(Node, "_nodeid"):
    Node._nodeid = property(  # type: ignore[attr-defined]
        lambda self: self.nodeid,
        lambda self, value: setattr(self, "_id", NodeId.parse(value)))

# Every run is bounded: 1 s by default, 3 s at most, whatever the generated timeout_s; a
# sync one always answers 200 (its wait is longer), async ones 202. The state machine needs
# that: the operations it may take next depend on the answers so far, and Hypothesis
# refuses a run whose choices change when it replays one.
PROFILES = """
[profiles."python3.11"]
image = "jobgate/runtime-python3.11:0.1.0"
language = "python"
command = ["python3", "{entrypoint}"]
default_entrypoint = "main.py"
inprocess = true
default_timeout_s = 1
max_timeout_s = 3
pool = { min = 1, max = 2 }

[profiles.bash]
image = "jobgate/runtime-bash:0.1.0"
language = "bash"
command = ["bash", "{entrypoint}"]
default_entrypoint = "main.sh"
default_timeout_s = 1
max_timeout_s = 3
pool = { min = 1, max = 2 }
"""

CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance",
          "negative_data_rejection", "unsupported_method", "ignored_auth"]
# Per operation, and scenarios of the state machine (JOBGATE_CONTRACT_EXAMPLES=600 to hunt).
EXAMPLES = int(os.environ.get("JOBGATE_CONTRACT_EXAMPLES", "50"))
HYPOTHESIS = {"deadline": None, "database": None,
              "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much]}


@pytest.fixture(scope="module")
def contract_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("contract")
    (work / "profiles.toml").write_text(PROFILES)
    with running_gateway(work, JOBGATE_PROFILES=str(work / "profiles.toml"),
                         JOBGATE_SYNC_WAIT_S="5") as gw:
        yield gw


@pytest.fixture(scope="module")
def hook() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def api_schema(contract_gateway: GatewayProcess) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict({
        "base-url": contract_gateway.url,
        # The document's security scheme: so schemathesis knows the key is a real one (and
        # checks that a request without it, or with another, is refused).
        "auth": {"openapi": {"bearer": {"bearer": KEY_A}}},
        "generation": {"max-examples": EXAMPLES},
        "request-timeout": 30,
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    })
    return schemathesis.openapi.from_url(contract_gateway.url + "/openapi.json",
                                         config=config)


def tame(case: schemathesis.Case, hook: CallbackReceiver, scope: str | None = None) -> None:
    """A generated callback goes to the receiver here: a random URL would make the gateway
    resolve random host names (test_ssrf.py covers the refusals). With a ``scope``, a valid
    Idempotency-Key is made that scenario's own: the same key in two scenarios would answer
    409 in one and 200 in the other, depending on what ran before."""
    body: Any = case.body
    # A batch's items are invocation requests too.
    items = body.get("invocations") if isinstance(body, dict) else None
    for request in [body, *(items if isinstance(items, list) else [])]:
        if isinstance(request, dict) and isinstance(request.get("callback"), dict):
            url = request["callback"].get("url")
            if isinstance(url, str) and len(url) <= 2048:
                request["callback"]["url"] = hook.url
    key = (case.headers or {}).get("Idempotency-Key")
    if scope and isinstance(key, str) and key.isprintable() and len(key) <= 255:
        case.headers["Idempotency-Key"] = \
            f"{scope}-{hashlib.sha256(key.encode()).hexdigest()[:32]}"


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(**HYPOTHESIS)
def test_every_operation_answers_as_documented(case: schemathesis.Case,
                                               hook: CallbackReceiver) -> None:
    tame(case, hook)
    case.call_and_validate()


def test_linked_operations_answer_as_documented(api_schema: schemathesis.BaseSchema,
                                                hook: CallbackReceiver) -> None:
    failures: list[Exception] = []
    # Answers to a call on an invocation the same scenario created.
    linked: collections.Counter[str] = collections.Counter()

    class Workflow(api_schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            self.scope = uuid.uuid4().hex[:12]
            self.created: set[str] = set()

        def before_call(self, case: schemathesis.Case) -> None:
            tame(case, hook, self.scope)

        def after_call(self, response: Any, case: schemathesis.Case) -> None:
            super().after_call(response, case)
            if case.operation.label == "POST /v1/invocations" \
                    and response.status_code in (200, 202):
                self.created.add(response.json()["id"])
            elif (case.path_parameters or {}).get("id") in self.created:
                linked[f"{case.operation.label} {response.status_code}"] += 1

        def validate_response(self, response: Any, case: schemathesis.Case,
                              **kwargs: Any) -> None:
            try:
                super().validate_response(response, case, **kwargs)
            except Exception as e:
                failures.append(e)
                raise

    for _attempt in range(3):
        try:
            Workflow.run(settings=settings(max_examples=EXAMPLES, stateful_step_count=6,
                                           **HYPOTHESIS))
            break
        except Flaky:
            # The gateway is shared by every scenario, so what a step may do next can change
            # when Hypothesis replays one (an answer that depends on what ran before),
            # which it refuses. As schemathesis' own runner does: a failure seen fails; the
            # scenarios that ran passed their checks, and a new run takes over.
            if failures:
                raise failures[0] from None
    else:
        warnings.warn("every stateful run ended early: Hypothesis refused a replay whose "
                      "choices changed with the gateway's state", stacklevel=1)
    # The links were followed: invocations created were read (which reads, chance decides).
    assert len({key for key in linked if key.endswith(" 200")}) >= 2, linked


def test_nothing_sent_made_the_gateway_log_an_error(contract_gateway: GatewayProcess) -> None:
    """After the runs above: an error inside the gateway that answered no 5xx (a background
    task, a callback) still fails the contract."""
    log = contract_gateway.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-4000:]


# -- the document and the routes -----------------------------------------------------------


def _served(routes: list[Any]) -> set[tuple[str, str]]:
    """What Starlette routes, read straight from the route table."""
    out = set()
    for route in routes:
        if isinstance(route, Route) and route.include_in_schema:
            path = route.path.replace("{name:path}", "{name}")
            out |= {(m.lower(), path) for m in route.methods or () if m != "HEAD"}
    return out


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, ops in doc["paths"].items() for method in ops}


def _build(routes: list[Any]) -> dict[str, Any]:
    return build_openapi("0", routes, profiles=["bash"], sync_wait_s=1)


def test_the_document_describes_every_route_and_no_other() -> None:
    doc = _build(ROUTES)
    assert _documented(doc) == _served(ROUTES)
    assert ("post", "/internal/v1/invocations/{id}/uploads") not in _documented(doc)
    assert len({op["operationId"] for ops in doc["paths"].values() for op in ops.values()}) \
        == len(_served(ROUTES))


def test_a_route_without_an_operation_or_an_operation_without_a_route_fails() -> None:
    async def new_endpoint(request: object) -> Response:
        return Response()

    with pytest.raises(DocumentMismatch, match=r"GET /v1/new"):
        _build([*ROUTES, Route("/v1/new", new_endpoint, methods=["GET"])])
    with pytest.raises(DocumentMismatch, match="get_invocation"):
        _build([route for route in ROUTES if getattr(route, "endpoint", None)
                is not get_invocation])
    with pytest.raises(DocumentMismatch, match="Mount"):
        _build([*ROUTES, Mount("/mcp", routes=[])])
    with pytest.raises(DocumentMismatch, match="slug"):
        _build([Route("/v1/invocations/{slug}", get_invocation, methods=["GET"]),
                *(route for route in ROUTES if getattr(route, "endpoint", None)
                  is not get_invocation)])


def test_the_gateway_serves_the_document_of_its_routes(
        contract_gateway: GatewayProcess) -> None:
    with contract_gateway.client() as client:
        doc = client.get("/openapi.json").json()
    assert _documented(doc) == _served(ROUTES)
    schemas = doc["components"]["schemas"]
    assert "tenant" not in schemas["Invocation"]["properties"]
    assert set(schemas["Invocation"]["required"]) == set(schemas["Invocation"]["properties"])
    assert schemas["InvocationCreate"]["properties"]["profile"]["enum"] == ["bash",
                                                                            "python3.11"]
