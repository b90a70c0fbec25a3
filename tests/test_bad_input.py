"""Bad input gets a clear 4xx in the one error shape, never a 500, and nothing runs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

PY = "python3.11"


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message", "details"}
    assert err["message"]
    if code:
        assert err["code"] == code
    return dict(err)


def test_malformed_json(client: httpx.Client) -> None:
    r = client.post("/v1/invocations", content=b'{"profile": "python3.11", "code": ',
                    headers={"content-type": "application/json"})
    assert "malformed JSON" in assert_error(r, 400, "BadRequest")["message"]


def test_body_not_an_object(client: httpx.Client) -> None:
    assert_error(client.post("/v1/invocations", json=[1, 2]), 422)


def test_non_json_content_type(client: httpx.Client) -> None:
    r = client.post("/v1/invocations", content=b"profile=python3.11",
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert_error(r, 415, "UnsupportedMediaType")


@pytest.mark.parametrize("body, where", [
    ({"profile": PY, "code": 123}, "code"),
    ({"profile": PY, "code": "x", "timeout_s": "soon"}, "timeout_s"),
    ({"profile": PY, "code": "x", "args": "a b"}, "args"),
    ({"profile": PY, "code": "x", "env": {"A": 1}}, "env"),
    ({"profile": PY, "code": "x", "mode": "later"}, "mode"),
    ({"profile": PY, "code": "x", "timeout_s": -1}, "timeout_s"),
])
def test_wrong_types(client: httpx.Client, body: dict[str, Any], where: str) -> None:
    err = assert_error(client.post("/v1/invocations", json=body), 422, "InvalidInput")
    assert any(where in d["loc"] for d in err["details"])


def test_unknown_field(client: httpx.Client) -> None:
    err = assert_error(client.post("/v1/invocations",
                                   json={"profile": PY, "code": "x", "memroy": 1}), 422)
    assert err["details"][0]["loc"] == ["memroy"]


def test_missing_profile(client: httpx.Client) -> None:
    err = assert_error(client.post("/v1/invocations", json={"code": "print(1)"}), 422)
    assert err["details"][0]["loc"] == ["profile"]


def test_unknown_profile_names_the_known_ones(client: httpx.Client) -> None:
    err = assert_error(client.post("/v1/invocations", json={"profile": "cobol", "code": "x"}),
                       422, "ProfileNotFound")
    assert PY in err["message"] and "bash" in err["message"]
    assert PY in err["details"]["known"]


def test_code_and_files_together_or_neither(client: httpx.Client) -> None:
    assert_error(client.post("/v1/invocations", json={"profile": PY}), 422)
    assert_error(client.post("/v1/invocations",
                             json={"profile": PY, "code": "x", "files": {"a.py": "x"}}), 422)


def test_code_over_the_size_limit_is_413(client: httpx.Client) -> None:
    r = client.post("/v1/invocations", json={"profile": PY, "code": "#" * (1024 * 1024 + 1)})
    assert_error(r, 413, "PayloadTooLarge")


def test_request_body_over_the_limit_is_413(client: httpx.Client) -> None:
    r = client.post("/v1/invocations", json={"profile": PY, "code": "x" * (9 * 1024 * 1024)})
    assert_error(r, 413, "PayloadTooLarge")


def test_too_many_files(client: httpx.Client) -> None:
    files = {f"f{i}.py": "" for i in range(65)}
    files["main.py"] = "print(1)"
    assert_error(client.post("/v1/invocations", json={"profile": PY, "files": files}), 413)


def test_too_large_file(client: httpx.Client) -> None:
    files = {"main.py": "print(1)", "data.txt": "x" * (1024 * 1024 + 10)}
    assert_error(client.post("/v1/invocations", json={"profile": PY, "files": files}), 413)


@pytest.mark.parametrize("name", ["../x.py", "/etc/passwd", "a/../../x", "a\x00b", "./a",
                                  "a//b", "..", "C:\\x", "a\\b", "input.json"])
def test_path_traversal_in_file_names(client: httpx.Client, name: str) -> None:
    files = {"main.py": "print(1)", name: "x"}
    assert_error(client.post("/v1/invocations", json={"profile": PY, "files": files}), 422)


def test_entrypoint_must_be_a_given_file(client: httpx.Client) -> None:
    r = client.post("/v1/invocations", json={"profile": PY, "files": {"a.py": "x"},
                                             "entrypoint": "b.py"})
    assert_error(r, 422)
    r = client.post("/v1/invocations", json={"profile": PY, "code": "x",
                                             "entrypoint": "../evil.py"})
    assert_error(r, 422)


def test_timeout_above_the_profile_maximum(client: httpx.Client) -> None:
    err = assert_error(client.post("/v1/invocations",
                                   json={"profile": PY, "code": "x", "timeout_s": 100000}), 422)
    assert "maximum" in err["message"]


@pytest.mark.parametrize("resources", [{"memory": 999999}, {"memory": "64Gi"}, {"cpu": 64},
                                       {"cpu": "90000m"}, {"memory": "lots"}, {"cpu": "1x"}])
def test_resources_above_the_profile_maximum_or_malformed(client: httpx.Client,
                                                          resources: dict[str, Any]) -> None:
    r = client.post("/v1/invocations", json={"profile": PY, "code": "x",
                                             "resources": resources})
    assert_error(r, 422)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "not a url", "http://", "//x/y",
                                 "http://user:pw@example.com/"])
def test_invalid_callback_url(client: httpx.Client, url: str) -> None:
    r = client.post("/v1/invocations", json={"profile": PY, "code": "x", "mode": "async",
                                             "callback": {"url": url}})
    assert_error(r, 422, "CallbackRefused")


@pytest.mark.parametrize("env", [{"JOBGATE_WORKSPACE": "/"}, {"1BAD": "x"}, {"A=B": "x"},
                                 {"A": "nul\x00"}])
def test_reserved_or_invalid_env(client: httpx.Client, env: dict[str, str]) -> None:
    assert_error(client.post("/v1/invocations", json={"profile": PY, "code": "x", "env": env}),
                 422)


def test_ttl_above_maximum_and_wait_on_async(client: httpx.Client) -> None:
    assert_error(client.post("/v1/invocations",
                             json={"profile": PY, "code": "x", "ttl_s": 10**9}), 422)
    assert_error(client.post("/v1/invocations",
                             json={"profile": PY, "code": "x", "mode": "async", "wait_s": 1}),
                 422)


def test_bad_query_parameters(client: httpx.Client) -> None:
    assert_error(client.get("/v1/invocations", params={"limit": "many"}), 422)
    assert_error(client.get("/v1/invocations", params={"limit": 0}), 422)
    assert_error(client.get("/v1/invocations", params={"cursor": "../../etc"}), 422)


def test_unknown_route_and_method(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.delete("/v1/invocations"), 405)


def test_nothing_ran_for_refused_requests(client: httpx.Client) -> None:
    before = client.get("/metrics").text.count("jobgate_invocations_accepted_total{")
    client.post("/v1/invocations", json={"profile": PY, "files": {"../x": "y"}})
    after_text = client.get("/metrics").text
    assert after_text.count("jobgate_invocations_accepted_total{") == before
    assert "Internal" not in after_text
