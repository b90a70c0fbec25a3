"""Invocation ids: ``inv_`` + 20 lowercase base32 characters.

The first 10 characters encode (2^50 - milliseconds since the epoch), so ids sort
newest-first in plain lexicographic order, which is the order S3 and a directory
listing give back: listing the newest invocations needs no index.
"""

from __future__ import annotations

import os
import re
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lowercase
_TIME_SPAN = 1 << 50
ID_PATTERN = re.compile(r"^inv_[0-9a-hjkmnp-tv-z]{20}$")


def _b32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_invocation_id(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(7), "big") >> 6  # 50 bits
    return "inv_" + _b32(_TIME_SPAN - 1 - ms, 10) + _b32(rand, 10)


def is_invocation_id(value: str) -> bool:
    return bool(ID_PATTERN.match(value))


def new_token(nbytes: int = 24) -> str:
    return os.urandom(nbytes).hex()
