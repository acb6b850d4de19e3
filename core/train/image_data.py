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
receive ready float tensors through ``get_dataset_shard``. A decoding task's cost must not grow
with the split: each split's rows (id, path, labels) go into Ray's object store once and the
tasks read just their block's rows by reference (:class:`SharedRows`), and every rank's stream in
a process shares one cached permutation per epoch. An unreadable image becomes a zero row with
``valid == 0`` and a record under the run's ``bad_images`` folder, never a failed task.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from PIL import Image

from core import storage
from core.data.images import ImageLoadError, load_image
from core.data.manifest import read_manifest

if TYPE_CHECKING:  # torch is imported where images are transformed: Ray Train's dataset manager
    import torch  # unpickles this module's batch functions and never needs it

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


class SharedRows:
    """A split's row table (id, path and labels) that decoding tasks read by reference.

    A batch function that carried the split itself would be unpickled by every decoding task:
    63 MiB of paths at 1.2M rows, several times the cost of decoding the block. So the driver
    puts the table into Ray's object store once (:meth:`put`) and the batch function carries only
    the ObjectRef; a task maps the shared-memory copy (zero-copy on the node that holds it, one
    transfer per other node) and takes its block's rows. Built with :meth:`local` it holds the
    table itself, for direct use without Ray.
    """

    def __init__(self, num_rows: int, table: pa.Table | None = None, ref: Any = None) -> None:
        self.num_rows = num_rows
        self._table = table
        self._ref = ref

    @classmethod
    def put(cls, table: pa.Table) -> SharedRows:
        """The table in Ray's object store, one contiguous chunk per column."""
        import ray

        return cls(table.num_rows, ref=ray.put(table.combine_chunks()))

    @classmethod
    def local(cls, table: pa.Table) -> SharedRows:
        """The table held in place (it travels wherever the holder is pickled)."""
        return cls(table.num_rows, table=table)

    def __len__(self) -> int:
        return self.num_rows

    def table(self) -> pa.Table:
        """The whole table (a shared-memory view when it lives in the object store)."""
        if self._table is not None:
            return self._table
        import ray

        return ray.get(self._ref)

    def take(self, rows: np.ndarray) -> pa.Table:
        """Rows ``rows`` of the table, in that order; the cost depends on ``len(rows)`` only."""
        return self.table().take(pa.array(np.asarray(rows, dtype=np.int64)))


