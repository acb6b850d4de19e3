"""Linear probe: a frozen CLIP image encoder and one trained linear layer (cross-entropy only).

The baseline CLIP users compare fine-tuning against: the encoder's weights never change, so the
probe measures what the (pretrained) embedding already separates. Checkpoints are classifier
checkpoints (``model.safetensors`` + ``meta.json``), so the prediction job reads them as it
reads the regularized method's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from core.config import ClipConfig, OptimConfig, RayConfig, TrainRunConfig
from core.train.method import Method, MethodWorker, RunPlan, StepResult, WorkerContext
from core.train.methods.regularized import (
    classifier_metric,
    classify_split,
    count_correct,
    manifest_metric,
    resolve_classifier_inputs,
    row_weights,
    usable_rows,
)


@dataclass
class LinearProbeConfig:
    """``python -m ray_jobs.train --method linear_probe``: frozen encoder, linear head."""

    storage: str = "outputs"
    name: str = "linear_probe"  # run folder: storage/runs/<name>
    manifest: str = ""  # "" → storage/demo/manifest.parquet
    clip: ClipConfig = field(default_factory=ClipConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)  # encoder_lr is unused (frozen)
    run: TrainRunConfig = field(default_factory=TrainRunConfig)
    ray: RayConfig = field(default_factory=RayConfig)


class LinearProbeWorker(MethodWorker):
    def __init__(self, cfg: LinearProbeConfig, payload: dict[str, Any], ctx: WorkerContext):
        from core.models.clip_classifier import build_classifier

        self.cfg, self.ctx = cfg, ctx
        self.classes: list[str] = payload["classes"]
        self.model, _ = build_classifier(cfg.clip, len(self.classes))
        self.model.encoder.requires_grad_(False)

    def param_groups(self, model: torch.nn.Module) -> tuple[Any, Any]:
        return [], model.head.parameters()

    def step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> StepResult:
        images = batch["image"].to(self.ctx.device, non_blocking=True)
        labels = batch["label"].to(self.ctx.device, non_blocking=True)
        weights, count = row_weights(batch, self.ctx)
        logits, _ = model(images)
        per_row = F.cross_entropy(logits.float(), labels, reduction="none")
        n = usable_rows(weights, labels.numel(), self.ctx.device)
        if weights is None:
            ce, total = per_row.mean(), per_row.detach().sum()
        else:
            total = (per_row * weights).sum()
            ce = total / count
        return StepResult(
            ce,
            {
                "ce": total.detach().to(torch.float64),
                "correct": count_correct(logits, labels, weights),
                "n": n,
            },
        )

    def train_metrics(self, totals: dict[str, float], steps: int) -> dict[str, Any]:
        n = max(totals["n"], 1)
        return {"train_loss": totals["ce"] / n, "train_acc": totals["correct"] / n}

    def evaluate(self, model: torch.nn.Module, split: str, batches: Any) -> dict[str, Any]:
        return classify_split(model, split, batches, self.ctx)

    def write_checkpoint_files(
        self, folder: str, model: torch.nn.Module, epoch: int, metrics: dict[str, Any]
    ) -> None:
        from dataclasses import asdict

        from core.models.clip_classifier import save_classifier

        meta = {"method": LinearProbeMethod.name, "clip": asdict(self.cfg.clip)}
        meta.update(classes=self.classes, epoch=epoch, metrics=metrics)
        save_classifier(model, folder, meta=meta)


class LinearProbeMethod(Method, name="linear_probe", config_class=LinearProbeConfig):
    def resolve_inputs(self, cfg: LinearProbeConfig) -> dict[str, str]:
        return resolve_classifier_inputs(cfg, {})

    def checkpoint_metric(self, cfg: LinearProbeConfig) -> tuple[str, str]:
        return manifest_metric(cfg.manifest)

    def plan(self, cfg: LinearProbeConfig, run_dir: str) -> RunPlan:
        from core.models.open_clip_models import build_transforms
        from core.train.deferred_transform import deferred_transforms
        from core.train.image_data import load_splits

        classes, splits = load_splits(cfg.manifest)
        train_tf, eval_tf = deferred_transforms(
            build_transforms, cfg.clip.model_name, cfg.clip.pretrained
        )
        metric, mode = classifier_metric(splits)
        return RunPlan(splits, train_tf, eval_tf, {"classes": classes}, metric, mode)

    def worker(
        self, cfg: LinearProbeConfig, payload: dict[str, Any], ctx: WorkerContext
    ) -> LinearProbeWorker:
        return LinearProbeWorker(cfg, payload, ctx)

    def check(self, ctx: Any, cfg: LinearProbeConfig) -> None:
        """CLIP image tower + linear head trained with cross-entropy: inputs and memory per
        worker."""
        from core.check.training import check_classifier

        check_classifier(ctx, cfg, self.name)

    def load_checkpoint(self, path: str) -> Any:
        from core.models.clip_classifier import load_classifier

        return load_classifier(path)


METHOD = LinearProbeMethod()
