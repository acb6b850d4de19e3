"""Ray Data inputs for CLIP-Decoder training: multi-hot targets and timm-style image streams.

The multi-label analogue of :mod:`core.train.image_data`, with the same data plan: epoch ``e`` of
a run with seed ``s`` is the permutation ``rng(s, e)`` of the training rows cut into global
batches, worker ``r`` of ``W`` takes its contiguous slice of every global batch, and each image's
augmentation is seeded by (seed, epoch, row). So 2 workers see exactly the global batches of 1,
and a resumed run replays the same data.

Targets are float32 multi-hot vectors over ALL labels in :attr:`LabelSplit.all` order (seen, then
unseen). The trainer decides which columns enter the loss (the seen ones); the data layer keeps
every column so that evaluation can score ZSL (unseen) and GZSL (all) from the same rows.

Images go through the backbone's input settings (timm ``data_config``: mean/std, interpolation,
crop_pct) at the configured size: random resized crop + horizontal flip for training, resize +
center crop for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from core.data.manifest import read_manifest
from core.data.nus_wide import LABEL_SPLIT_FILE, LabelSplit, sibling_path
from core.train.image_data import EVAL_SPLITS, TransformImages

if TYPE_CHECKING:
    from torchvision.transforms import InterpolationMode

#: Smallest crop (fraction of the image area) of the training augmentation. timm's default of
#: 0.08 suits single-label ImageNet; in a multi-label image a small crop drops most of the labels
#: while the targets still claim them, so crops stay large.
TRAIN_CROP_SCALE = (0.5, 1.0)


@dataclass
class MultiLabelRows:
    """One split of a multi-label manifest: ids, paths and each row's label columns, in order.

    Labels are kept sparse (``label_index[offsets[i]:offsets[i+1]]`` are row i's columns in
    :attr:`LabelSplit.all` order): NUS-WIDE's training split as a dense float32 matrix would be
    150k x 1006 = 600 MB, shipped with every per-(epoch, rank) stream. Batches are made dense.
    """

    ids: list[str]
    paths: list[str]
    offsets: np.ndarray  # int64 [N + 1]
    label_index: np.ndarray  # int32 [number of (row, label) pairs]
    num_labels: int

    def __len__(self) -> int:
        return len(self.ids)

    def table(self) -> pa.Table:
        """id and path only: the labels travel as the two arrays beside it."""
        return pa.table({"id": self.ids, "path": self.paths})

    def dense(self, rows: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """float32 multi-hot targets [len(rows), L] of ``rows`` (every row when None)."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), self.num_labels), dtype=np.float32)
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        counts = ends - starts
        if counts.sum() == 0:
            return out
        owner = np.repeat(np.arange(len(rows)), counts)
        first = np.repeat(starts - (np.cumsum(counts) - counts), counts)
        out[owner, self.label_index[first + np.arange(counts.sum())]] = 1.0
        return out

    @property
    def targets(self) -> np.ndarray:
        """All rows' multi-hot targets (for evaluation-sized splits)."""
        return self.dense()

    def has_positives(self, label_idx: Sequence[int]) -> bool:
        """True if some row has a positive among ``label_idx`` (metrics are defined there)."""
        return bool(np.isin(self.label_index, np.asarray(list(label_idx))).any())


def resolve_label_split_path(manifest: str, labels: str = "") -> str:
    """``labels`` if given, else ``labels.json`` next to the manifest."""
    return labels or sibling_path(manifest, LABEL_SPLIT_FILE)


