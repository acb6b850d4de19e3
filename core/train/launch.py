"""One TorchTrainer launch shared by both training jobs (and by each Tune trial).

Both methods run the same way: a worker function with its config dict, one lazily-built Ray
dataset per (epoch, rank) handed over unsplit and in order, checkpoints kept by a score, resume
from the last checkpoint after a worker failure. Keeping the launch in one place keeps the two
jobs, and a Tune trial of either, identical in everything but the worker function.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core import storage

log = logging.getLogger(__name__)


@dataclass
class LaunchResult:
    """Where the run's checkpoints lie, as paths the caller can read back (URI kept)."""

    run_dir: str
    best_checkpoint: str
    latest_checkpoint: str
    seconds: float


def absolute_storage(path: str) -> str:
    """Ray Train wants an absolute local path or a URI."""
    return path if storage.is_uri(path) else os.path.abspath(path)


def _checkpoint_uri(run_dir: str, checkpoint: Any) -> str:
    """Ray reports checkpoint paths inside their filesystem (``bucket/...`` for s3://)."""
    if checkpoint is None:
        return ""
    if storage.is_uri(run_dir):
        return storage.join(run_dir, posixpath.basename(checkpoint.path.rstrip("/")))
    return checkpoint.path


def remove_unrecorded_checkpoints(run_dir: str, keep: set[str]) -> list[str]:
    """Delete the run folder's ``checkpoint_*`` folders whose names are not in ``keep``.

    Ray Train deletes the checkpoints it no longer keeps, but a folder written by a worker and not
    yet recorded when the run was killed is in no record, so nothing would ever delete it and the
    run would hold more than ``keep_checkpoints``. Returns the names removed.
    """
    removed = []
    for name in storage.list_dirs(run_dir, prefix="checkpoint_"):
        if name not in keep:
            storage.remove_tree(storage.join(run_dir, name))
            removed.append(name)
    if removed:
        log.info(
            "%s: removed %d checkpoint folder(s) Ray Train does not list: %s",
            run_dir,
            len(removed),
            ", ".join(removed),
        )
    return removed


def recorded_checkpoints(result: Any) -> set[str]:
    """Folder names of the checkpoints Ray Train's result lists: the kept best and the latest."""
    checkpoints = [c for c, _ in (result.best_checkpoints or [])]
    checkpoints.append(result.checkpoint)
    return {posixpath.basename(c.path.rstrip("/")) for c in checkpoints if c is not None}


def _trainer_class(callbacks: list[Any]) -> Any:
    """TorchTrainer, or one without Ray's placement-group cleaner when a callback replaces it.

    A callback with ``replaces_placement_group_cleaner = True`` (a Tune sweep's run tracker)
    takes over removing the worker group's placement group once the controller dies. Ray's own
    detached cleaner would otherwise be started per run: on Ray 2.60 it watches the controller
    through the state API (so it needs the dashboard), and one whose trial is killed before it is
    told to stop keeps polling forever (measured in :mod:`core.tune.cleanup`). Dropping it needs
    Ray internals: on an untested Ray version this stops with one clear line.
    """
    from ray.train.torch import TorchTrainer

    if not any(getattr(cb, "replaces_placement_group_cleaner", False) for cb in callbacks):
        return TorchTrainer
    from core import ray_internals

    return ray_internals.torch_trainer_without_placement_group_cleaner()


def launch_torch_trainer(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    cfg: Any,
    *,
    storage_path: str,
    name: str,
    datasets: dict[str, Any],
    metric: str,
    mode: str = "max",
    callbacks: list[Any] | None = None,
) -> LaunchResult:
    """Fit one TorchTrainer with ``cfg``'s workers, failures and checkpoint settings.

    ``callbacks`` go to the RunConfig: a Tune trial passes ``TuneReportCallback`` here so the
    trial sees every epoch's metrics. Calling again with the same storage and name resumes.
    """
    import ray.train
    from ray.data import ExecutionOptions

    storage_path = absolute_storage(storage_path)
    callbacks = list(callbacks or [])
    trainer = _trainer_class(callbacks)(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints,
                checkpoint_score_attribute=metric,
                checkpoint_score_order=mode,
            ),
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(
            datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)
        ),
    )
    run_dir = storage.join(storage_path, name)
    start = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - start
    log.info("%s finished in %.1f s", name, seconds)
    keep = recorded_checkpoints(result)
    if keep:  # with no record at all, deleting would be guessing
        remove_unrecorded_checkpoints(run_dir, keep)
    best = result.get_best_checkpoint(metric=metric, mode=mode) if result.best_checkpoints else None
    return LaunchResult(
        run_dir=run_dir,
        best_checkpoint=_checkpoint_uri(run_dir, best),
        latest_checkpoint=_checkpoint_uri(run_dir, result.checkpoint),
        seconds=seconds,
    )
