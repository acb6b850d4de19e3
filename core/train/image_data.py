"""Ray Data inputs for classifier training: deterministic per-(rank, epoch) image streams.

Every worker count must see the same global batches, or "2 workers = 1 worker" cannot hold and a
resumed run would replay different data. So the order is planned up front: epoch ``e`` of a run
with seed ``s`` is the permutation ``rng(s, e)`` of the training rows, cut into global batches of
``B`` rows; worker ``r`` of ``W`` takes rows ``[r*B/W, (r+1)*B/W)`` of every global batch. Each
image's augmentation is seeded by (seed, epoch, row), whichever worker draws it.

A worker reads one stream for the whole run: its rows of every epoch from the one it starts at,
back to back (a resumed run starts straight at its epoch; there is one lazily built stream per
possible start epoch, and only the one a worker asks for is ever executed). One stream, rather
than one per epoch, keeps Ray Data decoding the next epoch's first images while the worker
evaluates, and pays the stream's start-up once per run.

Decoding and the open_clip transforms run in Ray Data tasks, in parallel with training; workers
receive ready float tensors through ``get_dataset_shard``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from core.data.images import ImageLoadError, load_image
from core.data.manifest import read_manifest

#: Ray Train dataset names: ``train_from_e{epoch}_r{rank}``, ``val_r{rank}``, ``test_r{rank}``.
EVAL_SPLITS = ("val", "test")


def train_stream_name(start_epoch: int, rank: int) -> str:
    """The stream of worker ``rank``'s rows of every epoch from ``start_epoch`` to the last."""
    return f"train_from_e{start_epoch}_r{rank}"


def eval_dataset_name(split: str, rank: int) -> str:
    return f"{split}_r{rank}"


@dataclass
class LabelledRows:
    """One split of a single-label manifest: ids, paths and class indices, in manifest order."""

    ids: list[str]
    paths: list[str]
    labels: np.ndarray  # int64 class indices

    def __len__(self) -> int:
        return len(self.ids)

    def table(self) -> pa.Table:
        return pa.table({"id": self.ids, "path": self.paths, "label": self.labels})


def manifest_classes(manifest: pa.Table, source: str = "manifest") -> list[str]:
    """The fixed class order: sorted unique labels over every split of the manifest."""
    if "label" not in manifest.column_names:
        raise ValueError(
            f"{source}: classifier training needs a single-label 'label' column; "
            f"found columns {manifest.column_names}"
        )
    return sorted({str(v) for v in manifest.column("label").to_pylist()})


def split_rows(manifest: pa.Table, split: str, classes: Sequence[str]) -> LabelledRows:
    """The rows of one split, with labels mapped to indices of ``classes``."""
    index = {name: i for i, name in enumerate(classes)}
    mask = np.asarray(manifest.column("split").to_pylist()) == split
    rows = manifest.filter(pa.array(mask))
    labels = [str(v) for v in rows.column("label").to_pylist()]
    unknown = sorted(set(labels) - index.keys())
    if unknown:
        raise ValueError(f"split {split}: labels {unknown[:5]} are not among the classes")
    return LabelledRows(
        ids=rows.column("id").to_pylist(),
        paths=rows.column("path").to_pylist(),
        labels=np.asarray([index[v] for v in labels], dtype=np.int64),
    )


def load_splits(manifest_path: str) -> tuple[list[str], dict[str, LabelledRows]]:
    """Classes plus the train/val/test rows of a manifest; an empty train split is an error."""
    manifest = read_manifest(manifest_path)
    classes = manifest_classes(manifest, manifest_path)
    splits = {s: split_rows(manifest, s, classes) for s in ("train", *EVAL_SPLITS)}
    if len(splits["train"]) == 0:
        raise ValueError(f"{manifest_path}: no rows with split 'train'")
    return classes, splits


def epoch_order(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The row order of one epoch: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_rows)


