"""Per-block cost of a training stream as the split grows: it must not depend on the row count.

Streams the first blocks of rank 0's training stream, built by ``build_train_datasets`` exactly as
a run builds it, with decoding and the transform stubbed out (every row's input is a 3x2x2 zero
array, no file is read), so what is left is the data layer's own cost: Ray Data's task, planning
the epoch's row order, finding each block's rows and labels, and shipping the batch function to
each decoding task. Settings: 100k and 1.2M rows with one worker, and 1.2M rows with
8 workers (rank 0's stream); blocks of 256 rows (local batch 64) in each. The settings run in
turn, ``--rounds`` times over, on one local Ray, and each setting's median round is kept, so load
from other processes hits all of them alike. A block's cost is the wall time between the stream's
``--warmup``-th block and its last, over the blocks in between.

``--baseline`` adds the design this replaced, for reference: the split's ids, paths and labels
carried inside the batch function as Python lists, so every decoding task unpickles them.

Last line: ``per_block_ms_100k=A per_block_ms_1200k=B ratio=B/A`` (one worker each).

    python benchmarks/data_scale.py [--blocks 200] [--rounds 3] [--baseline] [--rows-10m]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np
import pyarrow as pa
import torch

from core.train.image_data import (
    RankEpochs,
    SharedRows,
    StreamBatches,
    TransformImages,
    build_train_datasets,
    train_stream_name,
)

LOCAL_BATCH = 64  # rows per worker per step; a block is 4 local batches = 256 rows
TINY = np.zeros((3, 2, 2), dtype=np.float32)


class StubImages(TransformImages):
    """Decoding and transform without files: every row's input is a 3x2x2 zero array."""

    @classmethod
    def row_table(cls, rows: Any) -> pa.Table:
        return rows  # the benchmark's splits are already row tables

    def image(self, path: str, row: int, epoch: int) -> np.ndarray:
        return TINY


class ListRows:
    """The replaced design's rows: Python lists inside the batch function, which every decoding
    task unpickled whole."""

    def __init__(self, table: pa.Table) -> None:
        self.ids = table.column("id").to_pylist()
        self.paths = table.column("path").to_pylist()
        self.labels = table.column("label").to_numpy()

    def take(self, rows: np.ndarray) -> pa.Table:
        return pa.table(
            {
                "id": [self.ids[r] for r in rows.tolist()],
                "path": [self.paths[r] for r in rows.tolist()],
                "label": self.labels[rows],
            }
        )


def tiny_transform(image: Any) -> torch.Tensor:
    return torch.from_numpy(TINY)


def row_table(num_rows: int) -> pa.Table:
    """An ImageNet-like split: ``n<synset>/n<synset>_<i>.JPEG`` paths, 1000 classes."""
    ids = [str(i) for i in range(num_rows)]
    paths = [
        f"/data/imagenet/train/n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG" for i in range(num_rows)
    ]
    labels = np.arange(num_rows, dtype=np.int64) % 1000
    return pa.table({"id": ids, "path": paths, "label": labels})


@dataclass
class Setting:
    name: str
    table: pa.Table
    world: int
    inline: bool = False  # the replaced design: the table inside the batch function
    blocks: int = 0

    def stream(self) -> tuple[Any, int]:
        """(rank 0's stream of epoch 0, bytes each decoding task unpickles for the function)."""
        import ray.data

        global_batch = LOCAL_BATCH * self.world
        tiny = self.table.slice(0, 8)
        if self.inline:
            where = RankEpochs(self.table.num_rows, 0, global_batch, 0, self.world, 0)
            decode = StubImages(self.table.slice(0, 0), tiny_transform, seed=0)
            decode.rows = ListRows(self.table)
            fn = StreamBatches(where, decode)
            total = where.rows_per_epoch
            dataset = ray.data.range(total, override_num_blocks=-(-total // (4 * LOCAL_BATCH)))
            dataset = dataset.map_batches(fn, batch_format="numpy", batch_size=None)
            return dataset, len(cloudpickle.dumps(fn))
        datasets = build_train_datasets(
            {"train": self.table, "val": tiny, "test": tiny},
            tiny_transform,
            tiny_transform,
            seed=0,
            epochs=1,
            global_batch=global_batch,
            world=self.world,
            batch_class=StubImages,
        )
        where = RankEpochs(self.table.num_rows, 0, global_batch, 0, self.world, 0)
        shared = SharedRows.put(self.table.slice(0, 1))  # a reference pickles alike at any size
        fn = StreamBatches(where, StubImages(shared, tiny_transform, seed=0))
        return datasets[train_stream_name(0, 0)](), len(cloudpickle.dumps(fn))


def per_block_ms(setting: Setting, blocks: int, warmup: int) -> tuple[float, int]:
    """Wall milliseconds per 256 rows between block ``warmup`` and block ``blocks`` (``range``
    cuts the stream into blocks of about 256 rows)."""
    dataset, fn_bytes = setting.stream()
    start, rows = 0.0, 0
    batches = dataset.iter_batches(batch_size=None, batch_format="numpy")
    for seen, batch in enumerate(batches, start=1):
        assert batch["valid"].all()
        if seen == warmup:
            start = time.perf_counter()
        elif seen > warmup:
            rows += len(batch["row"])
        if seen == blocks:
            break
    return (time.perf_counter() - start) / rows * 4 * LOCAL_BATCH * 1e3, fn_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=200, help="blocks streamed per setting")
    parser.add_argument("--warmup", type=int, default=20, help="blocks before the clock starts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", action="store_true", help="add the replaced design")
    parser.add_argument("--rows-10m", action="store_true", help="add a 10M-row split")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    small, large = row_table(100_000), row_table(1_200_000)
    settings = [
        Setting("rows=100000 workers=1", small, 1),
        Setting("rows=1200000 workers=1", large, 1),
        Setting("rows=1200000 workers=8", large, 8),
    ]
    if args.rows_10m:
        settings.append(Setting("rows=10000000 workers=1", row_table(10_000_000), 1))
    if args.baseline:
        fewer = max(args.warmup + 10, args.blocks // 4)
        settings.append(Setting("rows=100000 workers=1 table-in-function", small, 1, True, fewer))
        settings.append(Setting("rows=1200000 workers=1 table-in-function", large, 1, True, fewer))
    times: dict[str, list[float]] = {s.name: [] for s in settings}
    fn_bytes: dict[str, int] = {}
    for _ in range(args.rounds):
        for setting in settings:
            ms, fn_bytes[setting.name] = per_block_ms(
                setting, setting.blocks or args.blocks, args.warmup
            )
            times[setting.name].append(ms)
    for setting in settings:
        runs = " ".join(f"{t:.1f}" for t in times[setting.name])
        print(
            f"{setting.name} rank=0: per_block_ms={statistics.median(times[setting.name]):.1f} "
            f"(rounds: {runs}) batch_function_bytes={fn_bytes[setting.name]}"
        )
    a = statistics.median(times[settings[0].name])
    b = statistics.median(times[settings[1].name])
    print(f"per_block_ms_100k={a:.1f} per_block_ms_1200k={b:.1f} ratio={b / a:.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
