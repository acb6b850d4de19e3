"""The per-(rank, epoch) data plan: every worker count sees the same global batches."""

from __future__ import annotations

import numpy as np
import pytest

from core.train.image_data import (
    RankEpochs,
    StreamBatches,
    epoch_order,
    rank_eval_rows,
    rank_train_rows,
    row_seed,
    steps_per_epoch,
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
