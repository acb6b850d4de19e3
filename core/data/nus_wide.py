"""NUS-WIDE in its zero-shot multi-label protocol: label lists and a manifest reader.

Labels: ``TagList1k.txt`` (1000 Flickr tags) and ``Concepts81.txt`` (81 human-annotated concepts).
Seen = the tags that are not concepts, unseen = the 81 concepts, all = seen + unseen (in that
order). On the benchmark's own files 75 of the 81 concepts are also tags (the other six,
``computer``, ``fire``, ``map``, ``swimmers``, ``tattoo``, ``whales``, are not), which gives the
usual 925 seen, 81 unseen, 1006 in all; :func:`load_label_split` computes this from the files
rather than assuming it.

Folder layout read by :func:`nus_wide_manifest` (the dataset's own distribution)::

    root/TagList1k.txt or root/NUS_WID_Tags/TagList1k.txt
    root/Concepts81.txt or root/ConceptsList/Concepts81.txt
    root/ImageList/TrainImagelist.txt, TestImagelist.txt   one image per line, 'actor\\0001_x.jpg'
    root/NUS_WID_Tags/Train_Tags1k.dat, Test_Tags1k.dat     0/1 matrix, a row per listed image
      or root/NUS_WID_Tags/AllTags1k.txt + root/ImageList/Imagelist.txt (rows of every image)
    root/Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt   one 0/1 per line
      (also accepted as root/TrainTestLabels/...), or Groundtruth/AllLabels/Labels_<concept>.txt
      with rows in Imagelist.txt order
    root/Flickr/<folder>/<image>.jpg                        the images (``image_root``)

Seen labels come from the tag matrix (the 75 tag columns that are concepts are dropped: those
labels are unseen and their ground truth is the human concept annotation), unseen labels from the
concept files, as in the usual preparation scripts of this benchmark. By the protocol, training
images carry only seen labels (``train_unseen_labels=False``); test images carry both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from core import storage
from core.data.manifest import ManifestError, assign_split, write_manifest

TAGS_FILE = "TagList1k.txt"
CONCEPTS_FILE = "Concepts81.txt"
LABEL_SPLIT_FILE = "labels.json"
_SPLIT_FILES = {"train": "Train", "test": "Test"}


@dataclass(frozen=True)
class LabelSplit:
    """Seen (trained on) and unseen (zero-shot) label names; ``all`` = seen then unseen."""

    seen: tuple[str, ...]
    unseen: tuple[str, ...]
    all: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        seen, unseen = tuple(self.seen), tuple(self.unseen)
        both = set(seen) & set(unseen)
        if both:
            raise ValueError(f"labels both seen and unseen: {sorted(both)[:5]}")
        for name, values in (("seen", seen), ("unseen", unseen)):
            if len(set(values)) != len(values):
                raise ValueError(f"{name} labels contain duplicates")
        object.__setattr__(self, "seen", seen)
        object.__setattr__(self, "unseen", unseen)
        object.__setattr__(self, "all", seen + unseen)

    def indices(self, names: Sequence[str]) -> list[int]:
        """Positions of ``names`` in ``all`` (the column order of GZSL scores and targets)."""
        pos = {n: i for i, n in enumerate(self.all)}
        missing = [n for n in names if n not in pos]
        if missing:
            raise KeyError(f"labels not in the label set: {missing[:5]}")
        return [pos[n] for n in names]

    @property
    def seen_idx(self) -> list[int]:
        return list(range(len(self.seen)))

    @property
    def unseen_idx(self) -> list[int]:
        return list(range(len(self.seen), len(self.all)))

    def to_dict(self) -> dict[str, list[str]]:
        return {"seen": list(self.seen), "unseen": list(self.unseen), "all": list(self.all)}

    def save(self, path: str) -> str:
        storage.write_bytes(path, json.dumps(self.to_dict(), indent=1).encode())
        return path

    @classmethod
    def load(cls, path: str) -> LabelSplit:
        data = json.loads(storage.read_bytes(path))
        for key in ("seen", "unseen"):
            if key not in data:
                raise ValueError(f"{path}: no {key!r} list")
        return cls(tuple(data["seen"]), tuple(data["unseen"]))


def sibling_path(path: str, name: str) -> str:
    """``name`` in the folder of ``path`` (local path or URI)."""
    if storage.is_uri(path):
        return path.rstrip("/").rsplit("/", 1)[0] + "/" + name
    return os.path.join(os.path.dirname(os.path.abspath(path)), name)


def _find(root: str, candidates: Sequence[str], what: str) -> str:
    for rel in candidates:
        path = storage.join(root, rel)
        if storage.exists(path):
            return path
    raise FileNotFoundError(f"NUS-WIDE {what}: none of {', '.join(candidates)} exists under {root}")


def _read_lines(path: str) -> list[str]:
    text = storage.read_bytes(path).decode("utf-8-sig", errors="strict")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_names(path: str) -> list[str]:
    names = _read_lines(path)
    if not names:
        raise ManifestError(f"{path}: no label names")
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise ManifestError(f"{path}: label {n!r} listed twice (line {i + 1})")
        seen.add(n)
    return names


def load_label_split(root: str) -> LabelSplit:
    """Seen / unseen labels from the folder's ``TagList1k.txt`` and ``Concepts81.txt``."""
    tags = _read_names(_find(root, [TAGS_FILE, f"NUS_WID_Tags/{TAGS_FILE}"], "tag list"))
    concepts = _read_names(
        _find(root, [CONCEPTS_FILE, f"ConceptsList/{CONCEPTS_FILE}"], "concept list")
    )
    concept_set = set(concepts)
    return LabelSplit(tuple(t for t in tags if t not in concept_set), tuple(concepts))


