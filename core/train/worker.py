"""The one Ray Train worker loop, for every method.

``train_loop_per_worker`` reads only its config dict: the method's name, its config, the run
folder and the method's payload. Each epoch the worker trains on its own deterministic stream
(:mod:`core.train.image_data`), adds up the method's step sums on the device (no host
synchronisation per step), all-reduces them once, evaluates its share of each evaluation split,
and reports the epoch's metrics with a checkpoint (rank 0 writes it). Rows whose image could
not be decoded arrive with ``valid == 0``: methods leave them out of their losses and metrics,
the epoch counts them (``skipped_images``), and past ``run.max_bad_images`` every worker stops
before reporting that epoch. The checkpoint holds
model, optimizer, scheduler, epoch and the metric history, so a restarted worker group resumes
at the next epoch and ``metrics.jsonl`` lists every epoch exactly once.

Batches arrive on the device (on a GPU copied from pinned memory without blocking, by Ray Data's
prefetch thread). ``run.channels_last`` puts convolution weights and images in channels-last
layout; ``run.compile`` trains a ``torch.compile``d model (checkpoints and evaluation use the
uncompiled one, the same parameters). The one host synchronisation a step may still make is the
float16 loss scaler's overflow check, on GPUs without bfloat16.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import torch

from core.config import config_from_dict
from core.train.image_data import eval_dataset_name, steps_per_epoch
from core.train.loop_parts import (
    autocast,
    batch_options,
    build_optimizer,
    grad_scaler,
    maybe_compile,
    maybe_inject_fault,
    report_epoch,
    restore,
    to_device,
    train_epochs,
    training_state,
    unwrap,
)
from core.train.method import WorkerContext
from core.train.registry import get_method


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One worker of any method's run; see the module docstring."""
    import ray.train
    import ray.train.torch

    method = get_method(config["method"])
    cfg = config_from_dict(method.config_class, config["cfg"])
    run = cfg.run
    context = ray.train.get_context()
    ctx = WorkerContext(
        rank=context.get_world_rank(),
        world=context.get_world_size(),
        device=ray.train.torch.get_device(),
        run_dir=config["run_dir"],
        amp=run.amp,
    )
    torch.manual_seed(run.seed)

    part = method.worker(cfg, config["payload"], ctx)
    model = part.model
    if run.channels_last:  # before DDP: every worker's parameters in the same layout
        model = model.to(memory_format=torch.channels_last)
    if part.group_batch_norm and ctx.world > 1:
        from core.train.group_batch_norm import sync_batch_norm

        model = sync_batch_norm(model, ctx.device)
    model = ray.train.torch.prepare_model(model)
    core_model = unwrap(model)
    model = maybe_compile(model, run.compile)  # core_model stays uncompiled
    steps = steps_per_epoch(config["num_train"], run.batch_size)
    encoder, head = part.param_groups(core_model)
    optimizer, scheduler = build_optimizer(encoder, head, cfg.optim, steps, run.epochs)
    scaler = grad_scaler(ctx.device, run.amp)
    start_epoch, history = restore(core_model, optimizer, scheduler, ctx.rank, ctx.run_dir)

    local_batch = run.batch_size // ctx.world
    fault_step = min(1, steps - 1)
    limit = run.bad_image_limit(steps * run.batch_size)
    epochs = train_epochs(ctx.rank, start_epoch, run.epochs, local_batch, steps, ctx.device)
    for epoch, batches in epochs:
        epoch_start = time.perf_counter()
        part.start_epoch(epoch)
        model.train()
        totals: dict[str, torch.Tensor] = {}
        skipped = torch.zeros((), dtype=torch.float64, device=ctx.device)
        done = 0
        for step, batch in enumerate(batches):
            if step == fault_step:
                maybe_inject_fault(run.fail_at_epoch, ctx.run_dir, epoch, ctx.rank)
            # Gradients are dropped before the forward, so the last step's do not sit in memory
            # beside this step's activations.
            optimizer.zero_grad(set_to_none=True)
            batch = to_device(batch, ctx.device, run.channels_last)  # no copy: already there
            with autocast(ctx.device, run.amp):
                result = part.step(model, batch)
            scaler.scale(result.loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            for key, value in result.sums.items():
                value = value.detach().to(torch.float64)
                totals[key] = totals[key] + value if key in totals else value
            if "valid" in batch:
                skipped += (batch["valid"] == 0).sum().to(ctx.device, torch.float64)
            done += 1
        train_seconds = time.perf_counter() - epoch_start
        keys = sorted(totals)
        *summed, group_skipped = ctx.all_reduce_sum(
            [float(v) for v in _stack(totals, keys)] + [float(skipped)]
        )
        if group_skipped > limit:
            # Every worker has the same sum, so all stop here together, before the report
            # barrier; the driver names the files (core.train.engine).
            return
        metrics: dict[str, Any] = {
            "epoch": epoch,
            **part.train_metrics(dict(zip(keys, summed, strict=True)), max(done, 1)),
            "skipped_images": int(group_skipped),
            "lr_encoder": optimizer.param_groups[0]["lr"],
            "lr_head": optimizer.param_groups[1]["lr"],
            "train_seconds": train_seconds,
        }
        eval_start = time.perf_counter()
        for split in config["eval_splits"]:
            shard = ray.train.get_dataset_shard(eval_dataset_name(split, ctx.rank))
            eval_batches = (
                to_device(b, ctx.device, run.channels_last)
                for b in shard.iter_torch_batches(
                    batch_size=local_batch, **batch_options(ctx.device)
                )
            )
            metrics.update(part.evaluate(core_model, split, eval_batches))
        metrics["eval_seconds"] = time.perf_counter() - eval_start
        metrics["epoch_seconds"] = time.perf_counter() - epoch_start
        history.append(metrics)
        report_epoch(
            metrics,
            history,
            training_state(
                core_model, optimizer, scheduler, epoch, history, **part.checkpoint_state()
            ),
            functools.partial(
                part.write_checkpoint_files, model=core_model, epoch=epoch, metrics=metrics
            ),
            ctx.run_dir,
            ctx.rank,
        )


def _stack(totals: dict[str, torch.Tensor], keys: list[str]) -> list[torch.Tensor]:
    """The epoch's sums in key order, moved to the host in one transfer."""
    if not keys:
        return []
    return list(torch.stack([totals[k] for k in keys]).cpu())
