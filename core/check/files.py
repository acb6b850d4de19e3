"""Whether the files a preset names exist (local paths and ``s3://``-style URIs), without reading
them."""

from __future__ import annotations

from core import storage


def exists(path: str) -> bool | None:
    """True / False, or None when a remote store cannot be reached from here (no credentials,
    no network): the check then says so instead of calling the file missing."""
    if not path:
        return False
    try:
        return storage.exists(path)
    except (OSError, ValueError) as exc:
        if storage.is_uri(path):
            return None
        raise FileNotFoundError(f"{path}: {exc}") from exc