def steps_per_epoch(num_rows: int, global_batch: int) -> int:
    """Full global batches per epoch (the last partial batch is dropped, as ``drop_last``)."""
    return num_rows // global_batch


def rank_train_rows(
    num_rows: int, seed: int, epoch: int, global_batch: int, rank: int, world: int
) -> np.ndarray:
    """Row indices worker ``rank`` trains on in ``epoch``, in step order.

    Global batch ``t`` is ``order[t*B:(t+1)*B]``; worker ``r`` gets its ``r``-th contiguous
    ``B/W`` slice, so the union over workers of step ``t`` is exactly the one-worker batch.
    """
    if global_batch % world:
        raise ValueError(f"batch_size {global_batch} is not a multiple of {world} workers")
    local = global_batch // world
    steps = steps_per_epoch(num_rows, global_batch)
    order = epoch_order(num_rows, seed, epoch)[: steps * global_batch]
    return order.reshape(steps, world, local)[:, rank, :].reshape(-1)


def rank_eval_rows(num_rows: int, rank: int, world: int) -> np.ndarray:
    """Evaluation rows of worker ``rank``: every ``world``-th row, none dropped."""
    return np.arange(rank, num_rows, world)


def row_seed(seed: int, epoch: int, row: int) -> int:
    """A per-image augmentation seed that does not depend on which worker draws the image."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class TransformImages:
    """Ray Data batch function: (row, epoch) → decoded, transformed float images and labels.

    The rows of the split travel once with the function; each row's image is decoded with
    ``load_image`` and passed through an open_clip transform under its own seed. An image that
    cannot be read is a hard error naming the file: training must not silently drop samples.
    """

    def __init__(
        self,
        rows: pa.Table,
        transform: Callable[[Image.Image], torch.Tensor],
        seed: int,
        max_side: int = 1024,
    ) -> None:
        self.paths = rows.column("path").to_pylist()
        self.labels = rows.column("label").to_numpy()
        self.transform = transform
        self.seed = seed
        self.max_side = max_side

    @classmethod
    def for_split(cls, rows: LabelledRows, transform: Callable, seed: int) -> TransformImages:
        return cls(rows.table(), transform, seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(batch["row"]) == 0:
            return {"image": np.zeros((0,), np.float32), "label": batch["row"], "row": batch["row"]}
        images = []
        for row, epoch in zip(batch["row"].tolist(), batch["epoch"].tolist(), strict=True):
            path = self.paths[row]
            try:
                array = load_image(path, max_side=self.max_side)
            except ImageLoadError as exc:
                raise ImageLoadError(f"{path}: {exc}") from None
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(row_seed(self.seed, epoch, row))
                images.append(self.transform(Image.fromarray(array)).numpy())
        return {
            "image": np.stack(images).astype(np.float32),
            "label": self.labels[batch["row"]],
            "row": batch["row"],
        }


@functools.lru_cache(maxsize=4)
def _cached_rank_train_rows(
    num_rows: int, seed: int, epoch: int, global_batch: int, rank: int, world: int
) -> np.ndarray:
    """:func:`rank_train_rows`, once per epoch per decoding process rather than once per block
    (a permutation of 1.2M rows costs ~0.1 s; a block is a few hundred images). Read-only."""
    rows = rank_train_rows(num_rows, seed, epoch, global_batch, rank, world)
    rows.flags.writeable = False
    return rows


@dataclass(frozen=True)
class RankEpochs:
    """Where each position of a worker's training stream points: (epoch, row).

    Position ``p`` of the stream starting at ``start_epoch`` is item ``p % n`` of
    :func:`rank_train_rows` of epoch ``start_epoch + p // n`` (``n`` rows per epoch), so the
    stream is those epochs' rows back to back. Computed where the stream is decoded, from the
    seed: nothing per epoch travels through the object store.
    """

    num_rows: int
    seed: int
    global_batch: int
    rank: int
    world: int
    start_epoch: int

    @property
    def rows_per_epoch(self) -> int:
        return steps_per_epoch(self.num_rows, self.global_batch) * (self.global_batch // self.world)

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, epochs) of stream positions."""
        n = self.rows_per_epoch
        epochs = self.start_epoch + positions // n
        rows = np.empty_like(positions)
        for epoch in np.unique(epochs).tolist():
            at = epochs == epoch
            order = _cached_rank_train_rows(
                self.num_rows, self.seed, epoch, self.global_batch, self.rank, self.world
            )
            rows[at] = order[positions[at] % n]
        return rows, epochs


