"""Docs that users read stay in step with the code."""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.config.settings import variables
from tests.support import KEY_A, ROOT, GatewayProcess


def test_every_setting_is_documented() -> None:
    """Every variable the settings read, the groups' and the older names included."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in variables() if f"`{name}`" not in text]
    assert not missing, f"undocumented settings: {missing}"


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text()[:1200]
    assert "make run" in head and "make test" in head


def test_the_seccomp_table_is_the_filter() -> None:
    """docs/security.md shows the filter as it is built, reason by reason."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("seccomp_doc",
                                                  ROOT / "runtimes" / "seccomp_filter.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    assert module.markdown().strip() in (ROOT / "docs" / "security.md").read_text()


def test_every_reason_is_documented() -> None:
    from gateway.models import Reason

    text = (ROOT / "docs" / "api.md").read_text()
    assert not [r.value for r in Reason if f"| `{r.value}` |" not in text]


# -- docs/client.md: its examples run as printed against a real gateway ------------------

CLIENT_DOC = ROOT / "docs" / "client.md"


def _client_examples(info: str) -> list[str]:
    import re

    text = CLIENT_DOC.read_text()
    return [block for tag, block in re.findall(r"```(python[^\n]*)\n(.*?)```", text, re.S)
            if tag.strip() == info]


def _run_example(gateway: GatewayProcess, block: str, cwd: Path) -> str:
    import os
    import subprocess

    env = {**os.environ, "JOBGATE_URL": gateway.url, "JOBGATE_API_KEY": KEY_A}
    p = subprocess.run([sys.executable, "-c", block], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, f"this example of docs/client.md failed:\n{block}\n{p.stderr}"
    return p.stdout


def test_the_client_doc_examples_run_as_printed(gateway: GatewayProcess,
                                                tmp_path: Path) -> None:
    blocks = _client_examples("python")
    assert len(blocks) >= 8
    for i, block in enumerate(blocks):
        cwd = tmp_path / f"example-{i}"
        cwd.mkdir()
        _run_example(gateway, block, cwd)


def test_the_client_doc_live_logs_example(gateway: GatewayProcess, tmp_path: Path) -> None:
    [block] = _client_examples("python live-logs")
    out = _run_example(gateway, block, tmp_path)
    assert "line 1\nline 2\nline 3\nended: succeeded 0" in out


def test_the_client_doc_is_linked() -> None:
    assert "(docs/client.md)" in (ROOT / "README.md").read_text()
    assert "(client.md)" in (ROOT / "docs" / "api.md").read_text()


# -- README.md: the front doors, run as printed against a real gateway -------------------

def _readme_front_doors() -> list[tuple[str, str]]:
    import re

    text = (ROOT / "README.md").read_text()
    section = text.split("<!-- front-doors:begin -->", 1)[1].split(
        "<!-- front-doors:end -->", 1)[0]
    return re.findall(r"```(sh|python)\n(.*?)```", section, re.S)


def test_the_readme_front_doors_run_as_printed(gateway: GatewayProcess,
                                               tmp_path: Path) -> None:
    import os
    import subprocess

    blocks = _readme_front_doors()
    assert [lang for lang, _ in blocks] == ["sh", "sh", "sh", "python"]
    env = {**os.environ, "JOBGATE_URL": gateway.url, "JOBGATE_API_KEY": KEY_A}
    outputs = []
    for lang, block in blocks:
        argv = ["bash", "-euo", "pipefail", "-c", block] if lang == "sh" else \
            [sys.executable, "-c", block]
        p = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, f"this README example failed:\n{block}\n{p.stderr}"
        outputs.append(p.stdout)
    sync, batch, live, mcp = outputs
    assert '"stdout":"42\\n"' in sync.replace(" ", "")
    assert batch.count('"status_code":202') == 2
    assert "event: output" in live and "start" in live and "done" in live
    assert live.rstrip().splitlines()[-1].startswith("data:") and "event: end" in live
    assert mcp == "42\n"
