"""The examples in the docs, read as printed, so that tests run exactly what a user copies."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import ROOT

FENCE = re.compile(r"^```(\w+)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)


def code_block(doc: str, language: str, containing: str) -> str:
    """The one fenced ``language`` block of docs/``doc`` whose text contains
    ``containing``."""
    text = (ROOT / "docs" / doc).read_text()
    found = [body for lang, body in FENCE.findall(text)
             if lang == language and containing in body]
    assert len(found) == 1, f"{doc}: {len(found)} {language} blocks with {containing!r}"
    return found[0]


def write_block(path: Path, doc: str, language: str, containing: str) -> Path:
    path.write_text(code_block(doc, language, containing))
    return path