class StreamBatches:
    """Ray Data batch function: stream positions (``id``) → the model inputs of their rows."""

    def __init__(self, epochs: RankEpochs, inner: Callable[[dict], dict]) -> None:
        self.epochs = epochs
        self.inner = inner

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, epochs = self.epochs.locate(batch["id"].astype(np.int64))
        return self.inner({"row": rows, "epoch": epochs})


def _index_dataset(rows: np.ndarray, epoch: int, block_rows: int) -> Any:
    import ray.data

    table = pa.table(
        {
            "row": pa.array(rows, pa.int64()),
            "epoch": pa.array(np.full(len(rows), epoch), pa.int64()),
        }
    )
    blocks = [table.slice(i, block_rows) for i in range(0, table.num_rows, block_rows)]
    return ray.data.from_arrow(blocks or [table])


def build_train_datasets(
    splits: dict[str, Any],
    train_transform: Callable,
    eval_transform: Callable,
    *,
    seed: int,
    epochs: int,
    global_batch: int,
    world: int,
    num_cpus: float = 1.0,
    batch_class: type[TransformImages] | None = None,
) -> dict[str, Callable[[], Any]]:
    """Every (start epoch, rank) training stream plus per-rank val/test streams, built lazily.

    ``batch_class.for_split(rows, transform, seed)`` makes the Ray Data batch function that
    turns (row, epoch) batches into model inputs (:class:`TransformImages` by default; the
    multi-label trainer passes its own). Ray Train accepts dataset factories; building one only
    plans it (a ``range`` of positions), and only the streams a worker iterates are executed.
    """
    batch_class = batch_class or TransformImages
    block_rows = 4 * (global_batch // world)
    datasets: dict[str, Callable[[], Any]] = {}

    def quiet() -> None:
        import ray.data

        # Two evaluation streams per epoch: their bars would drown the per-epoch metrics.
        ray.data.DataContext.get_current().enable_progress_bars = False

    def train_stream(start_epoch: int, rank: int) -> Callable[[], Any]:
        def factory() -> Any:
            import ray.data

            quiet()
            where = RankEpochs(len(splits["train"]), seed, global_batch, rank, world, start_epoch)
            total = (epochs - start_epoch) * where.rows_per_epoch
            fn = StreamBatches(where, batch_class.for_split(splits["train"], train_transform, seed))
            blocks = max(1, -(-total // block_rows))
            return ray.data.range(total, override_num_blocks=blocks).map_batches(
                fn, batch_format="numpy", batch_size=None, num_cpus=num_cpus
            )

        return factory

    def eval_stream(split: str, rows: np.ndarray) -> Callable[[], Any]:
        def factory() -> Any:
            quiet()
            fn = batch_class.for_split(splits[split], eval_transform, seed)
            return _index_dataset(rows, -1, block_rows).map_batches(
                fn, batch_format="numpy", batch_size=None, num_cpus=num_cpus
            )

        return factory

    for start_epoch in range(epochs):
        for rank in range(world):
            datasets[train_stream_name(start_epoch, rank)] = train_stream(start_epoch, rank)
    for split in EVAL_SPLITS:
        for rank in range(world):
            rows = rank_eval_rows(len(splits[split]), rank, world)
            datasets[eval_dataset_name(split, rank)] = eval_stream(split, rows)
    return datasets
