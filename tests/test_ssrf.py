"""The callback SSRF policy on IPv6 addresses that carry an IPv4 address: each is judged by
the IPv4 address it carries, every form of it. Through ``CallbackPolicy.resolve()`` on
literal URLs (no DNS, nothing dialled), and through the API."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.callbacks.ssrf import CallbackPolicy, ResolvedTarget
from gateway.errors import CallbackRefused
from tests.support import CallbackReceiver, GatewayProcess, invoke, wait_until

INTERNAL_V4 = ["127.0.0.1", "10.0.0.1", "169.254.169.254", "192.168.1.1", "172.16.0.1",
               "100.64.0.1", "0.0.0.0"]
GLOBAL_V4 = "8.8.8.8"  # judged only, never dialled
OTHER_GLOBAL_V4 = "1.1.1.1"


def hex32(v4: str) -> str:
    n = int(ipaddress.IPv4Address(v4))
    return f"{n >> 16:x}:{n & 0xFFFF:x}"


def teredo(server: str, client: str) -> str:
    """2001:0:SERVER:flags:port:CLIENT, the client address and port obfuscated (RFC 4380)."""
    obfuscated = int(ipaddress.IPv4Address(client)) ^ 0xFFFF_FFFF
    return f"2001:0:{hex32(server)}:8000:63bf:{obfuscated >> 16:x}:{obfuscated & 0xFFFF:x}"


# Every way an IPv6 address carries an IPv4 one: name -> literal for a given IPv4 address.
FORMS: dict[str, Callable[[str], str]] = {
    "mapped": lambda v4: f"::ffff:{v4}",
    "mapped-hex": lambda v4: f"::ffff:{hex32(v4)}",
    "mapped-long": lambda v4: f"0:0:0:0:0:ffff:{hex32(v4)}",
    "compatible": lambda v4: f"::{v4}",
    "translated": lambda v4: f"::ffff:0:{v4}",
    "nat64": lambda v4: f"64:ff9b::{v4}",
    "nat64-hex": lambda v4: f"64:ff9b::{hex32(v4)}",
    "nat64-local-use": lambda v4: f"64:ff9b:1::{hex32(v4)}",
    "6to4": lambda v4: f"2002:{hex32(v4)}::1",
    "teredo-server": lambda v4: teredo(v4, OTHER_GLOBAL_V4),
    "teredo-client": lambda v4: teredo(OTHER_GLOBAL_V4, v4),
    "isatap": lambda v4: f"2001:4860:1::5efe:{v4}",
    "isatap-global-bit": lambda v4: f"2001:4860:1::200:5efe:{hex32(v4)}",
    "isatap-in-6to4": lambda v4: f"2002:{hex32(OTHER_GLOBAL_V4)}:1:0:5efe:{v4}",
}


def resolve(url: str, allow: list[str] | None = None) -> ResolvedTarget:
    return asyncio.run(CallbackPolicy(allow or []).resolve(url))


def refused(url: str, allow: list[str] | None = None) -> CallbackRefused:
    with pytest.raises(CallbackRefused) as info:
        resolve(url, allow)
    return info.value


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("v4", INTERNAL_V4)
def test_every_form_of_an_internal_ipv4_address_is_refused(v4: str, form: str) -> None:
    literal = FORMS[form](v4)
    err = refused(f"http://[{literal}]:80/hook")
    assert err.details["address"] == str(ipaddress.ip_address(literal))
    if ipaddress.ip_address(literal) != ipaddress.ip_address("::"):  # ::0.0.0.0 is ::
        assert err.details["carried_ipv4"] == v4, err.message
        assert f"carries {v4}" in err.message


@pytest.mark.parametrize("form", FORMS)
def test_every_form_of_a_global_ipv4_address_is_allowed(form: str) -> None:
    literal = FORMS[form](GLOBAL_V4)
    target = resolve(f"http://[{literal}]:80/hook")
    assert ipaddress.ip_address(target.address) == ipaddress.ip_address(literal)


@pytest.mark.parametrize("literal", ["::ffff:127.0.0.1", "::ffff:7f00:1",
                                     "0:0:0:0:0:ffff:7f00:1", "::ffff:127.9.8.7"])
def test_allow_listing_loopback_allows_its_mapped_forms(literal: str) -> None:
    refused(f"http://[{literal}]/")
    assert resolve(f"http://[{literal}]:81/", ["127.0.0.0/8"]).port == 81
    # The allow list is judged against the carried address: no wider than listed.
    refused("http://[::ffff:10.0.0.1]/", ["127.0.0.0/8"])


def test_an_ipv6_allow_list_entry_covers_the_ipv6_form_itself() -> None:
    refused("http://[64:ff9b::a00:1]/")
    assert resolve("http://[64:ff9b::a00:1]/", ["64:ff9b::/96"]).address == "64:ff9b::a00:1"


@pytest.mark.parametrize("literal", [
    "::", "::1", "fe80::1", "fe80::1%25eth0", "fec0::1", "feff::1", "fc00::1", "fd12:3456::1",
    "ff02::1", "ff0e::1", "2001:db8::1", "3fff::1", "100::1", "2001:2::1", "2001:10::1",
    "5f00::1", "::2", "fe80::5efe:8.8.8.8",  # ISATAP under a link-local prefix
])
def test_non_public_ipv6_addresses_are_refused(literal: str) -> None:
    refused(f"http://[{literal}]/")


@pytest.mark.parametrize("literal", ["2606:4700:4700::1111", "2001:4860:4860::8888"])
def test_global_ipv6_addresses_are_allowed(literal: str) -> None:
    assert resolve(f"https://[{literal}]/").address == literal


# -- through the API -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def closed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with an empty callback allow list."""
    gw = GatewayProcess(tmp_path_factory.mktemp("ssrf") / "data",
                        env={"JOBGATE_CALLBACK_ALLOW": ""}).start()
    yield gw
    gw.stop()


