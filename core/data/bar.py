"""BAR, Biased Action Recognition (Nam et al., "Learning from Failure", NeurIPS 2020).

Six actions photographed in a typical place (climbing/rock wall, diving/underwater,
fishing/water surface, racing/paved track, throwing/playing field, vaulting/sky), still images
from imSitu, Stanford 40 Actions and web search. The LfF authors publish it in its own
repository, github.com/alinlab/BAR (the LfF code, alinlab/LfF, has no BAR loader), as two flat
folders::

    <root>/train/<class>_<n>.jpg    1,941 images
    <root>/test/<class>_<n>.jpg       654 images
    <root>/metadata.json            optional: {"<class>_<n>": {"cls": ..., "train": bool, ...}}

with ``n`` numbered on through both folders (train climbing_0..325, test climbing_326..430). The
class is the file-name prefix; the sixth class is spelled ``pole vaulting`` (with a space) in the
file names, ``metadata.json`` and ``stats_*.json``, "Vaulting" only in the README's table, and the
reader keeps the files' spelling. Per class, train/test: climbing 326/105, diving 520/159,
fishing 163/42, pole vaulting 279/131, racing 336/132, throwing 317/85. BAR has no validation
split: ``val_fraction`` of the training images, by a hash of the id, become ``val``.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa

from core import storage
from core.data.manifest import IMAGE_SUFFIXES, ManifestError, assign_split

SPLIT_FOLDERS = ("train", "test")
METADATA_FILE = "metadata.json"
_NAME = re.compile(r"^(?P<cls>.+)_(?P<n>\d+)$")


def _metadata(root: str) -> dict[str, Any] | None:
    path = storage.join(root, METADATA_FILE)
    if not storage.exists(path):
        return None
    try:
        data = json.loads(storage.read_bytes(path))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected an object keyed by image name")
    return data


def _check_metadata(meta: dict[str, Any], stem: str, label: str, split: str, root: str) -> None:
    """The published metadata agrees with the folder and the file name (when it lists it)."""
    entry = meta.get(stem)
    if not isinstance(entry, dict):
        return
    where = f"{storage.join(root, METADATA_FILE)}: {stem!r}"
    if entry.get("cls", label) != label:
        raise ManifestError(f"{where} has cls {entry['cls']!r}, its file name says {label!r}")
    if "train" in entry and bool(entry["train"]) != (split == "train"):
        raise ManifestError(f"{where} has train={entry['train']} but the image is in {split}/")


def bar_manifest(root: str, val_fraction: float = 0.0) -> pa.Table:
    """A manifest (id ``<split>/<file>``, path, label, split) of the BAR folder ``root``."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    meta = _metadata(root)
    rows = []
    for folder in SPLIT_FOLDERS:
        if not storage.exists(storage.join(root, folder)):
            raise FileNotFoundError(f"BAR: no {folder}/ folder under {root}")
        for path in storage.list_files(storage.join(root, folder)):
            name = PurePosixPath(path.replace("\\", "/")).name
            if not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            stem = PurePosixPath(name).stem
            match = _NAME.match(stem)
            if not match:
                raise ManifestError(f"{path}: not named <class>_<number> (the BAR layout)")
            label = match["cls"]
            if meta is not None:
                _check_metadata(meta, stem, label, folder, root)
            image_id = f"{folder}/{name}"
            split = folder
            if folder == "train" and val_fraction > 0:
                split = assign_split(image_id, (1 - val_fraction, val_fraction, 0.0))
            rows.append({"id": image_id, "path": path, "label": label, "split": split})
    if not rows:
        raise ManifestError(f"{root}: no images in train/ or test/ ({', '.join(IMAGE_SUFFIXES)})")
    return pa.Table.from_pylist(rows)