def encode_labels(
    label_lists: Sequence[Sequence[str] | None], label_split: LabelSplit, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, label_index) of each row's labels in ``label_split.all`` order; an unknown
    label is an error naming the row."""
    index = {name: i for i, name in enumerate(label_split.all)}
    offsets = np.zeros(len(label_lists) + 1, dtype=np.int64)
    columns: list[int] = []
    for row, names in enumerate(label_lists):
        row_columns = set()
        for name in names or ():
            column = index.get(str(name))
            if column is None:
                raise ValueError(
                    f"{source}: row {row} has label {name!r}, which is neither seen nor unseen "
                    f"in the label split ({len(label_split.seen)} seen, "
                    f"{len(label_split.unseen)} unseen); regenerate labels.json or fix the row"
                )
            row_columns.add(column)
        columns.extend(sorted(row_columns))
        offsets[row + 1] = len(columns)
    return offsets, np.asarray(columns, dtype=np.int32)


def multi_hot(
    label_lists: Sequence[Sequence[str] | None], label_split: LabelSplit, source: str
) -> np.ndarray:
    """float32 [N, L] targets in ``label_split.all`` order; an unknown label is an error."""
    offsets, columns = encode_labels(label_lists, label_split, source)
    blank = [""] * len(label_lists)
    return MultiLabelRows(blank, blank, offsets, columns, len(label_split.all)).dense()


def load_multilabel_splits(
    manifest_path: str, labels_path: str = ""
) -> tuple[LabelSplit, dict[str, MultiLabelRows]]:
    """The label split plus the train/val/test rows; an empty train split is an error."""
    manifest = read_manifest(manifest_path)
    if "labels" not in manifest.column_names:
        raise ValueError(
            f"{manifest_path}: CLIP-Decoder training needs a multi-label 'labels' list column; "
            f"found columns {manifest.column_names}"
        )
    labels_path = resolve_label_split_path(manifest_path, labels_path)
    try:
        label_split = LabelSplit.load(labels_path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"labels: {labels_path}: no such file (the seen / unseen label lists; set labels=...)"
        ) from None
    if not label_split.seen or not label_split.unseen:
        raise ValueError(
            f"{labels_path}: needs both seen labels (to train on) and unseen labels (to evaluate "
            f"zero-shot); got {len(label_split.seen)} seen, {len(label_split.unseen)} unseen"
        )
    splits_column = np.asarray(manifest.column("split").to_pylist())
    splits: dict[str, MultiLabelRows] = {}
    for split in ("train", *EVAL_SPLITS):
        rows = manifest.filter(pa.array(splits_column == split))
        offsets, columns = encode_labels(
            rows.column("labels").to_pylist(), label_split, f"{manifest_path} ({split})"
        )
        splits[split] = MultiLabelRows(
            ids=rows.column("id").to_pylist(),
            paths=rows.column("path").to_pylist(),
            offsets=offsets,
            label_index=columns,
            num_labels=len(label_split.all),
        )
    if len(splits["train"]) == 0:
        raise ValueError(f"{manifest_path}: no rows with split 'train'")
    return label_split, splits


def backbone_data_config(backbone: str) -> dict[str, Any]:
    """timm's input settings of ``backbone`` (what ``CLIPDecoder.data_config`` returns).

    The driver needs only these to plan its streams; the backbone is built on the meta device, so
    no weights are allocated or downloaded.
    """
    import timm

    from core.models.clip_decoder import build_backbone

    with torch.device("meta"):
        net = build_backbone(backbone, pretrained=False)
    return dict(timm.data.resolve_model_data_config(net))


def backbone_transforms(backbone: str, image_size: int) -> tuple[Callable, Callable]:
    """(train, eval) transforms for ``backbone`` at ``image_size``: its timm input settings."""
    return build_multilabel_transforms(backbone_data_config(backbone), image_size)


def _interpolation(name: str) -> InterpolationMode:
    from torchvision import transforms as T

    try:
        return T.InterpolationMode(name)
    except ValueError:
        return T.InterpolationMode.BILINEAR


def build_multilabel_transforms(
    data_config: dict[str, Any], image_size: int
) -> tuple[Callable, Callable]:
    """(train, eval) transforms at ``image_size`` with the backbone's normalisation.

    Train: random resized crop (scale :data:`TRAIN_CROP_SCALE`) + horizontal flip, drawn from the
    torch RNG so that the per-row seeding of :class:`TransformImages` fixes them. Eval: timm's own
    eval transform (resize to ``image_size / crop_pct``, center crop).
    """
    if image_size < 16:
        raise ValueError(f"model.image_size must be >= 16, got {image_size}")
    import timm
    from torchvision import transforms as T

    mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
    interpolation = str(data_config.get("interpolation", "bilinear"))
    train = T.Compose(
        [
            T.RandomResizedCrop(
                image_size, scale=TRAIN_CROP_SCALE, interpolation=_interpolation(interpolation)
            ),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    evaluation = timm.data.create_transform(
        input_size=(3, image_size, image_size),
        is_training=False,
        interpolation=interpolation,
        mean=mean,
        std=std,
        crop_pct=data_config.get("crop_pct", 0.875),
        crop_mode=data_config.get("crop_mode", "center"),
    )
    return train, evaluation


class TransformMultiLabelImages(TransformImages):
    """Ray Data batch function: (row, epoch) → images [B, 3, S, S], targets [B, L] and ``valid``.

    Decoding, the per-row seeded transform and the handling of unreadable images are
    :class:`TransformImages`'; the targets come from the split's ``labels`` list column (the
    sparse rows, as Arrow offsets + values) taken by row, so a worker never needs the manifest.
    """

    @classmethod
    def row_table(cls, rows: MultiLabelRows) -> pa.Table:
        """id, path and each row's label columns as a list (``offsets`` / ``label_index``
        become the list's offsets and values without a copy); the label count rides in the
        schema metadata."""
        labels = pa.LargeListArray.from_arrays(
            pa.array(rows.offsets, pa.int64()), pa.array(rows.label_index, pa.int32())
        )
        table = rows.table().append_column("labels", labels)
        return table.replace_schema_metadata({"num_labels": str(rows.num_labels)})

    def targets(self, taken: pa.Table) -> dict[str, np.ndarray]:
        labels = taken.column("labels").combine_chunks()
        num_labels = int(taken.schema.metadata[b"num_labels"])
        out = np.zeros((len(labels), num_labels), dtype=np.float32)
        owner = pc.list_parent_indices(labels).to_numpy()
        out[owner, pc.list_flatten(labels).to_numpy()] = 1.0
        return {"targets": out}
