"""Where local workers make their workspaces: a directory nobody else can swap out."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from gateway.errors import ConfigError

TEMPORARY_ROOT_PREFIX = "jobgate-workspaces-"


def _traversable_by_others(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents] if p.exists())


_SAFE_DATA_DIR = ("Set JOBGATE_DATA_DIR to a directory whose parents only this user (or "
                  "root) can change, such as /var/lib/jobgate.")


def check_safe_ancestors(path: Path) -> None:
    """Refuse a directory another user could swap out from under us: every directory
    leading to it must be ours (or root's), and not writable by others unless sticky
    (like /tmp, where nobody can rename what is not theirs)."""
    me = os.geteuid()
    for parent in [path, *path.parents]:
        try:
            st = os.lstat(parent)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise ConfigError(f"{parent} is a symbolic link: give the real path")
        if st.st_uid not in (0, me):
            raise ConfigError(f"{parent} belongs to uid {st.st_uid}: another user could "
                              f"replace the directories below it. {_SAFE_DATA_DIR}")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise ConfigError(f"{parent} is writable by others: another user could "
                              f"replace the directories below it. {_SAFE_DATA_DIR}")


def workspace_root(data_dir: Path, own_uids: bool, sandboxed: bool) -> Path:
    """Where workers make their workspaces. With the sandbox, the code never walks the
    host path (its workspace is bound at /workspace), so it stays inside the data dir,
    private. Without it, a worker running as its own uid must reach its directory: when
    the data dir sits below a private directory (say /root), a directory of our own
    with a random name is made under the system temp dir (mkdtemp: never an existing
    path someone planted)."""
    preferred = data_dir.resolve() / "workspaces"
    if sandboxed or not own_uids or _traversable_by_others(preferred.parent):
        return preferred
    return Path(tempfile.mkdtemp(prefix=TEMPORARY_ROOT_PREFIX))


def prepare_workspace_root(root: Path, mode: int) -> None:
    """An empty directory of ours at ``root``, made without following a planted link.
    What is there from an earlier run belongs to workers that are gone."""
    root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_safe_ancestors(root.parent)
    try:
        st: os.stat_result | None = os.lstat(root)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        root.unlink()  # a link or a file where our directory belongs
    elif st is not None:
        shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(root, 0o700)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise ConfigError(f"{root} is not a directory of ours")
    os.chmod(root, mode)
