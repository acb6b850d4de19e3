"""The Ray Train worker of LMM-regularized CLIP: ``J = CE + alpha * ||x - C[label]||^2``.

``train_loop_per_worker`` reads only its config dict. Each epoch it trains on its own
deterministic stream (see ``core.train.image_data``), evaluates its share of val and test,
all-reduces the sums, and reports the epoch's metrics with a checkpoint (rank 0 writes it). The
checkpoint holds model, optimizer, scheduler, epoch and the metric history, so a restarted worker
group resumes at the next epoch and ``metrics.jsonl`` lists every epoch exactly once.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import torch

from core.config import TrainRegularizedConfig, config_from_dict
from core.losses import regularized_ce_loss
from core.models.clip_classifier import ClipClassifier, build_classifier, save_classifier
from core.text.class_means import load_class_means
from core.train.image_data import eval_dataset_name, steps_per_epoch
from core.train.loop_parts import (
    all_reduce_sum,
    autocast,
    build_optimizer,
    grad_scaler,
    maybe_inject_fault,
    report_epoch,
    restore,
    train_epochs,
    training_state,
    unwrap,
)

log = logging.getLogger(__name__)


def load_means_for(cfg: TrainRegularizedConfig, path: str, classes: list[str]) -> torch.Tensor:
    """The class means in the manifest's class order; mismatches are errors naming both sides."""
    means = load_class_means(path, cfg.prompt)
    if list(means.classes) != list(classes):
        missing = sorted(set(classes) - set(means.classes))
        extra = sorted(set(means.classes) - set(classes))
        raise ValueError(
            f"{path}: class means do not match the manifest's classes "
            f"(missing {missing[:5]}, extra {extra[:5]}); rebuild them from this manifest"
        )
    return means.means.float()


def evaluate(model: torch.nn.Module, batches: Any, device: torch.device, amp: bool) -> list[float]:
    """(correct, count) of this worker's share of a split."""
    correct = count = 0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device)
            with autocast(device, amp):
                logits, _ = model(images)
            correct += int((logits.argmax(dim=1) == labels).sum())
            count += int(labels.numel())
    return [float(correct), float(count)]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One worker of the regularized training run; see the module docstring."""
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(TrainRegularizedConfig, config["cfg"])
    classes: list[str] = config["classes"]
    run_dir: str = config["run_dir"]
    n_train: int = config["num_train"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)

    means = load_means_for(cfg, config["class_means"], classes).to(device)
    model, bundle = build_classifier(cfg.clip, len(classes))
    if means.shape[1] != bundle.embed_dim:
        raise ValueError(
            f"class means have dimension {means.shape[1]} but {cfg.clip.model_name} embeds images "
            f"in {bundle.embed_dim}; build the means with the same CLIP model"
        )
    model = ray.train.torch.prepare_model(model)
    core_model: ClipClassifier = unwrap(model)
    optimizer, scheduler = build_optimizer(
        core_model.encoder.parameters(),
        core_model.head.parameters(),
        cfg.optim,
        steps_per_epoch(n_train, cfg.batch_size),
        cfg.epochs,
    )
    scaler = grad_scaler(device, cfg.amp)
    start_epoch, history = restore(core_model, optimizer, scheduler, rank)

    local_batch = cfg.batch_size // world
    steps = steps_per_epoch(n_train, cfg.batch_size)
    for epoch, batches in train_epochs(rank, start_epoch, cfg.epochs, local_batch, steps):
        epoch_start = time.perf_counter()
        model.train()
        sums = [0.0] * 4  # ce*n, reg*n, correct, n
        for step, batch in enumerate(batches):
            if step == 1:
                maybe_inject_fault(cfg.fail_at_epoch, run_dir, epoch, rank)
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device)
            with autocast(device, cfg.amp):
                logits, x = model(images)
            terms = regularized_ce_loss(logits, x, labels, means, cfg.alpha)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            n = labels.numel()
            sums[0] += float(terms["ce"]) * n
            sums[1] += float(terms["reg"]) * n
            sums[2] += float((logits.argmax(dim=1) == labels).sum())
            sums[3] += n
        train_seconds = time.perf_counter() - epoch_start
        ce, reg, correct, n = all_reduce_sum(sums, device)
        val = all_reduce_sum(
            evaluate(model, _eval_batches("val", rank, local_batch), device, cfg.amp), device
        )
        test = all_reduce_sum(
            evaluate(model, _eval_batches("test", rank, local_batch), device, cfg.amp), device
        )
        metrics = {
            "epoch": epoch,
            "alpha": cfg.alpha,
            "train_loss": (ce + cfg.alpha * reg) / max(n, 1),
            "train_ce": ce / max(n, 1),
            "train_reg": reg / max(n, 1),
            "train_acc": correct / max(n, 1),
            "val_acc": val[0] / val[1] if val[1] else float("nan"),
            "test_acc": test[0] / test[1] if test[1] else float("nan"),
            "lr_encoder": optimizer.param_groups[0]["lr"],
            "lr_head": optimizer.param_groups[1]["lr"],
            "train_seconds": train_seconds,
            "epoch_seconds": time.perf_counter() - epoch_start,
        }
        history.append(metrics)

        meta = {
            "clip": {
                "model_name": cfg.clip.model_name,
                "pretrained": cfg.clip.pretrained,
                "seed": cfg.clip.seed,
            },
            "classes": classes,
            "alpha": cfg.alpha,
            "epoch": epoch,
            "metrics": metrics,
        }
        report_epoch(
            metrics,
            history,
            training_state(core_model, optimizer, scheduler, epoch, history),
            functools.partial(save_classifier, core_model, meta=meta),
            run_dir,
            rank,
        )


def _eval_batches(split: str, rank: int, batch_size: int) -> Any:
    import ray.train

    return ray.train.get_dataset_shard(eval_dataset_name(split, rank)).iter_torch_batches(
        batch_size=batch_size
    )
