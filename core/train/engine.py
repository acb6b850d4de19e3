"""The one training driver, for every method: plan, launch the TorchTrainer, collect the run.

``fit(method, cfg, storage_path, name)`` resolves the method's inputs, lets it plan the run,
builds the per-(start epoch, rank) Ray Data streams, runs one TorchTrainer of the shared worker
loop (:mod:`core.train.worker`) under ``<storage_path>/<name>`` and returns the run: per-epoch
metrics, best and latest checkpoints, and whatever the method wrote at the end. Calling it again
with the same folder continues an interrupted run from its last checkpoint. Training jobs and
every Tune trial go through here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from core import storage
from core.config import to_dict
from core.train.image_data import build_train_datasets, steps_per_epoch
from core.train.launch import absolute_storage, launch_torch_trainer
from core.train.loop_parts import METRICS_FILE
from core.train.method import Method
from core.train.registry import get_method
from core.train.worker import train_loop_per_worker

log = logging.getLogger(__name__)

#: Where the decoding tasks record the images they could not read (one file per task).
BAD_IMAGES_DIR = "bad_images"


@dataclass
class RunResult:
    """One finished training run: where it lives, its per-epoch metrics and its checkpoints."""

    method: str
    name: str
    run_dir: str
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # the method's summary of its inputs
    checkpoint_metric: str = ""
    best_checkpoint: str = ""
    latest_checkpoint: str = ""
    final_metrics: dict[str, Any] = field(default_factory=dict)  # written by the method
    final_metrics_path: str = ""
    bad_images: list[dict[str, Any]] = field(default_factory=list)  # skipped: id, path, reason
    bad_images_path: str = ""

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "final": self.final}


def read_history(run_dir: str) -> list[dict[str, Any]]:
    """The per-epoch metrics a run has written so far (``[]`` before its first epoch)."""
    path = storage.join(run_dir, METRICS_FILE)
    if not storage.exists(path):
        return []
    text = storage.read_bytes(path).decode()
    return [_nan_for_null(json.loads(line)) for line in text.splitlines() if line.strip()]


def _nan_for_null(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics files hold strict JSON (an undefined metric, e.g. ``val_acc`` without a val
    split, is null); in memory it is NaN again, as the workers computed it."""
    return {k: float("nan") if v is None else v for k, v in metrics.items()}


def resolved(method: Method, cfg: Any) -> Any:
    """``cfg`` with its inputs as absolute paths (Train workers run in their own folder)."""
    return dataclasses.replace(cfg, **method.resolve_inputs(cfg))


def fit(
    method: Method | str,
    cfg: Any,
    storage_path: str,
    name: str,
    callbacks: list[Any] | None = None,
) -> RunResult:
    """One TorchTrainer run of ``method`` with ``cfg`` under ``storage_path/name``.

    ``callbacks`` go to Ray Train's RunConfig (a Tune trial passes its report callback).
    """
    method = get_method(method) if isinstance(method, str) else method
    cfg = resolved(method, cfg)
    run = cfg.run
    storage_path = absolute_storage(storage_path)
    run_dir = storage.join(storage_path, name)
    plan = method.plan(cfg, run_dir)
    num_train = len(plan.splits["train"])
    if num_train < run.batch_size:
        raise ValueError(
            f"run.batch_size {run.batch_size} is larger than the {num_train} training rows"
        )
    datasets = build_train_datasets(
        plan.splits,
        plan.train_transform,
        plan.eval_transform,
        seed=run.seed,
        epochs=run.epochs,
        global_batch=run.batch_size,
        world=run.num_workers,
        batch_class=plan.batch_class,
        bad_images_dir=storage.join(run_dir, BAD_IMAGES_DIR),
    )
    log.info("training %s %s → %s", method.name, name, run_dir)
    launched = launch_torch_trainer(
        train_loop_per_worker,
        {
            "method": method.name,
            "cfg": to_dict(cfg),
            "run_dir": run_dir,
            "num_train": num_train,
            "eval_splits": [s for s in plan.eval_splits if s in plan.splits],
            "payload": plan.payload,
        },
        run,
        storage_path=storage_path,
        name=name,
        datasets=datasets,
        metric=plan.metric,
        mode=plan.mode,
        callbacks=callbacks,
    )
    result = RunResult(
        method=method.name,
        name=name,
        run_dir=run_dir,
        history=read_history(run_dir),
        best_checkpoint=launched.best_checkpoint,
        latest_checkpoint=launched.latest_checkpoint,
        checkpoint_metric=plan.metric,
        info=dict(plan.info),
    )
    record_bad_images(
        result,
        run.bad_image_limit(steps_per_epoch(num_train, run.batch_size) * run.batch_size),
        run.epochs,
    )
    method.finish(cfg, plan, result)
    return result


class BadImagesError(ValueError):
    """The run stopped: more unreadable training images than ``run.max_bad_images`` allows."""


def record_bad_images(result: RunResult, limit: int, epochs: int) -> None:
    """List the images the run skipped in ``bad_images.json``; stop with one line naming the
    first few when the training split had more than ``limit`` (the workers stopped early)."""
    from core.train.image_data import read_bad_images

    bad = read_bad_images(storage.join(result.run_dir, BAD_IMAGES_DIR))
    if not bad:
        return
    result.bad_images = bad
    result.bad_images_path = storage.join(result.run_dir, "bad_images.json")
    storage.write_json(result.bad_images_path, {"skipped": bad})
    train = [b for b in bad if b["split"] == "train"]
    log.warning(
        "%s: skipped %d unreadable images (%d in train), listed in %s",
        result.name,
        len(bad),
        len(train),
        result.bad_images_path,
    )
    if len(result.history) < epochs and len(train) > limit:
        named = ", ".join(f"{b['path']} ({b['reason']})" for b in train[:3])
        more = f" and {len(train) - 3} more" if len(train) > 3 else ""
        raise BadImagesError(
            f"run.max_bad_images: {len(train)} training images cannot be read, more than the "
            f"{limit} allowed: {named}{more}; all are listed in {result.bad_images_path}"
        )
