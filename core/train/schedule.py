"""Learning-rate schedule: linear warmup, then cosine decay to a floor, stepped per batch."""

from __future__ import annotations

import math

import torch


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, floor: float) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based, before the step is taken).

    Warmup rises linearly from ``1/(warmup_steps+1)`` to 1 so the first step is never at lr 0;
    afterwards a half cosine falls from 1 to ``floor`` at ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, floor: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """One LambdaLR for every parameter group, so encoder and head keep their lr ratio."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps, floor)
    )
