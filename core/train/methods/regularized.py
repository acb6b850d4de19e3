"""LMM-regularized CLIP (Tzelepi & Mezaris): ``J = CE + alpha * ||x - C[label]||^2``.

The model is a CLIP image encoder with one linear head; ``x`` is the encoder's output (the head's
input) and ``C`` the mean semantic class descriptions (``class_means.safetensors`` from the
class-descriptions job). alpha = 0 is the baseline. :func:`train_regularized` is the job: one run,
or with ``compare_baseline`` the alpha = 0 run beside it with the same seed and data order, the
test-accuracy plot and ``comparison.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from core import storage
from core.config import ConfigError, TrainRegularizedConfig
from core.train.engine import RunResult, fit
from core.train.launch import absolute_storage
from core.train.method import (
    Method,
    MethodWorker,
    RunPlan,
    StepResult,
    WorkerContext,
    existing_inputs,
)


def load_means_for(cfg: TrainRegularizedConfig, path: str, classes: list[str]) -> torch.Tensor:
    """The class means in the manifest's class order; mismatches are errors naming both sides."""
    return load_means_and_form(cfg, path, classes)[0]


def load_means_and_form(
    cfg: TrainRegularizedConfig, path: str, classes: list[str]
) -> tuple[torch.Tensor, bool]:
    """(class means, whether they average L2-normalised caption embeddings): the regularizer
    normalises ``x`` exactly when the means were, so its two sides share a scale."""
    from core.text.class_means import load_class_means

    means = load_class_means(path, cfg.prompt)
    if list(means.classes) != list(classes):
        missing = sorted(set(classes) - set(means.classes))
        extra = sorted(set(means.classes) - set(classes))
        raise ValueError(
            f"{path}: class means do not match the manifest's classes "
            f"(missing {missing[:5]}, extra {extra[:5]}); rebuild them from this manifest"
        )
    return means.means.float(), bool(means.normalize)


