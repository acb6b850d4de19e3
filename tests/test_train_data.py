"""The per-(rank, epoch) data plan: every worker count sees the same global batches, and an
unreadable image becomes a marked zero row instead of a failed run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
from PIL import Image

from core.train.image_data import (
    LabelledRows,
    RankEpochs,
    SharedRows,
    StreamBatches,
    TransformImages,
    build_train_datasets,
    epoch_order,
    eval_dataset_name,
    rank_eval_rows,
    rank_train_rows,
    read_bad_images,
    row_seed,
    steps_per_epoch,
    train_stream_name,
)
from core.train.schedule import warmup_cosine_factor


@pytest.mark.parametrize("world", [1, 2, 4])
def test_union_of_rank_slices_is_the_one_worker_batch(world: int) -> None:
    n, batch, seed, epoch = 103, 8, 7, 3
    single = rank_train_rows(n, seed, epoch, batch, 0, 1).reshape(-1, batch)
    parts = [rank_train_rows(n, seed, epoch, batch, r, world) for r in range(world)]
    local = batch // world
    assert all(len(p) == steps_per_epoch(n, batch) * local for p in parts)
    for step in range(single.shape[0]):
        union = np.concatenate([p[step * local : (step + 1) * local] for p in parts])
        assert np.array_equal(union, single[step])
    # Every row is used at most once per epoch; only the last partial batch is dropped.
    used = np.concatenate(parts)
    assert len(set(used.tolist())) == len(used) == (n // batch) * batch


def test_epochs_shuffle_differently_and_reproducibly() -> None:
    assert np.array_equal(epoch_order(50, 1, 0), epoch_order(50, 1, 0))
    assert not np.array_equal(epoch_order(50, 1, 0), epoch_order(50, 1, 1))
    assert not np.array_equal(epoch_order(50, 1, 0), epoch_order(50, 2, 0))
    assert sorted(epoch_order(50, 1, 4).tolist()) == list(range(50))


def test_eval_rows_cover_everything_once() -> None:
    parts = [rank_eval_rows(11, r, 3) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(11))


def test_batch_not_multiple_of_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 3 workers"):
        rank_train_rows(20, 0, 0, 8, 0, 3)


def test_row_seed_depends_on_seed_epoch_row_only() -> None:
    assert row_seed(1, 2, 3) == row_seed(1, 2, 3)
    assert len({row_seed(1, 2, 3), row_seed(1, 2, 4), row_seed(1, 3, 3), row_seed(2, 2, 3)}) == 4


@pytest.mark.parametrize(("world", "rank", "start"), [(1, 0, 0), (2, 1, 0), (2, 0, 2)])
def test_a_stream_is_its_epochs_rows_back_to_back(world: int, rank: int, start: int) -> None:
    """Position p of a worker's stream from ``start`` is its row p % n of epoch start + p // n:
    the same rows, epochs and order as one stream per epoch would give."""
    num_rows, seed, batch, epochs = 37, 5, 8, 4  # 4 steps of 8 per epoch, 5 rows dropped
    where = RankEpochs(num_rows, seed, batch, rank, world, start)
    assert where.rows_per_epoch == 4 * batch // world
    expected_rows = np.concatenate(
        [rank_train_rows(num_rows, seed, e, batch, rank, world) for e in range(start, epochs)]
    )
    expected_epochs = np.repeat(np.arange(start, epochs), where.rows_per_epoch)
    positions = np.arange(len(expected_rows))
    # Blocks of any size, across epoch boundaries, locate alike.
    for cut in (1, 5, len(positions)):
        parts = [where.locate(positions[i : i + cut]) for i in range(0, len(positions), cut)]
        rows = np.concatenate([p[0] for p in parts])
        epochs_of = np.concatenate([p[1] for p in parts])
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(epochs_of, expected_epochs)
    seen = StreamBatches(where, lambda batch: batch)({"id": np.array([0, where.rows_per_epoch])})
    assert seen["epoch"].tolist() == [start, start + 1]
    assert seen["row"].tolist() == [expected_rows[0], expected_rows[where.rows_per_epoch]]


def test_warmup_then_cosine() -> None:
    # 2 warmup steps: 1/3, 2/3; then cosine over 8 steps from 1 to the floor 0.1.
    assert warmup_cosine_factor(0, 2, 10, 0.1) == pytest.approx(1 / 3)
    assert warmup_cosine_factor(1, 2, 10, 0.1) == pytest.approx(2 / 3)
    assert warmup_cosine_factor(2, 2, 10, 0.1) == pytest.approx(1.0)
    assert warmup_cosine_factor(6, 2, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine_factor(10, 2, 10, 0.1) == pytest.approx(0.1)
    assert warmup_cosine_factor(0, 0, 4, 0.0) == pytest.approx(1.0)


# --- Streams over unreadable images: zero rows with valid == 0, recorded once, never fatal ---

BAD = {"missing.png": "file not found", "empty.png": "empty file", "text.png": "not a recognised"}


def _image_split(folder: Path, good: int) -> LabelledRows:
    """``good`` coloured PNGs, then a missing file, a zero-byte file and a text file."""
    paths = []
    for i in range(good):
        path = folder / f"good{i}.png"
        Image.new("RGB", (12, 10), (40 + 20 * i, 200 - 10 * i, 90)).save(path)
        paths.append(str(path))
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image\n")
    paths += [str(folder / name) for name in BAD]  # missing.png is never written
    labels = np.arange(len(paths), dtype=np.int64) % 3
    return LabelledRows([f"id{i}" for i in range(len(paths))], paths, labels)


def _transform() -> Any:
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(8, scale=(0.5, 1.0)), T.ToTensor()])


@pytest.fixture
def ordered_streams(ray_local):
    """Blocks come out in stream order (as Ray Train's DataConfig asks for)."""
    import ray.data

    options = ray.data.DataContext.get_current().execution_options
    before = options.preserve_order
    options.preserve_order = True
    yield ray_local
    options.preserve_order = before


def _collect(dataset: Any) -> dict[str, np.ndarray]:
    batches = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def test_bad_images_become_zero_rows_and_are_recorded(ordered_streams, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    train = _image_split(folder, good=9)  # 12 rows = 3 global batches of 4: none dropped
    bad_rows = {9, 10, 11}
    splits = {"train": train, "val": _image_split(folder, good=0), "test": _image_split(folder, 1)}
    record_dir = str(tmp_path / "bad_images")
    datasets = build_train_datasets(
        splits,
        _transform(),
        _transform(),
        seed=3,
        epochs=2,
        global_batch=4,
        world=1,
        bad_images_dir=record_dir,
    )
    out = _collect(datasets[train_stream_name(0, 0)]())
    assert len(out["row"]) == 24  # two epochs, each row once per epoch
    for epoch in range(2):
        rows = out["row"][epoch * 12 : (epoch + 1) * 12]
        assert sorted(rows.tolist()) == list(range(12))
    assert out["valid"].dtype == np.uint8
    np.testing.assert_array_equal(out["valid"], [0 if r in bad_rows else 1 for r in out["row"]])
    assert out["image"].shape == (24, 3, 8, 8)
    assert not out["image"][out["valid"] == 0].any()
    assert all(image.any() for image in out["image"][out["valid"] == 1])
    np.testing.assert_array_equal(out["label"], train.labels[out["row"]])

    # A split whose images all fail still comes out with the transform's shapes.
    val = _collect(datasets[eval_dataset_name("val", 0)]())
    assert val["image"].shape == (3, 3, 8, 8) and not val["image"].any()
    assert val["valid"].tolist() == [0, 0, 0] and val["row"].tolist() == [0, 1, 2]

    records = read_bad_images(record_dir)
    expected = [("train", 9), ("train", 10), ("train", 11), ("val", 0), ("val", 1), ("val", 2)]
    assert [(r["split"], r["row"]) for r in records] == expected
    assert [r["epoch"] for r in records] == [0, 0, 0, -1, -1, -1]  # train: the earliest epoch
    for record in records:
        rows = splits[record["split"]]
        assert record["path"] == rows.paths[record["row"]]
        assert record["id"] == rows.ids[record["row"]]
        assert BAD[Path(record["path"]).name] in record["reason"], record
    # Only the streams that ran recorded anything: the unread test split left no file.
    assert all(not name.startswith("test") for name in os.listdir(record_dir))


def test_two_workers_see_the_one_worker_batches_with_bad_images(
    ordered_streams, tmp_path: Path
) -> None:
    train = _image_split(tmp_path, good=9)
    splits = {"train": train, "val": train, "test": train}
    outs = {}
    for world in (1, 2):
        datasets = build_train_datasets(
            splits, _transform(), _transform(), seed=5, epochs=1, global_batch=4, world=world
        )
        outs[world] = [_collect(datasets[train_stream_name(0, r)]()) for r in range(world)]
    single, parts = outs[1][0], outs[2]
    for key in ("row", "valid", "label", "image"):
        steps = [p[key].reshape(3, 2, *p[key].shape[1:]) for p in parts]
        union = np.concatenate(steps, axis=1).reshape(single[key].shape)
        np.testing.assert_array_equal(union, single[key], err_msg=key)
    # Every worker's eval share together is the split once.
    evals = [_collect(datasets[eval_dataset_name("test", r)]()) for r in range(2)]
    assert sorted(np.concatenate([e["row"] for e in evals]).tolist()) == list(range(12))


def test_multilabel_batches_keep_targets_and_mark_bad_rows(tmp_path: Path) -> None:
    from core.train.multilabel_data import MultiLabelRows, TransformMultiLabelImages

    base = _image_split(tmp_path, good=2)  # rows 0, 1 good; 2, 3, 4 bad
    offsets = np.array([0, 2, 2, 3, 5, 6], dtype=np.int64)
    label_index = np.array([0, 3, 1, 2, 4, 0], dtype=np.int32)
    rows = MultiLabelRows(base.ids, base.paths, offsets, label_index, num_labels=5)
    decode = TransformMultiLabelImages(
        rows, _transform(), seed=0, split="train", bad_images_dir=str(tmp_path / "bad")
    )
    batch = decode({"row": np.array([3, 0, 4, 1]), "epoch": np.zeros(4, np.int64)})
    assert batch["valid"].tolist() == [0, 1, 0, 1]
    assert batch["image"].shape == (4, 3, 8, 8) and not batch["image"][[0, 2]].any()
    np.testing.assert_array_equal(batch["targets"], rows.dense([3, 0, 4, 1]))
    all_bad = decode({"row": np.array([2, 4]), "epoch": np.full(2, 1)})
    assert all_bad["image"].shape == (2, 3, 8, 8) and all_bad["targets"].shape == (2, 5)
    recorded = read_bad_images(str(tmp_path / "bad"))
    assert [(r["row"], r["epoch"]) for r in recorded] == [(2, 1), (3, 0), (4, 0)]


def test_the_batch_function_carries_a_reference_not_the_split(ray_local) -> None:
    """What every decoding task unpickles stays small however many rows the split has."""
    n = 200_000
    rows = LabelledRows(
        [str(i) for i in range(n)],
        [f"/data/train/class{i % 1000}/image_{i:08d}.jpg" for i in range(n)],
        np.arange(n, dtype=np.int64) % 1000,
    )
    where = RankEpochs(n, 0, 512, 3, 8, 0)
    shared = SharedRows.put(TransformImages.row_table(rows))
    fn = StreamBatches(where, TransformImages(shared, _transform(), seed=0))
    assert len(cloudpickle.dumps(fn)) < 20_000
    taken = cloudpickle.loads(cloudpickle.dumps(fn)).inner.rows.take(np.array([5, n - 1]))
    assert taken.column("path").to_pylist() == [rows.paths[5], rows.paths[n - 1]]


def test_epoch_order_is_shared_by_every_rank() -> None:
    """Ranks locate their rows from one cached permutation per epoch, not one per rank."""
    from core.train.image_data import _cached_epoch_order

    _cached_epoch_order.cache_clear()
    for rank in range(8):
        where = RankEpochs(1000, 4, 64, rank, 8, 0)
        rows, _ = where.locate(np.arange(where.rows_per_epoch))
        np.testing.assert_array_equal(rows, rank_train_rows(1000, 4, 0, 64, rank, 8))
    assert _cached_epoch_order.cache_info().misses == 1
