"""Per-tenant limits as configured: defaults, overrides, and every mistake refused at start
with its place named (a typo must never mean "unlimited")."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.tenants.limits import GiB, LimitsTable, TenantLimits
from tests.support import GatewayProcess


def test_without_configuration_every_tenant_has_the_defaults() -> None:
    table = LimitsTable.load(None, None)
    assert table.of("anyone") == TenantLimits()
    assert table.of("anyone").max_queued == 1000
    assert table.of("anyone").max_stored_bytes == 10 * GiB
    assert table.configured == []


def test_a_tenant_table_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "limits.toml"
    path.write_text("[defaults]\nmax_running = 16\nrate_per_s = 20\n\n"
                    "[tenants.team-a]\nmax_running = 4\nweight = 2\n")
    table = LimitsTable.load(None, path)
    a, other = table.of("team-a"), table.of("team-b")
    assert (a.max_running, a.weight, a.rate_per_s, a.max_queued) == (4, 2, 20, 1000)
    assert (other.max_running, other.weight, other.rate_per_s) == (16, 1, 20)
    assert table.configured == ["team-a"]


def test_inline_json_is_the_same_document() -> None:
    table = LimitsTable.load('{"tenants": {"t1": {"max_queued": 0}}}', None)
    assert table.of("t1").max_queued == 0 and table.of("t2").max_queued == 1000


@pytest.mark.parametrize(("inline", "named"), [
    ('{"defaults": {"max_runing": 3}}', "defaults.max_runing"),
    ('{"tenants": {"t1": {"weight": 0}}}', "tenants.t1.weight"),
    ('{"tenants": {"Bad Name": {}}}', "Bad Name"),
    ('{"tenant": {}}', "tenant"),
    ("[1, 2]", "table/object"),
    ("{not json", "JOBGATE_TENANT_LIMITS"),
])
def test_mistakes_are_refused_naming_where(inline: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        LimitsTable.load(inline, None)


def test_a_gateway_with_a_bad_limits_file_refuses_to_start(tmp_path: Path) -> None:
    bad = tmp_path / "limits.toml"
    bad.write_text("[defaults]\nmax_queued = -1\n")
    gateway = GatewayProcess(tmp_path / "data", env={"JOBGATE_TENANT_LIMITS_FILE": str(bad)})
    with pytest.raises(RuntimeError, match=r"defaults\.max_queued"):
        gateway.start(timeout_s=30)
