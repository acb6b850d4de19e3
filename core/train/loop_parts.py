"""The pieces every Ray Train worker of this project shares, whatever it trains.

The training stream cut into epochs, optimizer and schedule, precision, scalar all-reduce,
resume from a checkpoint, the per-epoch report with its checkpoint and ``metrics.jsonl``, and the
test-only fault injection. Kept free of model imports so that a worker loads only the model
stack it uses.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from core import storage
from core.config import OptimConfig
from core.train.image_data import train_stream_name
from core.train.schedule import build_scheduler

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
FAULT_MARKER = "_fault_injected"


def train_epochs(
    rank: int, start_epoch: int, epochs: int, local_batch: int, steps: int
) -> Iterator[tuple[int, Iterator[dict[str, torch.Tensor]]]]:
    """``(epoch, its batches)`` for every epoch left, all read from the worker's one stream.

    The stream holds exactly ``steps`` batches of ``local_batch`` rows per epoch; each epoch's
    batches must be used up before the next epoch's are asked for.
    """
    import ray.train

    shard = ray.train.get_dataset_shard(train_stream_name(start_epoch, rank))
    stream = iter(shard.iter_torch_batches(batch_size=local_batch, drop_last=True))
    for epoch in range(start_epoch, epochs):
        yield epoch, itertools.islice(stream, steps)


def group_size() -> int:
    """Workers in the process group (1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over the worker group (a no-op with one worker)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if group_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def autocast(device: torch.device, enabled: bool) -> Any:
    """bfloat16 autocast on GPUs that have it, float16 otherwise; nothing on CPU."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """A loss scaler that is active only for float16 autocast (bfloat16 needs none)."""
    needed = enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler("cuda", enabled=needed)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def build_optimizer(
    encoder: Iterable[nn.Parameter],
    head: Iterable[nn.Parameter],
    optim: OptimConfig,
    steps_per_epoch: int,
    epochs: int,
) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW with separate encoder and head learning rates; warmup then cosine, per step."""
    optimizer = torch.optim.AdamW(
        [
            {"params": list(encoder), "lr": optim.encoder_lr},
            {"params": list(head), "lr": optim.head_lr},
        ],
        weight_decay=optim.weight_decay,
    )
    scheduler = build_scheduler(
        optimizer,
        warmup_steps=round(optim.warmup_epochs * steps_per_epoch),
        total_steps=epochs * steps_per_epoch,
        floor=optim.min_lr_ratio,
    )
    return optimizer, scheduler


def restore(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int
) -> tuple[int, list[dict[str, Any]]]:
    """Load Ray Train's latest checkpoint if there is one: (first epoch to run, history so far)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return 0, []
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    log.info("rank %d resumed after epoch %d", rank, state["epoch"])
    return state["epoch"] + 1, state["history"]


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    history: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    """What ``restore`` reads back, plus the job's own entries."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "history": history,
        **extra,
    }


def report_epoch(
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    state: dict[str, Any],
    write_extra: Callable[[str], None],
    run_dir: str,
    rank: int,
) -> None:
    """Every worker reports (it is a barrier); only rank 0 writes a checkpoint and the metrics.

    ``state`` comes from ``training_state``; ``write_extra(folder)`` adds the job's own files.
    """
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, os.path.join(folder, STATE_FILE))
        write_extra(folder)
        lines = "".join(json.dumps(m) + "\n" for m in history)
        storage.write_bytes(storage.join(run_dir, METRICS_FILE), lines.encode())
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def maybe_inject_fault(fail_at_epoch: int, run_dir: str, epoch: int, rank: int) -> None:
    """Fault injection for tests: the last worker dies once, mid-epoch ``fail_at_epoch``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if fail_at_epoch != epoch or rank != world - 1:
        return
    marker = storage.join(run_dir, FAULT_MARKER)
    if storage.exists(marker):
        return
    storage.write_bytes(marker, f"worker {rank} killed in epoch {epoch}\n".encode())
    log.warning("fault injection: killing worker %d in epoch %d", rank, epoch)
    os._exit(1)
