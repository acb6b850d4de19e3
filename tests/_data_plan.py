"""What the data plan says a run trains on, computed here from the epoch order alone."""

from __future__ import annotations


def expected_skips(num_train: int, bad: int, batch: int, epochs: int, seed: int = 0) -> list[int]:
    """Unreadable rows each epoch trains on: the ``bad`` last of ``num_train`` training rows that
    fall in the epoch's full global batches of ``batch`` (the last partial batch is dropped)."""
    from core.train.image_data import epoch_order

    used = (num_train // batch) * batch
    return [
        int((epoch_order(num_train, seed, e)[:used] >= num_train - bad).sum())
        for e in range(epochs)
    ]