class TransformImages:
    """Ray Data batch function: (row, epoch) → decoded, transformed float images and labels.

    Each row's image is decoded with ``load_image`` and passed through an open_clip transform
    under its own seed. An image that cannot be read (``ImageLoadError``: missing, empty, not an
    image, too large) must not kill the run, and must not be retried on every restart: it becomes
    a zero image with ``valid == 0`` (the workers leave it out of losses and metrics) and is
    recorded under ``bad_images_dir`` (see :func:`read_bad_images`). ``valid`` is 1 elsewhere.

    ``rows`` is a :class:`SharedRows` (what the streams pass), a row table, or the split's rows
    (made a table by :meth:`row_table`), for calling it directly.
    """

    def __init__(
        self,
        rows: Any,
        transform: Callable[[Image.Image], torch.Tensor],
        seed: int,
        max_side: int = 1024,
        *,
        split: str = "",
        bad_images_dir: str = "",
    ) -> None:
        if isinstance(rows, SharedRows):
            self.rows = rows
        else:
            table = rows if isinstance(rows, pa.Table) else self.row_table(rows)
            self.rows = SharedRows.local(table)
        self.transform = transform
        self.seed = seed
        self.max_side = max_side
        self.split = split
        self.bad_images_dir = bad_images_dir

    @classmethod
    def row_table(cls, rows: LabelledRows) -> pa.Table:
        """What decoding reads of a split: id, path and the label columns."""
        return rows.table()

    @property
    def paths(self) -> list[str]:
        """Every path of the split (reads the whole column: for direct use, not per block)."""
        return self.rows.table().column("path").to_pylist()

    def image(self, path: str, row: int, epoch: int) -> np.ndarray:
        """One row's model input: decoded, then transformed under the row's own seed (so any
        worker draws the same augmentation); ``ImageLoadError`` for an unusable file."""
        import torch

        array = load_image(path, max_side=self.max_side)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(row_seed(self.seed, epoch, row))
            return self.transform(Image.fromarray(array)).numpy()

    def targets(self, taken: pa.Table) -> dict[str, np.ndarray]:
        """The label columns of a batch from its rows of the table."""
        return {"label": taken.column("label").to_numpy()}

    def blank_shape(self) -> tuple[int, ...]:
        """The transform's output shape, from a small blank image (for all-bad batches)."""
        import torch

        with torch.random.fork_rng(devices=[]):
            return tuple(self.transform(Image.new("RGB", (32, 32))).shape)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.asarray(batch["row"], dtype=np.int64)
        epochs = np.asarray(batch["epoch"], dtype=np.int64)
        taken = self.rows.take(rows)
        paths = taken.column("path").to_pylist()
        images: list[np.ndarray | None] = []
        failures: list[dict[str, Any]] = []
        for i, (row, epoch, path) in enumerate(
            zip(rows.tolist(), epochs.tolist(), paths, strict=True)
        ):
            try:
                images.append(self.image(path, row, epoch))
            except ImageLoadError as exc:
                images.append(None)
                where = {"split": self.split, "epoch": epoch, "row": row, "index": i}
                failures.append({**where, "path": path, "reason": str(exc)})
        good = next((image for image in images if image is not None), None)
        shape = good.shape if good is not None else self.blank_shape()
        stacked = np.zeros((len(rows), *shape), dtype=np.float32)
        for i, image in enumerate(images):
            if image is not None:
                stacked[i] = image
        valid = np.fromiter((image is not None for image in images), np.uint8, len(images))
        if failures:
            ids = taken.column("id").to_pylist()
            for failure in failures:
                failure["id"] = ids[failure.pop("index")]
            self.record(failures, int(rows[0]), int(epochs[0]))
        return {"image": stacked, **self.targets(taken), "row": rows, "valid": valid}

    def record(self, failures: list[dict[str, Any]], first_row: int, epoch: int) -> None:
        """One small JSON-lines file per decoding call with failures. The name (split, epoch,
        first row, process, the failed rows) keeps concurrent tasks from sharing a file; a block
        decoded again (a restarted run) may add a file, which :func:`read_bad_images` merges."""
        if not self.bad_images_dir:
            return
        failed = ",".join(str(f["row"]) for f in failures)
        digest = hashlib.blake2b(failed.encode(), digest_size=4).hexdigest()
        name = f"{self.split or 'rows'}_e{epoch}_r{first_row}_{os.getpid()}_{digest}.jsonl"
        text = "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures)
        storage.write_bytes(storage.join(self.bad_images_dir, name), text.encode())


def read_bad_images(bad_images_dir: str) -> list[dict[str, Any]]:
    """Every recorded unreadable image, once per (split, row), sorted by (split, row).

    A row that failed in several epochs (or in a re-run block) keeps its earliest record.
    """
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for path in storage.list_files(bad_images_dir, ".jsonl"):
        for line in storage.read_bytes(path).decode().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            key = (str(record["split"]), int(record["row"]))
            if key not in records or record["epoch"] < records[key]["epoch"]:
                records[key] = record
    return [records[key] for key in sorted(records)]


