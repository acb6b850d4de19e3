"""The numbers of a baseline-vs-regularized report, gathered from the files the stages wrote.

Every number is read back from a stage's own output (``metrics.jsonl`` through the run history,
the prediction job's ``accuracy.json``), never recomputed here, so the report and the files it
points to cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core import storage


@dataclass
class ModelOutcome:
    """One trained model and the files its stages wrote."""

    name: str  # "baseline" or "regularized"
    alpha: float
    history: list[dict[str, Any]]  # per-epoch metrics, as in the run's metrics.jsonl
    run_dir: str
    checkpoint: str  # the checkpoint the prediction job used
    predictions: str  # the prediction job's predictions.parquet
    accuracy_json: str  # the prediction job's accuracy.json


def _number(value: Any) -> float | None:
    """A metric as a float, or None where it is undefined (NaN, e.g. no val split)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def best_val_epoch(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch with the best validation accuracy (the first on ties), or None without one."""
    scored = [h for h in history if _number(h.get("val_acc")) is not None]
    return max(scored, key=lambda h: h["val_acc"]) if scored else None


def model_section(outcome: ModelOutcome) -> dict[str, Any]:
    """The report entry of one model: last-epoch accuracies, model selection by val, and the
    prediction job's overall and per-class test accuracy. Epochs count from 1, as plotted."""
    final = outcome.history[-1] if outcome.history else {}
    best = best_val_epoch(outcome.history)
    predicted = storage.read_json(outcome.accuracy_json)
    per_class = predicted.get("per_class", {})
    class_accs = [_number(v.get("accuracy")) for v in per_class.values()]
    class_accs = [a for a in class_accs if a is not None]
    return {
        "alpha": outcome.alpha,
        "epochs": len(outcome.history),
        "test_acc": _number(final.get("test_acc")),
        "val_acc": _number(final.get("val_acc")),
        "train_acc": _number(final.get("train_acc")),
        "best_val_epoch": best["epoch"] + 1 if best else None,
        "test_acc_at_best_val": _number(best.get("test_acc")) if best else None,
        "test_acc_per_epoch": [_number(h.get("test_acc")) for h in outcome.history],
        "predicted_test_acc": _number(predicted.get("accuracy")),
        "predicted_images": predicted.get("images"),
        "predicted_failed": predicted.get("failed"),
        "mean_per_class_acc": sum(class_accs) / len(class_accs) if class_accs else None,
        "per_class": per_class,
        "run_dir": outcome.run_dir,
        "metrics": storage.join(outcome.run_dir, "metrics.jsonl"),
        "checkpoint": outcome.checkpoint,
        "predictions": outcome.predictions,
        "accuracy_json": outcome.accuracy_json,
    }


def build_report(
    outcomes: list[ModelOutcome],
    classes: list[str],
    images_per_split: dict[str, int],
    settings: dict[str, Any],
    artefacts: dict[str, str],
    title: str,
) -> dict[str, Any]:
    """The whole report as plain data: what ``report.json`` holds and ``report.md`` prints."""
    report: dict[str, Any] = {
        "title": title,
        "data": {"classes": list(classes), "images": dict(images_per_split)},
    }
    for outcome in outcomes:
        report[outcome.name] = model_section(outcome)
    report["models"] = [o.name for o in outcomes]
    report["settings"] = settings
    report["artefacts"] = dict(artefacts)
    return report
