"""The local store's kept directory listings (gateway.storage.listings): a page is the
same as a fresh sorted listing would give, whatever changed in between and however soon."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.storage.listings import DirectoryListings

AN_HOUR_AGO_NS = 3600 * 10**9


def _age(path: Path) -> None:
    """Make the directory look last changed an hour ago: its listing is then kept."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - AN_HOUR_AGO_NS))


def _aged_directory(path: Path, names: list[str]) -> Path:
    """``path`` made with an entry for each of ``names``, aged: its listing is kept."""
    path.mkdir(exist_ok=True)
    for name in names:
        (path / name).mkdir()
    _age(path)
    return path


def _expected(path: Path, start_after: str | None, limit: int) -> list[str]:
    return [n for n in sorted(os.listdir(path)) if not start_after or n > start_after][:limit]


def test_pages_match_a_sorted_listing(tmp_path: Path) -> None:
    for i in range(250):
        (tmp_path / f"inv_{i * 7919 % 1000:04d}").mkdir()
    listings = DirectoryListings()
    for aged in (False, True):
        if aged:
            _age(tmp_path)
        cursor: str | None = None
        seen: list[str] = []
        while page := listings.children(str(tmp_path), start_after=cursor, limit=20):
            assert page == _expected(tmp_path, cursor, 20)
            seen += page
            cursor = page[-1]
        assert seen == sorted(os.listdir(tmp_path))
    assert listings.held_names == 250  # the aged directory's listing is kept
    assert listings.children(str(tmp_path / "missing"), start_after=None, limit=5) == []
    (tmp_path / "file").write_bytes(b"")
    assert listings.children(str(tmp_path / "file"), start_after=None, limit=5) == []


def test_a_change_right_after_a_listing_is_seen(tmp_path: Path) -> None:
    """The mtime's clock can be coarse: a change in the same tick as the listing leaves it
    as it was, and a listing kept by mtime alone would hide the change. So a listing taken
    within that window is not kept (held_names stays 0). Kernels from 6.13 stamp a change
    finely once the mtime has been read, on ext4, xfs, btrfs and tmpfs, and there the loop
    would pass without the rule; the held_names check would not."""
    for i in range(5):
        (tmp_path / f"base{i}").mkdir()
    listings = DirectoryListings()
    path = str(tmp_path)
    for i in range(300):
        name = f"inv_{i:04d}"
        listings.children(path, start_after=None, limit=1000)
        assert listings.held_names == 0  # just changed: too fresh to keep
        (tmp_path / name).mkdir()
        assert name in listings.children(path, start_after=None, limit=1000)
        (tmp_path / name).rmdir()
        assert name not in listings.children(path, start_after=None, limit=1000)


def test_a_kept_listing_follows_later_changes(tmp_path: Path) -> None:
    _aged_directory(tmp_path, [f"b{i}" for i in range(10)])
    listings = DirectoryListings()
    assert listings.children(str(tmp_path), start_after=None, limit=3) == ["b0", "b1", "b2"]
    assert listings.held_names == 10
    (tmp_path / "a").mkdir()  # another process may have written it: only the mtime tells
    (tmp_path / "b1").rmdir()
    assert listings.children(str(tmp_path), start_after=None, limit=3) == ["a", "b0", "b2"]
    assert listings.children(str(tmp_path), start_after="b0", limit=2) == ["b2", "b3"]


def test_what_is_kept_is_bounded(tmp_path: Path) -> None:
    listings = DirectoryListings(max_names=25)
    for d in range(4):
        sub = _aged_directory(tmp_path / f"d{d}", [f"n{i}" for i in range(10)])
        assert listings.children(str(sub), start_after="n4", limit=2) == ["n5", "n6"]
        assert listings.held_names <= 25
    big = _aged_directory(tmp_path / "big", [f"n{i:02d}" for i in range(30)])
    assert listings.children(str(big), start_after="n27", limit=5) == ["n28", "n29"]
    assert listings.held_names <= 25