def count_correct(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Correct top-1 predictions (of the rows of weight 1) as a float64 0-d tensor (stays on
    the device)."""
    hits = (logits.argmax(dim=1) == labels).to(torch.float64)
    return (hits if weights is None else hits * weights.to(torch.float64)).sum()


def row_weights(batch: dict[str, torch.Tensor], ctx: WorkerContext) -> tuple[Any, Any]:
    """(weights, count) for a batch that may hold unreadable images (``valid == 0``).

    ``count`` is this worker's share of the group's usable rows, so a loss divided by it and
    averaged by DDP is the global batch's mean: N workers train like one. (None, None) for a
    batch without the column.
    """
    if "valid" not in batch:
        return None, None
    weights = batch["valid"].to(ctx.device, torch.float32, non_blocking=True)
    count = (ctx.group_sum(weights.sum()) / ctx.world).clamp(min=1.0 / ctx.world)
    return weights, count


def usable_rows(weights: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """The number of rows that count, as a float64 0-d tensor."""
    if weights is None:  # a fill on the device: torch.tensor(n, device=...) would copy and wait
        return torch.full((), float(n), dtype=torch.float64, device=device)
    return weights.sum().to(torch.float64)


def classify_split(
    model: torch.nn.Module, split: str, batches: Any, ctx: WorkerContext
) -> dict[str, float]:
    """``<split>_acc`` over the whole worker group (NaN for an empty split)."""
    from core.train.loop_parts import autocast

    correct = torch.zeros((), dtype=torch.float64, device=ctx.device)
    count = torch.zeros((), dtype=torch.float64, device=ctx.device)
    rows = 0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            images = batch["image"].to(ctx.device, non_blocking=True)
            labels = batch["label"].to(ctx.device, non_blocking=True)
            # No collective per batch here: workers may hold different numbers of eval batches.
            weights = batch["valid"].to(ctx.device, torch.float32) if "valid" in batch else None
            with autocast(ctx.device, ctx.amp):
                logits, _ = model(images)
            correct += count_correct(logits, labels, weights)
            count += usable_rows(weights, labels.numel(), ctx.device)
            rows += int(labels.numel())
    total_correct, total, total_rows = ctx.all_reduce_sum([float(correct), float(count), rows])
    return {
        f"{split}_acc": total_correct / total if total else float("nan"),
        f"{split}_skipped": int(total_rows - total),
    }


class RegularizedWorker(MethodWorker):
    """The classifier, the class means on the device, and the regularized step."""

    def __init__(self, cfg: TrainRegularizedConfig, payload: dict[str, Any], ctx: WorkerContext):
        from core.models.clip_classifier import build_classifier

        self.cfg, self.ctx = cfg, ctx
        self.classes: list[str] = payload["classes"]
        means, normalized = load_means_and_form(cfg, payload["class_means"], self.classes)
        self.means = means.to(ctx.device)
        # Widths were checked in plan; x is normalised for the regularizer iff the means were.
        self.model, _ = build_classifier(cfg.clip, len(self.classes), normalized)

    def param_groups(self, model: torch.nn.Module) -> tuple[Any, Any]:
        return model.encoder.parameters(), model.head.parameters()

    def step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> StepResult:
        from core.losses import regularized_ce_loss

        images = batch["image"].to(self.ctx.device, non_blocking=True)
        labels = batch["label"].to(self.ctx.device, non_blocking=True)
        weights, count = row_weights(batch, self.ctx)
        logits, x = model(images)
        terms = regularized_ce_loss(logits, x, labels, self.means, self.cfg.alpha, weights, count)
        n = usable_rows(weights, labels.numel(), self.ctx.device)
        # ce and reg are sums over the usable rows divided by this worker's share (count).
        share = n if count is None else count.to(torch.float64)
        return StepResult(
            terms["loss"],
            {
                "ce": terms["ce"].detach().to(torch.float64) * share,
                "reg": terms["reg"].detach().to(torch.float64) * share,
                "correct": count_correct(logits, labels, weights),
                "n": n,
            },
        )

    def train_metrics(self, totals: dict[str, float], steps: int) -> dict[str, Any]:
        n = max(totals["n"], 1)
        return {
            "alpha": self.cfg.alpha,
            "train_loss": (totals["ce"] + self.cfg.alpha * totals["reg"]) / n,
            "train_ce": totals["ce"] / n,
            "train_reg": totals["reg"] / n,
            "train_acc": totals["correct"] / n,
        }

    def evaluate(self, model: torch.nn.Module, split: str, batches: Any) -> dict[str, Any]:
        return classify_split(model, split, batches, self.ctx)

    def write_checkpoint_files(
        self, folder: str, model: torch.nn.Module, epoch: int, metrics: dict[str, Any]
    ) -> None:
        from core.models.clip_classifier import save_classifier

        clip = self.cfg.clip
        meta = {
            "method": RegularizedMethod.name,
            "clip": {
                "model_name": clip.model_name,
                "pretrained": clip.pretrained,
                "seed": clip.seed,
            },
            "classes": self.classes,
            "alpha": self.cfg.alpha,
            "epoch": epoch,
            "metrics": metrics,
        }
        save_classifier(model, folder, meta=meta)


def resolve_classifier_inputs(cfg: Any, extra: dict[str, str]) -> dict[str, str]:
    """The manifest (default: the demo's under the storage root) plus ``extra`` inputs
    (key → default path), each checked to exist and made absolute."""
    paths = {"manifest": cfg.manifest or storage.join(cfg.storage, "demo", "manifest.parquet")}
    paths.update({key: getattr(cfg, key) or default for key, default in extra.items()})
    return existing_inputs(paths)


def classifier_metric(splits: dict[str, Any]) -> tuple[str, str]:
    """Checkpoints ranked by validation accuracy, or training accuracy without a val split."""
    return ("val_acc" if len(splits["val"]) else "train_acc"), "max"


def manifest_metric(manifest: str) -> tuple[str, str]:
    """:func:`classifier_metric` of a manifest's splits (a sweep asks before any plan)."""
    from core.train.image_data import load_splits

    return classifier_metric(load_splits(manifest)[1])


class RegularizedMethod(Method, name="regularized", config_class=TrainRegularizedConfig):
    """The driver side of LMM-regularized CLIP: inputs, class-means checks, the loader."""

    job = "train_regularized"
    colour_key = "prompt"

    def resolve_inputs(self, cfg: TrainRegularizedConfig) -> dict[str, str]:
        default_means = storage.join(cfg.storage, "class_means.safetensors")
        return resolve_classifier_inputs(cfg, {"class_means": default_means})

    def checkpoint_metric(self, cfg: TrainRegularizedConfig) -> tuple[str, str]:
        return manifest_metric(cfg.manifest)

    def plan(self, cfg: TrainRegularizedConfig, run_dir: str) -> RunPlan:
        from core.models.open_clip_models import build_transforms, embed_dim_of
        from core.train.deferred_transform import deferred_transforms
        from core.train.image_data import load_splits

        classes, splits = load_splits(cfg.manifest)
        # Fail here, before any worker starts (Ray Train would retry a worker's error).
        means = load_means_for(cfg, cfg.class_means, classes)
        width = embed_dim_of(cfg.clip.model_name)
        if means.shape[1] != width:
            raise ValueError(
                f"{cfg.class_means}: class means have dimension {means.shape[1]} but "
                f"{cfg.clip.model_name} embeds images in {width}; build the means with the same "
                "CLIP model"
            )
        train_tf, eval_tf = deferred_transforms(
            build_transforms, cfg.clip.model_name, cfg.clip.pretrained
        )
        metric, mode = classifier_metric(splits)
        return RunPlan(
            splits=splits,
            train_transform=train_tf,
            eval_transform=eval_tf,
            payload={"classes": classes, "class_means": cfg.class_means},
            metric=metric,
            mode=mode,
            info={"alpha": cfg.alpha, "num_classes": len(classes)},
        )

    def worker(
        self, cfg: TrainRegularizedConfig, payload: dict[str, Any], ctx: WorkerContext
    ) -> RegularizedWorker:
        return RegularizedWorker(cfg, payload, ctx)

    def check_sweep(self, cfg: TrainRegularizedConfig, values: dict[str, list[Any]]) -> None:
        """Every swept caption prompt must have its class means in the class-means file."""
        from core.train.image_data import load_splits

        classes, _ = load_splits(cfg.manifest)
        where = "space.prompt" if "prompt" in values else "training.prompt"
        for prompt in values.get("prompt", [cfg.prompt]):
            try:
                load_means_for(dataclasses.replace(cfg, prompt=prompt), cfg.class_means, classes)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None

    def check(self, ctx: Any, cfg: TrainRegularizedConfig) -> None:
        """CLIP image tower + linear head, one step of ``J = CE + alpha * J_reg``: the class
        means' width against the training CLIP's image embedding, their classes against the
        manifest's, memory per worker."""
        from core.check.training import check_classifier

        check_classifier(ctx, cfg, self.name)

    def load_checkpoint(self, path: str) -> Any:
        from core.models.clip_classifier import load_classifier

        return load_classifier(path)


METHOD = RegularizedMethod()


# --------------------------------------------------------------------------------------------
# The job: one run, or the baseline beside it
# --------------------------------------------------------------------------------------------


@dataclass
class TrainSummary:
    runs: list[RunResult] = field(default_factory=list)
    plot: str = ""
    summary_path: str = ""


def train_regularized(cfg: TrainRegularizedConfig) -> TrainSummary:
    """Run the configured training (and the alpha = 0 baseline beside it if asked).

    Each run lives in ``<storage>/runs/<name>[/<variant>]``; calling again with the same names
    continues an interrupted run from its last checkpoint.
    """
    from core.train.plots import plot_accuracy_curves

    cfg = dataclasses.replace(cfg, **METHOD.resolve_inputs(cfg))
    root = absolute_storage(storage.join(cfg.storage, "runs"))
    summary = TrainSummary()
    if not cfg.compare_baseline:
        summary.runs.append(fit(METHOD, cfg, root, cfg.name))
        return summary
    compare_root = storage.join(root, cfg.name)
    for variant, alpha in (("baseline", 0.0), ("regularized", cfg.alpha)):
        variant_cfg = dataclasses.replace(cfg, alpha=alpha)
        summary.runs.append(fit(METHOD, variant_cfg, compare_root, variant))
    summary.plot = storage.join(compare_root, "test_accuracy.png")
    plot_accuracy_curves(
        {f"{r.name} (alpha={r.info['alpha']:g})": r.history for r in summary.runs},
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
            "best_val_test_acc": {r.name: accuracy_at_best_val(r.history) for r in summary.runs},
            "plot": summary.plot,
        },
    )
    return summary


def accuracy_at_best_val(history: list[dict[str, Any]]) -> float | None:
    """Test accuracy at the epoch with the best validation accuracy (model selection by val)."""
    scored = [h for h in history if not math.isnan(h.get("val_acc", float("nan")))]
    if not scored:
        return None
    return max(scored, key=lambda h: h["val_acc"])["test_acc"]
