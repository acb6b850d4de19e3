"""UCF-101 as published: the official clips with their split lists, and CoOp's mid-frame release.

Official release (crcv.ucf.edu/data/UCF101.php): ``UCF101.rar`` unpacks to
``UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` (101 class folders, 13,320 clips), and
``UCF101TrainTestSplits-RecognitionTask.zip`` to ``ucfTrainTestlist/`` with

    classInd.txt          "1 ApplyEyeMakeup" ... "101 YoYo" (1-based)
    trainlist0{1,2,3}.txt "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    testlist0{1,2,3}.txt  "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi" (no label)

(CRLF line ends). Clips of one group ``gXX`` of a class are cut from one long video; the official
splits keep each group on one side (test: groups 1-7, 8-14 or 15-21), and the ``val`` split this
reader carves from train does the same: it is chosen by a hash of ``<Class>_gXX``. Clips are found
by file name anywhere under ``root`` (class folders or one flat folder, with or without the
``UCF-101/`` level). The folder part of a list entry names the class: one class has a file-name
spelling that differs from its folder (``HandstandPushups/v_HandStandPushups_g01_c01.avi``).

Mid-frame release (CoOp, github.com/KaiyangZhou/CoOp ``datasets/ucf101.py`` and DATASETS.md):
``<root>/UCF-101-midframes/<Class_Name>/v_<Class>_gXX_cYY.jpg`` (class names split at capitals and
joined by ``_``) with ``<root>/split_zhou_UCF101.json``: ``{"train": [[relpath, label, classname],
...], "val": [...], "test": [...]}``, relpaths relative to ``UCF-101-midframes/``. Built by CoOp
from split 1: test = testlist01, train/val = a random per-class 80/20 cut of trainlist01 (7,639 /
1,898 / 3,783 images), so its val shares groups with its train. It is read as it is.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import PurePosixPath

import pyarrow as pa

from core import storage
from core.data.manifest import IMAGE_SUFFIXES, ManifestError, assign_split
from core.data.video_frames import error_table, list_files

LISTS_FOLDER = "ucfTrainTestlist"
MIDFRAMES_FOLDER = "UCF-101-midframes"
MIDFRAMES_SPLIT_FILE = "split_zhou_UCF101.json"
SPLITS = (1, 2, 3)
_CLIP = re.compile(r"^v_(?P<name>.+)_g(?P<group>\d+)_c(?P<clip>\d+)$")


def clip_group(class_name: str, file_name: str, source: str = "") -> str:
    """The group key ``<Class>_gXX`` of a clip file name (``v_<Class>_gXX_cYY.avi``)."""
    match = _CLIP.match(PurePosixPath(file_name).stem)
    if not match:
        raise ManifestError(f"{source or file_name}: {file_name!r} is not named v_<Class>_gXX_cYY")
    return f"{class_name}_g{int(match['group']):02d}"


def _lines(path: str) -> list[tuple[int, str]]:
    try:
        text = storage.read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not a UTF-8 text file") from None
    return [(i + 1, line.strip()) for i, line in enumerate(text.splitlines()) if line.strip()]


def _lists_path(root: str, name: str) -> str:
    for rel in (f"{LISTS_FOLDER}/{name}", name):
        path = storage.join(root, rel)
        if storage.exists(path):
            return path
    raise FileNotFoundError(f"UCF-101: no {LISTS_FOLDER}/{name} (nor {name}) under {root}")


def read_class_index(path: str) -> dict[str, int]:
    """``classInd.txt``: class name → 1-based index."""
    classes: dict[str, int] = {}
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ManifestError(f"{path}: line {number} is not '<index> <ClassName>': {line!r}")
        if parts[1] in classes:
            raise ManifestError(f"{path}: class {parts[1]!r} listed twice (line {number})")
        classes[parts[1]] = int(parts[0])
    if not classes:
        raise ManifestError(f"{path}: no classes")
    return classes


def _read_split_list(path: str, classes: dict[str, int], labelled: bool) -> list[str]:
    """Entries ``<Class>/<clip>.avi`` of a train (labelled) or test list, checked against
    ``classInd``: the label, where given, must be the class's index."""
    entries = []
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) not in ((2,) if labelled else (1, 2)):
            form = "<Class>/<clip>.avi <label>" if labelled else "<Class>/<clip>.avi"
            raise ManifestError(f"{path}: line {number} is not '{form}': {line!r}")
        entry = str(PurePosixPath(parts[0].replace("\\", "/")))
        class_name = entry.split("/")[0] if "/" in entry else ""
        if class_name not in classes:
            raise ManifestError(f"{path}: line {number}: class {class_name!r} is not in classInd")
        if len(parts) == 2 and parts[1] != str(classes[class_name]):
            raise ManifestError(
                f"{path}: line {number}: label {parts[1]} but classInd gives {class_name!r} "
                f"index {classes[class_name]}"
            )
        entries.append(entry)
    return entries