@pytest.mark.parametrize(("url", "carried"), [
    ("http://[64:ff9b::7f00:1]:80/", "127.0.0.1"),
    ("http://[::ffff:0:a00:1]/hook", "10.0.0.1"),
    ("http://[::a9fe:a9fe]/latest/meta-data/", "169.254.169.254"),
    ("http://[2002:c0a8:101::1]/x", "192.168.1.1"),
    (f"http://[{teredo(OTHER_GLOBAL_V4, '172.16.0.1')}]/x", "172.16.0.1"),
])
def test_the_api_refuses_ipv6_forms_of_internal_addresses(closed_gateway: GatewayProcess,
                                                          url: str, carried: str) -> None:
    with closed_gateway.client() as c:
        r = invoke(c, profile="python3.11", code="print(1)", mode="async",
                   callback={"url": url})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "CallbackRefused"
    assert err["details"]["carried_ipv4"] == carried
    assert "JOBGATE_CALLBACK_ALLOW" in err["message"]


@pytest.mark.parametrize("url", ["http://[fec0::1]/x", "http://[2001:db8::1]/x",
                                 "http://[ff0e::1]/x", "http://[::]/x"])
def test_the_api_refuses_non_public_ipv6(closed_gateway: GatewayProcess, url: str) -> None:
    with closed_gateway.client() as c:
        r = invoke(c, profile="python3.11", code="print(1)", mode="async",
                   callback={"url": url})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "CallbackRefused"


def test_the_api_delivers_to_the_mapped_form_of_an_allowed_loopback(tmp_path: Path) -> None:
    """127.0.0.0/8 allow-listed (the test default): ::ffff:127.0.0.1 is 127.0.0.1."""
    with CallbackReceiver() as receiver:
        url = receiver.url.replace("127.0.0.1", "[::ffff:127.0.0.1]")
        gw = GatewayProcess(tmp_path / "data").start()
        try:
            with gw.client() as c:
                r = invoke(c, profile="python3.11", code="print(1)", mode="async",
                           callback={"url": url})
                assert r.status_code == 202, r.text
                inv_id = r.json()["id"]
                [cb] = receiver.wait_for(lambda got: len(got) >= 1)
                assert cb.json()["id"] == inv_id
                port = receiver.server.server_address[1]
                assert cb.headers["host"] == f"[::ffff:127.0.0.1]:{port}"  # bracketed
                wait_until(lambda: c.get(f"/v1/invocations/{inv_id}").json()
                           ["callback"]["status"] == "delivered")
        finally:
            gw.stop()

