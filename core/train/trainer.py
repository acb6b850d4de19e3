"""Driver side of regularized training: plan the data, run the TorchTrainer, collect results.

``train_regularized`` runs one TorchTrainer (or two with ``compare_baseline``: alpha = 0 and the
configured alpha, same seed, same data order) and returns a summary. Each run lives in
``<storage>/runs/<name>[/<variant>]``: Ray Train's checkpoints, ``metrics.jsonl`` and, for a
comparison, the accuracy plot and ``comparison.json``. Calling it again with the same names
continues an interrupted run from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from core import storage
from core.config import TrainRegularizedConfig, to_dict
from core.models.open_clip_models import build_transforms
from core.train.image_data import build_train_datasets, load_splits
from core.train.launch import absolute_storage, launch_torch_trainer
from core.train.loop_parts import METRICS_FILE
from core.train.plots import plot_accuracy_curves
from core.train.regularized import load_means_for, train_loop_per_worker

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """One finished training run: where it lives and its per-epoch metrics."""

    name: str
    alpha: float
    run_dir: str
    history: list[dict[str, Any]]
    best_checkpoint: str
    latest_checkpoint: str

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "final": self.final}


@dataclass
class TrainSummary:
    runs: list[RunResult] = field(default_factory=list)
    plot: str = ""
    summary_path: str = ""


def resolve_inputs(cfg: TrainRegularizedConfig) -> tuple[str, str]:
    """(manifest, class means) as absolute paths or URIs: Train workers run in their own folder."""
    manifest = cfg.manifest or storage.join(cfg.storage, "demo", "manifest.parquet")
    means = cfg.class_means or storage.join(cfg.storage, "class_means.safetensors")
    for what, path in (("manifest", manifest), ("class_means", means)):
        if not storage.exists(path):
            raise FileNotFoundError(f"{what}: {path}: no such file")
    return absolute_storage(manifest), absolute_storage(means)


def read_history(run_dir: str) -> list[dict[str, Any]]:
    path = storage.join(run_dir, METRICS_FILE)
    if not storage.exists(path):
        return []
    text = storage.read_bytes(path).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def fit_one(
    cfg: TrainRegularizedConfig,
    storage_path: str,
    name: str,
    manifest: str,
    means: str,
    callbacks: list[Any] | None = None,
) -> RunResult:
    """One TorchTrainer run of ``cfg`` under ``storage_path/name`` (``callbacks``: e.g. Tune's)."""
    classes, splits = load_splits(manifest)
    load_means_for(cfg, means, classes)  # fail here, before any worker starts
    if len(splits["train"]) < cfg.batch_size:
        raise ValueError(
            f"batch_size {cfg.batch_size} is larger than the {len(splits['train'])} training rows"
        )
    train_tf, eval_tf = build_transforms(cfg.clip.model_name, cfg.clip.pretrained)
    datasets = build_train_datasets(
        splits,
        train_tf,
        eval_tf,
        seed=cfg.seed,
        epochs=cfg.epochs,
        global_batch=cfg.batch_size,
        world=cfg.num_workers,
    )
    storage_path = absolute_storage(storage_path)
    run_dir = storage.join(storage_path, name)
    log.info("training %s (alpha=%g) → %s", name, cfg.alpha, run_dir)
    launched = launch_torch_trainer(
        train_loop_per_worker,
        {
            "cfg": to_dict(cfg),
            "classes": classes,
            "run_dir": run_dir,
            "num_train": len(splits["train"]),
            "class_means": means,
        },
        cfg,
        storage_path=storage_path,
        name=name,
        datasets=datasets,
        metric="val_acc" if len(splits["val"]) else "train_acc",
        callbacks=callbacks,
    )
    return RunResult(
        name=name,
        alpha=cfg.alpha,
        run_dir=run_dir,
        history=read_history(run_dir),
        best_checkpoint=launched.best_checkpoint,
        latest_checkpoint=launched.latest_checkpoint,
    )


def train_regularized(cfg: TrainRegularizedConfig) -> TrainSummary:
    """Run the configured training (and the alpha = 0 baseline beside it if asked)."""
    manifest, means = resolve_inputs(cfg)
    root = absolute_storage(storage.join(cfg.storage, "runs"))
    summary = TrainSummary()
    if not cfg.compare_baseline:
        summary.runs.append(fit_one(cfg, root, cfg.name, manifest, means))
        return summary
    compare_root = storage.join(root, cfg.name)
    for variant, alpha in (("baseline", 0.0), ("regularized", cfg.alpha)):
        variant_cfg = dataclasses.replace(cfg, alpha=alpha)
        summary.runs.append(fit_one(variant_cfg, compare_root, variant, manifest, means))
    summary.plot = storage.join(compare_root, "test_accuracy.png")
    plot_accuracy_curves(
        {f"{r.name} (alpha={r.alpha:g})": r.history for r in summary.runs},
        "test_acc",
        summary.plot,
        title=f"{cfg.clip.model_name}: test accuracy per epoch",
    )
    summary.summary_path = storage.join(compare_root, "comparison.json")
    storage.write_json(
        summary.summary_path,
        {
            "runs": {r.name: r.as_dict() for r in summary.runs},
            "final_test_acc": {r.name: r.final.get("test_acc") for r in summary.runs},
            "best_val_test_acc": {r.name: _test_at_best_val(r.history) for r in summary.runs},
            "plot": summary.plot,
        },
    )
    return summary


def _test_at_best_val(history: list[dict[str, Any]]) -> float | None:
    """Test accuracy at the epoch with the best validation accuracy (model selection by val)."""
    scored = [h for h in history if not math.isnan(h.get("val_acc", float("nan")))]
    if not scored:
        return None
    return max(scored, key=lambda h: h["val_acc"])["test_acc"]