def _clips_by_name(root: str) -> dict[str, str]:
    """Clip file name → path, for every ``.avi`` under ``root``, wherever it lies."""
    found: dict[str, str] = {}
    for rel in list_files(root, (".avi",)):
        name = PurePosixPath(rel).name
        if name in found:
            raise ManifestError(f"{root}: {name} is there twice ({rel} and {found[name]})")
        found[name] = storage.join(root, rel)
    return found


def _duplicate(values: list[str]) -> str | None:
    return next((v for v, n in Counter(values).items() if n > 1), None)


def ucf101_videos(
    root: str, split: int = 1, val_fraction: float = 0.0
) -> tuple[pa.Table, pa.Table]:
    """The clips of official split ``split`` (1-3): (listing, error rows).

    The listing has id (``<Class>/v_..._gXX_cYY``), path, label (the class name of classInd),
    split and group (``<Class>_gXX``); ``val_fraction`` of the training groups, by a hash of the
    group, become ``val``. Listed clips missing under ``root`` become error rows.
    """
    if split not in SPLITS:
        raise ValueError(f"UCF-101 split must be 1, 2 or 3, got {split}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    classes = read_class_index(_lists_path(root, "classInd.txt"))
    lists = {
        "train": _read_split_list(_lists_path(root, f"trainlist0{split}.txt"), classes, True),
        "test": _read_split_list(_lists_path(root, f"testlist0{split}.txt"), classes, False),
    }
    dup = _duplicate(lists["train"] + lists["test"])
    if dup:
        raise ManifestError(f"UCF-101 split {split}: {dup} is listed twice (train/test lists)")
    files = _clips_by_name(root)
    lower = {name.lower(): path for name, path in files.items()}
    rows, errors = [], []
    for split_name, entries in lists.items():
        source = f"{LISTS_FOLDER}/{split_name}list0{split}.txt"
        for entry in entries:
            class_name, file_name = entry.split("/", 1)[0], PurePosixPath(entry).name
            group = clip_group(class_name, file_name, source)
            video_id = str(PurePosixPath(entry).with_suffix(""))
            path = files.get(file_name) or lower.get(file_name.lower())
            if path is None:
                missing = storage.join(root, entry)
                errors.append({"id": video_id, "path": missing, "reason": "file not found"})
                continue
            out_split = split_name
            if split_name == "train" and val_fraction > 0:
                out_split = assign_split(group, (1 - val_fraction, val_fraction, 0.0))
            rows.append(
                {
                    "id": video_id,
                    "path": path,
                    "label": class_name,
                    "split": out_split,
                    "group": group,
                }
            )
    if not rows:
        raise ManifestError(f"{root}: none of the .avi clips of UCF-101 split {split} is there")
    return pa.Table.from_pylist(rows), error_table(errors)


def _read_split_json(path: str) -> dict[str, list]:
    try:
        split = json.loads(storage.read_bytes(path))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    for name in ("train", "val", "test"):
        if not isinstance(split, dict) or not isinstance(split.get(name), list):
            raise ManifestError(f"{path}: no {name!r} list")
    return split


def ucf101_midframes(root: str) -> tuple[pa.Table, pa.Table]:
    """CoOp's mid-frame images with its own train/val/test split: (manifest, error rows).

    The manifest has id (the split file's relpath), path, label (its classname), split, and
    ``video`` (the clip the frame comes from: relpath without extension). Listed images missing
    under ``UCF-101-midframes/`` become error rows.
    """
    split_path = storage.join(root, MIDFRAMES_SPLIT_FILE)
    if not storage.exists(split_path):
        raise FileNotFoundError(f"UCF-101 mid-frames: no {MIDFRAMES_SPLIT_FILE} under {root}")
    split = _read_split_json(split_path)
    image_root = storage.join(root, MIDFRAMES_FOLDER)
    files = set(list_files(image_root, IMAGE_SUFFIXES))
    rows, errors, listed = [], [], []
    for split_name in ("train", "val", "test"):
        for i, item in enumerate(split[split_name]):
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
                raise ManifestError(
                    f"{split_path}: {split_name}[{i}] is not [relpath, label, classname]"
                )
            rel = str(PurePosixPath(item[0]))
            listed.append(rel)
            path = storage.join(image_root, rel)
            if rel not in files:
                errors.append({"id": rel, "path": path, "reason": "file not found"})
                continue
            video = str(PurePosixPath(rel).with_suffix(""))
            rows.append(
                {
                    "id": rel,
                    "path": path,
                    "label": str(item[2]),
                    "split": split_name,
                    "video": video,
                }
            )
    dup = _duplicate(listed)
    if dup:
        raise ManifestError(f"{split_path}: {dup} is listed twice")
    if not rows:
        raise ManifestError(f"{image_root}: none of the images of {MIDFRAMES_SPLIT_FILE} is there")
    return pa.Table.from_pylist(rows), error_table(errors)
