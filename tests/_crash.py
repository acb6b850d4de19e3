"""What a crash leaves behind, made on purpose."""

from __future__ import annotations

from pathlib import Path


def truncate(path: Path) -> None:
    """Cut a file to its first third, as a process killed while writing it would leave it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