_BLOCK_BYTES = 1 << 24


def _parse_block(data: np.ndarray, num_cols: int, first_line: int, path: str) -> np.ndarray:
    """Parse whole lines of 0/1 values (bytes as uint8); ``first_line`` is 1-based, for errors."""
    newline = data == ord("\n")
    line_of = np.cumsum(newline, dtype=np.int32) - newline  # line number (in block) of each byte
    is_digit = (data == ord("0")) | (data == ord("1"))
    is_space = newline | (data == ord(" ")) | (data == ord("\t")) | (data == ord("\r"))
    bad = ~(is_digit | is_space)
    bad[1:] |= is_digit[1:] & is_digit[:-1]  # two digits in a row: a number other than 0/1
    if bad.any():
        line = first_line + int(line_of[np.argmax(bad)])
        raise ManifestError(f"{path}: line {line} has a value other than 0 or 1")
    per_line = np.bincount(line_of[is_digit], minlength=int(line_of[-1]) + 1)
    wrong = np.flatnonzero((per_line != 0) & (per_line != num_cols))
    if wrong.size:
        raise ManifestError(
            f"{path}: line {first_line + int(wrong[0])} has {int(per_line[wrong[0]])} values, "
            f"expected {num_cols}"
        )
    return (data[is_digit] == ord("1")).reshape(-1, num_cols)


def _read_matrix(path: str, num_cols: int) -> np.ndarray:
    """A whitespace-separated 0/1 matrix with ``num_cols`` columns, as bool [rows, num_cols].

    Parsed on the raw bytes in blocks of whole lines (the tag files hold 10^8 entries: Python
    strings per entry would take gigabytes). Blank lines are ignored.
    """
    raw = storage.read_bytes(path)
    blocks = []
    start, line = 0, 1
    while start < len(raw):
        end = raw.find(b"\n", min(start + _BLOCK_BYTES, len(raw)) - 1)
        end = len(raw) if end < 0 else end + 1
        chunk = np.frombuffer(raw, dtype=np.uint8, count=end - start, offset=start)
        blocks.append(_parse_block(chunk, num_cols, line, path))
        line += int(np.count_nonzero(chunk == ord("\n")))
        start = end
    if not blocks:
        return np.zeros((0, num_cols), dtype=bool)
    return np.concatenate(blocks)


