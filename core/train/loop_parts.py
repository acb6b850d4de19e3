"""The pieces every Ray Train worker of this project shares, whatever it trains.

The training stream cut into epochs, optimizer and schedule, precision, scalar all-reduce,
resume from the newest readable checkpoint, the per-epoch report with its checkpoint and
``metrics.jsonl``, and the test-only fault injection. Kept free of model imports so that a
worker loads only the model stack it uses.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import pickle
import posixpath
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow.fs as pafs
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
STATE_KEYS = ("model", "optimizer", "scheduler", "epoch", "history")
CHECKPOINT_PREFIX = "checkpoint_"


def train_epochs(
    rank: int,
    start_epoch: int,
    epochs: int,
    local_batch: int,
    steps: int,
    device: torch.device | None = None,
) -> Iterator[tuple[int, Iterator[dict[str, torch.Tensor]]]]:
    """``(epoch, its batches)`` for every epoch left, all read from the worker's one stream.

    The stream holds exactly ``steps`` batches of ``local_batch`` rows per epoch; each epoch's
    batches must be used up before the next epoch's are asked for. Batches arrive on ``device``
    (see :func:`batch_options`).
    """
    import ray.train

    if start_epoch >= epochs:
        # A finished run started again: nothing to train, and no stream exists for it.
        return
    shard = ray.train.get_dataset_shard(train_stream_name(start_epoch, rank))
    options = batch_options(device)
    stream = iter(shard.iter_torch_batches(batch_size=local_batch, drop_last=True, **options))
    for epoch in range(start_epoch, epochs):
        yield epoch, itertools.islice(stream, steps)


def batch_options(device: torch.device | None) -> dict[str, Any]:
    """``iter_torch_batches`` arguments that put batches on ``device`` without stalling the step.

    On a GPU, Ray Data's prefetch thread pins each batch's host memory and copies it
    ``non_blocking`` (Ray's default), so the copy overlaps the running step; pageable memory
    would make every copy wait. Elsewhere nothing changes (pinning needs a GPU).
    """
    if device is None:
        return {}
    if device.type == "cuda":
        return {"device": device, "pin_memory": True}
    return {"device": device}


def to_device(
    batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool = False
) -> dict[str, torch.Tensor]:
    """``batch`` on ``device``, copied without blocking the host (from pinned memory on a GPU);
    with ``channels_last`` its 4-D ``image`` in channels-last layout (``run.channels_last`` puts
    the model's convolution weights in that layout too). Tensors already there stay as they
    are."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.device != device:
            if device.type == "cuda" and value.device.type == "cpu" and not value.is_pinned():
                value = value.pin_memory()
            value = value.to(device, non_blocking=True)
        out[key] = value
    image = out.get("image")
    if channels_last and isinstance(image, torch.Tensor) and image.dim() == 4:
        out["image"] = image.contiguous(memory_format=torch.channels_last)
    return out


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(model)`` for ``run.compile``, else ``model``.

    Give it the DDP-wrapped model (DDP then splits the graph at its gradient buckets) and keep
    the uncompiled one for checkpoints and evaluation: its parameter names carry no
    ``_orig_mod.`` prefix. Compilation happens at the first step; where torch cannot compile
    (no dynamo for this Python, no C compiler), a warning says so and the model runs as it is,
    and a graph that fails to compile falls back to eager with a warning.
    """
    if not enabled:
        return model
    reason = compile_unsupported()
    if reason:
        log.warning("run.compile: skipped, %s; training runs uncompiled", reason)
        return model
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    return torch.compile(model)


def compile_unsupported() -> str:
    """Why ``torch.compile`` cannot run here, or "" when it can."""
    import shutil

    try:
        import torch._dynamo
    except ImportError as exc:  # a torch build without dynamo
        return f"torch._dynamo is unavailable ({exc})"
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "g++", "c++")):
        return "no C/C++ compiler on PATH (inductor needs one)"
    return ""


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


class UnreadableCheckpoint(Exception):
    """A checkpoint's training state that cannot be resumed from; the message says why."""


def read_training_state(fs: pafs.FileSystem, folder: str) -> dict[str, Any]:
    """The training state in ``folder`` (a path inside ``fs``), loaded as tensors only.

    ``weights_only=True`` is explicit, so a state file holding pickled code is refused even with
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set. A truncated, foreign or incomplete file raises
    :class:`UnreadableCheckpoint` with a one-line reason.
    """
    path = posixpath.join(folder, STATE_FILE)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            with fs.open_input_file(path) as f:
                state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused, reason = storage.torch_load_failure(exc)
        if refused:
            reason = f"refused: holds pickled objects other than tensors ({reason})"
        raise UnreadableCheckpoint(reason) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UnreadableCheckpoint(reason) from None
    if not isinstance(state, dict):
        raise UnreadableCheckpoint("not a training state (no mapping)")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise UnreadableCheckpoint(f"no {', '.join(missing)} entry")
    return state


def _check_fits(state: dict[str, Any], model: nn.Module) -> None:
    """Refuse a state whose model weights do not fit ``model`` before anything is loaded (a
    failed ``load_state_dict`` would leave the model half-overwritten)."""
    weights, expected = state["model"], model.state_dict()
    if not isinstance(weights, dict) or set(weights) != set(expected):
        raise UnreadableCheckpoint("its model weights have other names than this model's")
    wrong = [k for k, v in expected.items() if getattr(weights[k], "shape", None) != v.shape]
    if wrong:
        raise UnreadableCheckpoint(f"its model weights have other shapes ({wrong[0]})")


def _epoch_hint(fs: pafs.FileSystem, folder: str) -> int:
    """The epoch a checkpoint's ``meta.json`` names (cheap to read), or -1."""
    try:
        with fs.open_input_file(posixpath.join(folder, "meta.json")) as f:
            return int(json.loads(f.read()).get("epoch", -1))
    except (OSError, ValueError, TypeError, AttributeError):
        return -1


def checkpoint_candidates(fs: pafs.FileSystem, run_dir: str, exclude: str = "") -> list[str]:
    """The run folder's ``checkpoint_*`` folders other than ``exclude``, newest first: by the
    epoch their ``meta.json`` names, then by name (Ray Train names them by time)."""
    if fs.get_file_info(run_dir).type != pafs.FileType.Directory:
        return []
    folders = [
        item.path
        for item in fs.get_file_info(pafs.FileSelector(run_dir))
        if item.type == pafs.FileType.Directory
        and item.base_name.startswith(CHECKPOINT_PREFIX)
        and item.path.rstrip("/") != exclude.rstrip("/")
    ]
    return sorted(folders, key=lambda f: (_epoch_hint(fs, f), posixpath.basename(f)), reverse=True)


def find_resume_state(
    fs: pafs.FileSystem, latest: str, run_dir: str, model: nn.Module
) -> tuple[dict[str, Any] | None, str, list[tuple[str, str]]]:
    """(state, its folder, [(unreadable folder, why), ...]) for the newest usable checkpoint.

    ``latest`` (Ray Train's latest checkpoint; "" when it recorded none) is tried first, then
    the run folder's other checkpoints newest first; ``(None, "", failures)`` when none is usable.
    """
    failures: list[tuple[str, str]] = []
    first = [latest] if latest else []
    for folder in [*first, *checkpoint_candidates(fs, run_dir, exclude=latest)]:
        try:
            state = read_training_state(fs, folder)
            _check_fits(state, model)
            return state, folder, failures
        except UnreadableCheckpoint as exc:
            failures.append((folder, str(exc)))
    return None, "", failures


def _same_on_every_rank(epoch: int, device: torch.device) -> None:
    """Every worker must resume from the same epoch, or DDP would mix two models."""
    if group_size() <= 1:
        return
    values = torch.tensor([epoch, -epoch], dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    if int(values[0]) != epoch or int(-values[1]) != epoch:
        raise RuntimeError(
            f"workers found different checkpoints to resume from (epochs {int(-values[1])} to "
            f"{int(values[0])}); is the run folder's storage shared by every node?"
        )


def restore(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int,
    run_dir: str | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """Resume from Ray Train's latest checkpoint: (first epoch to run, history so far).

    An unreadable latest checkpoint (truncated, not a torch file, missing entries, another
    model's weights) does not fail the run, which Ray Train would retry to the same failure:
    the newest readable ``checkpoint_*`` folder of the run folder (``run_dir``, default the
    latest checkpoint's parent) is used instead, with one warning line; with none, training
    starts from scratch, also with one warning line.

    Ray Train records a report only when its controller next polls the workers: a run stopped
    right after an epoch's report (a killed job, a worker lost with no retries left) can leave
    that epoch's checkpoint written but unrecorded, or nothing recorded at all. With no recorded
    checkpoint, the run folder's own checkpoints are used, newest first, so the rerun of a
    stopped job still continues where it stopped.
    """
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint and not run_dir:
        return 0, []
    latest = checkpoint.path.rstrip("/") if checkpoint else ""
    if run_dir:
        fs, run_inner = storage.resolve(run_dir)
    else:
        fs, run_inner = checkpoint.filesystem, posixpath.dirname(latest)
    state, used, failures = find_resume_state(fs, latest, run_inner, model)
    device = next(iter(model.parameters()), torch.zeros(())).device
    _same_on_every_rank(state["epoch"] if state else -1, device)
    say = log.warning if rank == 0 else log.debug
    if failures:
        bad, why = failures[0]
        others = f" ({len(failures) - 1} more unreadable)" if len(failures) > 1 else ""
        where = (
            f"resuming from {posixpath.join(used, STATE_FILE)}"
            if state
            else "no readable checkpoint left: training from scratch"
        )
        say("%s is unreadable (%s)%s; %s", posixpath.join(bad, STATE_FILE), why, others, where)
    if state is None:
        return 0, []
    if not checkpoint:
        say(
            "Ray Train recorded no checkpoint of this run (it stopped before recording a report); "
            "resuming from the run folder's %s",
            posixpath.join(used, STATE_FILE),
        )
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    model.load_state_dict(state["model"])
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
        # NaN stays NaN here until engine.read_history turns null back into NaN: the readers
        # of the history (job summaries, best-val selection) do arithmetic on these values.
        lines = "".join(storage.dumps_json(m) + "\n" for m in history)
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
