"""One way to read and write under a storage root that is a local folder or a pyarrow URI.

Every stage reads and writes through these helpers, so a job runs unchanged against a local disk,
NFS, or ``s3://`` / ``gs://`` storage.
"""

from __future__ import annotations

import json
import math
import os
import re
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


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by ``None``.

    Python's ``json`` writes NaN and Infinity as bare words that strict JSON readers (browsers,
    ``jq``, most other languages) reject; ``null`` is what "no value" means in JSON.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return json_safe(obj.item())
    return obj


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``obj``: NaN and infinities become ``null`` (see :func:`json_safe`)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write strict JSON (NaN and infinities as ``null``), atomically for local paths."""
    write_bytes(path, (dumps_json(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(read_bytes(path))


def torch_load_failure(exc: BaseException) -> tuple[bool, str]:
    """(refused, one-line reason) for an error of ``torch.load(..., weights_only=True)``.

    ``refused`` is True when the file asks to run code (a pickled global that is not a tensor
    type), False when it is merely not a torch file or damaged. Kept here, free of torch and
    model imports, for every reader of checkpoints.
    """
    text = str(exc)
    name = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if name:
        return True, f"it would call {name.group(1)}"
    refused = "Unsupported global" in text
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = found.group(1) if found else (text.strip().splitlines() or [type(exc).__name__])[0]
    reason = " ".join(reason.split())
    return refused, reason if len(reason) <= 200 else reason[:197] + "..."


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


def list_dirs(directory: str | os.PathLike, prefix: str = "") -> list[str]:
    """Names (not paths) of the folders directly under ``directory`` starting with ``prefix``.

    On object stores a "folder" is a key prefix; pyarrow lists those as directories too.
    """
    fs, inner = resolve(directory)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return []
    items = fs.get_file_info(pafs.FileSelector(inner, recursive=False))
    return sorted(
        item.base_name
        for item in items
        if item.type == pafs.FileType.Directory and item.base_name.startswith(prefix)
    )


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a folder and everything under it (a key prefix on object stores)."""
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        return
    fs.delete_dir(inner)


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