def _image_id(entry: str) -> str:
    """Image id relative to the Flickr folder: ``actor/0001_x.jpg``.

    List entries look like ``C:\\ImageData\\Flickr\\actor\\0001_x.jpg`` or
    ``actor\\0001_x.jpg``.
    """
    parts = [p for p in entry.replace("\\", "/").split("/") if p]
    lower = [p.lower() for p in parts]
    if "flickr" in lower:
        parts = parts[len(lower) - 1 - lower[::-1].index("flickr") + 1 :]
    return "/".join(parts)


def _split_images(root: str, split: str) -> list[str]:
    name = f"{_SPLIT_FILES[split]}Imagelist.txt"
    path = _find(root, [f"ImageList/{name}", name], f"{split} image list")
    return [_image_id(x) for x in _read_lines(path)]


class _AllImages:
    """The whole-dataset image list (Imagelist.txt), read once and only when a per-split file
    is missing and a whole-dataset label file (AllTags1k.txt, AllLabels/) stands in for it."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._row: dict[str, int] | None = None

    def _rows(self) -> dict[str, int]:
        if self._row is None:
            path = _find(self.root, ["ImageList/Imagelist.txt", "Imagelist.txt"], "image list")
            self._row = {_image_id(x): i for i, x in enumerate(_read_lines(path))}
        return self._row

    @property
    def num_images(self) -> int:
        return len(self._rows())

    def rows_of(self, ids: Sequence[str], source: str) -> np.ndarray:
        row = self._rows()
        missing = [x for x in ids if x not in row]
        if missing:
            raise ManifestError(
                f"{source}: images of the split list are not in ImageList/Imagelist.txt, "
                f"e.g. {missing[:3]}"
            )
        return np.fromiter((row[x] for x in ids), dtype=np.int64, count=len(ids))


def _tag_matrix(root: str, split: str, ids: list[str], all_images: _AllImages) -> np.ndarray:
    split_file = f"NUS_WID_Tags/{_SPLIT_FILES[split]}_Tags1k.dat"
    path = storage.join(root, split_file)
    if storage.exists(path):
        matrix = _read_matrix(path, 1000)
        if matrix.shape[0] != len(ids):
            raise ManifestError(
                f"{path}: {matrix.shape[0]} rows but the {split} image list has {len(ids)} images"
            )
        return matrix
    try:
        all_path = _find(root, ["NUS_WID_Tags/AllTags1k.txt", "AllTags1k.txt"], "tag matrix")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"NUS-WIDE {split} tags: neither {split_file} nor NUS_WID_Tags/AllTags1k.txt "
            f"exists under {root}"
        ) from None
    rows = all_images.rows_of(ids, all_path)
    matrix = _read_matrix(all_path, 1000)
    if matrix.shape[0] != all_images.num_images:
        raise ManifestError(
            f"{all_path}: {matrix.shape[0]} rows but ImageList/Imagelist.txt has "
            f"{all_images.num_images} images"
        )
    return matrix[rows]


def _concept_column(
    root: str, split: str, concept: str, ids: list[str], all_images: _AllImages
) -> np.ndarray:
    name = f"Labels_{concept}_{_SPLIT_FILES[split]}.txt"
    for rel in (f"Groundtruth/TrainTestLabels/{name}", f"TrainTestLabels/{name}"):
        path = storage.join(root, rel)
        if storage.exists(path):
            column = _read_matrix(path, 1)[:, 0]
            if column.size != len(ids):
                raise ManifestError(
                    f"{path}: {column.size} lines but the {split} image list has {len(ids)}"
                )
            return column
    whole = f"Labels_{concept}.txt"
    for rel in (f"Groundtruth/AllLabels/{whole}", f"AllLabels/{whole}"):
        path = storage.join(root, rel)
        if storage.exists(path):
            rows = all_images.rows_of(ids, path)
            column = _read_matrix(path, 1)[:, 0]
            if column.size != all_images.num_images:
                raise ManifestError(
                    f"{path}: {column.size} lines but ImageList/Imagelist.txt has "
                    f"{all_images.num_images} images"
                )
            return column[rows]
    raise FileNotFoundError(
        f"NUS-WIDE labels of concept {concept!r} ({split}): none of "
        f"Groundtruth/TrainTestLabels/{name}, TrainTestLabels/{name}, "
        f"Groundtruth/AllLabels/{whole} exists under {root}"
    )


def nus_wide_manifest(
    root: str,
    image_root: str | None = None,
    val_fraction: float = 0.0,
    train_unseen_labels: bool = False,
    drop_unlabelled: bool = True,
) -> tuple[pa.Table, LabelSplit]:
    """A multi-label manifest (id, path, labels, split) of a NUS-WIDE folder, and its labels.

    ``image_root`` defaults to ``root/Flickr``; ids are the image paths relative to it. A
    ``val_fraction`` of the training images (by a hash of the id) becomes the ``val`` split.
    ``drop_unlabelled`` drops training images without a seen label and test images without any
    label (they contribute nothing to training / to the metrics), as the standard preparation
    does. ``train_unseen_labels=True`` also lists the concepts on training images (then the
    ``Labels_<c>_Train.txt`` files are needed); a trainer must still score only seen labels.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = load_label_split(root)
    tags = _read_names(_find(root, [TAGS_FILE, f"NUS_WID_Tags/{TAGS_FILE}"], "tag list"))
    if len(tags) != 1000:
        raise ManifestError(f"{TAGS_FILE}: expected 1000 tags, found {len(tags)}")
    seen_pos = {t: i for i, t in enumerate(labels.seen)}
    seen_cols = np.array([i for i, t in enumerate(tags) if t in seen_pos], dtype=np.int64)
    image_root = image_root or storage.join(root, "Flickr")
    all_images = _AllImages(root)
    rows: dict[str, list] = {"id": [], "path": [], "labels": [], "split": []}
    for split in ("train", "test"):
        ids = _split_images(root, split)
        seen_targets = _tag_matrix(root, split, ids, all_images)[:, seen_cols]
        with_unseen = split == "test" or train_unseen_labels
        if with_unseen:
            unseen_targets = np.stack(
                [_concept_column(root, split, c, ids, all_images) for c in labels.unseen], axis=1
            )
        else:
            unseen_targets = np.zeros((len(ids), len(labels.unseen)), dtype=bool)
        targets = np.concatenate([seen_targets, unseen_targets], axis=1)
        names = np.array(labels.all, dtype=object)
        for image_id, row, seen_row in zip(ids, targets, seen_targets, strict=True):
            keep_row = seen_row.any() if split == "train" else row.any()
            if drop_unlabelled and not keep_row:
                continue
            out_split = split
            if split == "train" and val_fraction > 0:
                out_split = assign_split(image_id, (1 - val_fraction, val_fraction, 0.0))
            rows["id"].append(image_id)
            rows["path"].append(storage.join(image_root, image_id))
            rows["labels"].append(list(names[row]))
            rows["split"].append(out_split)
    if not rows["id"]:
        raise ManifestError(f"{root}: no labelled NUS-WIDE images found")
    table = pa.table(
        {
            "id": rows["id"],
            "path": rows["path"],
            "labels": pa.array(rows["labels"], type=pa.list_(pa.string())),
            "split": rows["split"],
        }
    )
    return table, labels


def write_nus_wide_manifest(root: str, dest: str, **kwargs) -> tuple[str, str]:
    """Write the manifest to ``dest`` and the label split as ``labels.json`` next to it."""
    table, labels = nus_wide_manifest(root, **kwargs)
    write_manifest(table, dest)
    labels_path = labels.save(sibling_path(dest, LABEL_SPLIT_FILE))
    return dest, labels_path
