"""One way to read and write under a storage root that is a local folder or a pyarrow URI.

Every stage reads and writes through these helpers, so a job runs unchanged against a local disk,
NFS, or ``s3://`` / ``gs://`` storage.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` paths (s3, gs, hdfs, file ...)."""
    return "://" in str(path)


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Return the filesystem and the path inside it (local paths become absolute)."""
    path = str(path)
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def join(root: str | os.PathLike, *parts: str) -> str:
    """Join path parts under a root that may be a URI."""
    root = str(root)
    if is_uri(root):
        return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(root, *parts))


def exists(path: str | os.PathLike) -> bool:
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def makedirs(path: str | os.PathLike) -> None:
    fs, inner = resolve(path)
    fs.create_dir(inner, recursive=True)


def read_bytes(path: str | os.PathLike) -> bytes:
    fs, inner = resolve(path)
    with fs.open_input_file(inner) as f:
        return f.read()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a whole file; local writes go through a temporary name and a rename (atomic)."""
    fs, inner = resolve(path)
    parent = inner.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, inner)
    else:  # object stores make a PUT visible whole or not at all
        with fs.open_output_stream(inner) as f:
            f.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(read_bytes(path))


def write_parquet(table: pa.Table, path: str | os.PathLike) -> None:
    """Write one Parquet file atomically (a crash never leaves half a file under its name)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes(path, sink.getvalue().to_pybytes())


def list_files(directory: str | os.PathLike, suffix: str = "") -> list[str]:
    """Files directly under ``directory`` (as full paths/URIs), skipping hidden and ``_`` files."""
    fs, inner = resolve(directory)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        return []
    selector = pafs.FileSelector(inner, recursive=False)
    out = []
    for item in fs.get_file_info(selector):
        name = item.base_name
        if item.type != pafs.FileType.File or name.startswith((".", "_")):
            continue
        if name.endswith(suffix):
            out.append(join(str(directory), name))
    return sorted(out)


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """Read one Parquet file or a folder of Parquet parts, naming the path on failure."""
    fs, inner = resolve(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path}: no such file or folder")
    if info.type == pafs.FileType.Directory:
        parts = list_files(path, ".parquet")
        if not parts:
            raise FileNotFoundError(f"{path}: folder holds no .parquet files")
        tables = [read_parquet(p, columns) for p in parts]
        return pa.concat_tables(tables, promote_options="default")
    try:
        return pq.read_table(inner, filesystem=fs, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: cannot read as Parquet ({exc})") from exc
