"""One rule for the relative paths the gateway is given (file names, artifact names,
storage keys): they must stay below the place they are joined to."""

from __future__ import annotations


def path_problem(path: str) -> str | None:
    """Why ``path`` could leave the directory it is joined to, or None when it cannot:
    empty, a NUL byte, absolute, or an empty, '.' or '..' segment."""
    if not path:
        return "is empty"
    if "\x00" in path:
        return "contains a NUL byte"
    if path.startswith("/"):
        return "is an absolute path"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "has an empty, '.' or '..' path segment"
    return None