@functools.lru_cache(maxsize=4)
def _cached_epoch_order(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    """:func:`epoch_order`, once per epoch per decoding process, shared by every rank's stream
    (a permutation of 1.2M rows costs ~25 ms; a block is a few hundred images). Stored as int32
    when it fits, to halve the memory of large splits. Read-only."""
    order = epoch_order(num_rows, seed, epoch)
    if num_rows <= np.iinfo(np.int32).max:
        order = order.astype(np.int32)
    order.flags.writeable = False
    return order


@dataclass(frozen=True)
class RankEpochs:
    """Where each position of a worker's training stream points: (epoch, row).

    Position ``p`` of the stream starting at ``start_epoch`` is item ``p % n`` of
    :func:`rank_train_rows` of epoch ``start_epoch + p // n`` (``n`` rows per epoch), so the
    stream is those epochs' rows back to back. Computed where the stream is decoded, from the
    seed: nothing per epoch travels through the object store. Item ``q`` of a rank's epoch is
    entry ``(q // b) * B + rank * b + q % b`` of the epoch's permutation (``b = B / W``), so a
    block costs only its own size once the epoch's permutation is cached.
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
        local = self.global_batch // self.world
        epochs = self.start_epoch + positions // n
        rows = np.empty_like(positions)
        for epoch in np.unique(epochs).tolist():
            at = epochs == epoch
            order = _cached_epoch_order(self.num_rows, self.seed, epoch)
            item = positions[at] % n
            rows[at] = order[(item // local) * self.global_batch + self.rank * local + item % local]
        return rows, epochs


@dataclass(frozen=True)
class RankEvalRows:
    """Where each position of a worker's evaluation stream points: row ``rank + p * world``
    (:func:`rank_eval_rows`), epoch -1."""

    num_rows: int
    rank: int
    world: int

    @property
    def length(self) -> int:
        return len(range(self.rank, self.num_rows, self.world))

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, epochs) of stream positions."""
        return self.rank + positions * self.world, np.full_like(positions, -1)


class StreamBatches:
    """Ray Data batch function: stream positions (``id``) → the model inputs of their rows."""

    def __init__(self, where: RankEpochs | RankEvalRows, inner: Callable[[dict], dict]) -> None:
        self.where = where
        self.inner = inner

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, epochs = self.where.locate(batch["id"].astype(np.int64))
        return self.inner({"row": rows, "epoch": epochs})


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
    bad_images_dir: str = "",
) -> dict[str, Callable[[], Any]]:
    """Every (start epoch, rank) training stream plus per-rank val/test streams, built lazily.

    ``batch_class`` (:class:`TransformImages` by default; the multi-label trainer passes its own)
    turns (row, epoch) batches into model inputs; each split's ``batch_class.row_table`` goes
    into Ray's object store once, here, and every stream's batch function carries only its
    reference (:class:`SharedRows`), so a decoding task costs the same at 100k rows as at 10M.
    Ray Train accepts dataset factories; building one only plans it (a ``range`` of positions),
    and only the streams a worker iterates are executed. Unreadable images are recorded under
    ``bad_images_dir`` (nothing is recorded when it is ``""``).
    """
    batch_class = batch_class or TransformImages
    block_rows = 4 * (global_batch // world)
    shared = {
        split: SharedRows.put(batch_class.row_table(splits[split]))
        for split in ("train", *EVAL_SPLITS)
    }
    datasets: dict[str, Callable[[], Any]] = {}

    def stream(
        split: str, where: RankEpochs | RankEvalRows, total: int, transform: Callable
    ) -> Any:
        import ray.data

        # Two evaluation streams per epoch: their bars would drown the per-epoch metrics.
        ray.data.DataContext.get_current().enable_progress_bars = False
        decode = batch_class(
            shared[split], transform, seed, split=split, bad_images_dir=bad_images_dir
        )
        blocks = max(1, -(-total // block_rows))
        return ray.data.range(total, override_num_blocks=blocks).map_batches(
            StreamBatches(where, decode), batch_format="numpy", batch_size=None, num_cpus=num_cpus
        )

    def train_stream(start_epoch: int, rank: int) -> Callable[[], Any]:
        def factory() -> Any:
            where = RankEpochs(len(shared["train"]), seed, global_batch, rank, world, start_epoch)
            total = (epochs - start_epoch) * where.rows_per_epoch
            return stream("train", where, total, train_transform)

        return factory

    def eval_stream(split: str, rank: int) -> Callable[[], Any]:
        def factory() -> Any:
            where = RankEvalRows(len(shared[split]), rank, world)
            return stream(split, where, where.length, eval_transform)

        return factory

    for start_epoch in range(epochs):
        for rank in range(world):
            datasets[train_stream_name(start_epoch, rank)] = train_stream(start_epoch, rank)
    for split in EVAL_SPLITS:
        for rank in range(world):
            datasets[eval_dataset_name(split, rank)] = eval_stream(split, rank)
    return datasets
