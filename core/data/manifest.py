"""Dataset manifests: one Parquet table, one row per image (id, path, label or labels, split).

Every later stage reads a manifest, never a dataset layout, so a new layout needs only a reader
here. Ids come from the image's relative path, so they stay the same across runs and machines.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from core import storage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_NAMES = ("train", "val", "test")
REQUIRED_COLUMNS = ("id", "path", "split")


class ManifestError(ValueError):
    """A manifest or source table that cannot be used; the message names the file and field."""


def assign_split(image_id: str, fractions: Sequence[float]) -> str:
    """Deterministic split from a hash of the id: the same image always lands in the same split."""
    bucket = int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    edge = 0.0
    for name, frac in zip(SPLIT_NAMES, fractions, strict=True):
        edge += frac
        if bucket < edge:
            return name
    return SPLIT_NAMES[len(fractions) - 1]


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ManifestError(
            f"split fractions must be 3 non-negative numbers summing to 1, got {fractions}"
        )


def manifest_from_image_folder(
    root: str, split_fractions: Sequence[float] = (0.6, 0.2, 0.2)
) -> pa.Table:
    """One folder per class (``root/<class>/<image>``), or ``root/<split>/<class>/<image>``.

    With top-level folders named train/val/test, those are the splits; otherwise each image's split
    comes from a hash of its id using ``split_fractions`` (train, val, test).
    """
    _check_fractions(split_fractions)
    fs, inner = storage.resolve(root)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        raise ManifestError(f"{root}: not a folder")
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    rows: dict[str, list] = {"id": [], "path": [], "label": [], "split": []}
    top = {i.path[len(inner) :].strip("/").split("/")[0] for i in infos}
    by_split_folder = bool(top) and top <= set(SPLIT_NAMES)
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pafs.FileType.File or not info.path.lower().endswith(IMAGE_SUFFIXES):
            continue
        rel = PurePosixPath(info.path[len(inner) :].strip("/"))
        if any(part.startswith(".") for part in rel.parts):
            continue
        depth = 3 if by_split_folder else 2
        if len(rel.parts) != depth:
            raise ManifestError(
                f"{root}: image {rel} is not inside a class folder "
                f"(expected {'<split>/' if by_split_folder else ''}<class>/<image>)"
            )
        image_id = str(rel)
        rows["id"].append(image_id)
        rows["path"].append(storage.join(root, str(rel)))
        rows["label"].append(rel.parts[-2])
        rows["split"].append(
            rel.parts[0] if by_split_folder else assign_split(image_id, split_fractions)
        )
    if not rows["id"]:
        raise ManifestError(f"{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return pa.table(rows)


def _read_source_table(path: str) -> pa.Table:
    lower = path.lower()
    fs, inner = storage.resolve(path)
    if lower.endswith(".parquet") or fs.get_file_info(inner).type == pafs.FileType.Directory:
        return storage.read_parquet(path)
    if lower.endswith((".csv", ".tsv")):
        data = storage.read_bytes(path)
        options = pacsv.ParseOptions(delimiter="\t" if lower.endswith(".tsv") else ",")
        try:
            return pacsv.read_csv(pa.BufferReader(data), parse_options=options)
        except pa.ArrowInvalid as exc:
            raise ManifestError(f"{path}: cannot parse as CSV ({exc})") from None
    raise ManifestError(f"{path}: expected a .csv, .tsv or .parquet file")


def manifest_from_table(
    path: str,
    path_column: str = "path",
    label_column: str | None = "label",
    labels_column: str | None = None,
    split_column: str | None = None,
    labels_separator: str = "|",
    base_dir: str | None = None,
    split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
) -> pa.Table:
    """A CSV or Parquet file with a path column and a label (single) or labels (multi) column.

    Relative image paths are taken relative to ``base_dir`` (default: the table's folder); ids are
    those relative paths. A string labels column is split on ``labels_separator``. Columns other
    than the ones named are kept (e.g. a reference description column).
    """
    _check_fractions(split_fractions)
    table = _read_source_table(path)
    named = {"path_column": path_column, "label_column": label_column}
    named |= {"labels_column": labels_column, "split_column": split_column}
    for arg, column in named.items():
        if column and column not in table.column_names:
            raise ManifestError(
                f"{path}: no column {column!r} ({arg}); columns are {', '.join(table.column_names)}"
            )
    if not label_column and not labels_column:
        raise ManifestError(f"{path}: name a label_column or a labels_column")
    base = base_dir if base_dir is not None else storage.join(path, "..")
    if not storage.is_uri(base):
        base = os.path.normpath(base)
    raw_paths = table.column(path_column).to_pylist()
    ids, paths = [], []
    for i, p in enumerate(raw_paths):
        if p is None or str(p).strip() == "":
            raise ManifestError(f"{path}: row {i} has an empty {path_column!r}")
        p = str(p)
        if storage.is_uri(p) or os.path.isabs(p):
            ids.append(p.split("://", 1)[-1].lstrip("/"))
            paths.append(p)
        else:
            ids.append(str(PurePosixPath(p)))
            paths.append(storage.join(base, p))
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise ManifestError(f"{path}: image {dup!r} is listed more than once")
    out: dict[str, pa.Array | list] = {"id": ids, "path": paths}
    if label_column:
        labels = table.column(label_column).cast(pa.string()).to_pylist()
        if any(v is None or v == "" for v in labels):
            row = next(i for i, v in enumerate(labels) if v is None or v == "")
            raise ManifestError(f"{path}: row {row} has an empty {label_column!r}")
        out["label"] = labels
    if labels_column:
        col = table.column(labels_column)
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            # A null list or a null label stays null, so the check below names it (str() would
            # turn it into a label called 'None').
            multi = [
                None if v is None else [None if x is None else str(x) for x in v]
                for v in col.to_pylist()
            ]
        else:
            multi = [
                [x.strip() for x in str(v).split(labels_separator) if x.strip()] if v else []
                for v in col.to_pylist()
            ]
        out["labels"] = pa.array(multi, type=pa.list_(pa.string()))
    if split_column:
        splits = table.column(split_column).cast(pa.string()).to_pylist()
        bad = sorted({s for s in splits if s not in SPLIT_NAMES}, key=str)
        if bad:
            raise ManifestError(
                f"{path}: column {split_column!r} has {bad[:3]}; allowed: {', '.join(SPLIT_NAMES)}"
            )
        out["split"] = splits
    else:
        out["split"] = [assign_split(i, split_fractions) for i in ids]
    used = {path_column, label_column, labels_column, split_column} - {None}
    for name in table.column_names:
        if name not in used and name not in out:
            out[name] = table.column(name)
    result = pa.table(out)
    _check_not_empty(result, path)
    return result


def _blank(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """True where a value is null or (for text) empty or only whitespace."""
    nulls = pc.is_null(values)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return nulls
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(values), ""), False)
    return pc.or_(nulls, empty)


def _empty_label_rows(table: pa.Table, column: str) -> list[int]:
    """Rows whose ``label`` is missing, or whose ``labels`` list is null or holds a missing
    label (an empty list is fine: an image with none of the labels)."""
    values = table.column(column)
    if column == "label":
        return pc.indices_nonzero(_blank(values)).to_pylist()
    values = values.combine_chunks()
    if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
        return pc.indices_nonzero(_blank(values)).to_pylist()
    rows = set(pc.indices_nonzero(pc.is_null(values)).to_pylist())
    flat = pc.list_flatten(values)
    parents = pc.list_parent_indices(values)
    bad = pc.indices_nonzero(_blank(flat))
    rows.update(pc.take(parents, bad).to_pylist())
    return sorted(rows)


def _check_not_empty(table: pa.Table, source: str) -> None:
    """Null ids, paths or labels are errors (training would turn a null label into a class
    named 'None'); the message names the column, how many rows, and the first few ids."""
    id_rows = pc.indices_nonzero(_blank(table.column("id"))).to_pylist()
    if id_rows:
        raise ManifestError(
            f"{source}: column 'id' has {len(id_rows)} null or empty value(s) "
            f"(rows {', '.join(map(str, id_rows[:5]))}{', ...' if len(id_rows) > 5 else ''})"
        )
    ids = table.column("id")
    columns = ["path", *(c for c in ("label", "labels") if c in table.column_names)]
    for column in columns:
        if column == "path":
            rows = pc.indices_nonzero(_blank(table.column(column))).to_pylist()
        else:
            rows = _empty_label_rows(table, column)
        if rows:
            first = ", ".join(repr(ids[i].as_py()) for i in rows[:5])
            more = ", ..." if len(rows) > 5 else ""
            what = (
                f"has {len(rows)} row(s) that are null or hold a null or empty label"
                if column == "labels"
                else f"has {len(rows)} null or empty value(s)"
            )
            raise ManifestError(f"{source}: column {column!r} {what} (ids {first}{more})")


def validate_manifest(table: pa.Table, source: str = "manifest") -> pa.Table:
    """Check the columns every stage relies on; raise naming the file and the field."""
    for name in REQUIRED_COLUMNS:
        if name not in table.column_names:
            raise ManifestError(f"{source}: missing column {name!r}")
    if "label" not in table.column_names and "labels" not in table.column_names:
        raise ManifestError(f"{source}: needs a 'label' or a 'labels' column")
    _check_not_empty(table, source)
    ids = table.column("id")
    if pc.count_distinct(ids).as_py() != len(table):
        raise ManifestError(f"{source}: column 'id' has duplicates")
    splits = set(table.column("split").cast(pa.string()).to_pylist())
    if not splits <= set(SPLIT_NAMES):
        raise ManifestError(
            f"{source}: column 'split' has {sorted(splits - set(SPLIT_NAMES), key=str)}; "
            f"allowed: {', '.join(SPLIT_NAMES)}"
        )
    return table


def write_manifest(table: pa.Table, dest: str) -> str:
    validate_manifest(table, dest)
    storage.write_parquet(table, dest)
    return dest


def read_manifest(path: str, splits: Sequence[str] = ()) -> pa.Table:
    """Read and check a manifest; keep only ``splits`` when given."""
    table = validate_manifest(storage.read_parquet(path), path)
    if splits:
        unknown = sorted(set(splits) - set(SPLIT_NAMES))
        if unknown:
            raise ManifestError(f"splits: {unknown} not allowed; use {', '.join(SPLIT_NAMES)}")
        table = table.filter(pc.is_in(table.column("split"), pa.array(list(splits))))
    return table
