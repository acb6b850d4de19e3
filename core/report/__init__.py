"""The baseline-vs-regularized report: ``report.json``, ``report.md`` and two plots.

``write_report`` gathers the numbers from the files the training and prediction stages wrote
(:mod:`core.report.build`), draws the test accuracy per epoch of both models (the paper's
figure 2, :mod:`core.train.plots`) and their confusion matrices on the test split
(:mod:`core.report.confusion`), and renders the tables (:mod:`core.report.markdown`).
"""

from __future__ import annotations

from typing import Any

from core import storage
from core.report.build import ModelOutcome, best_val_epoch, build_report, model_section
from core.report.confusion import confusion_matrix, plot_confusion_matrices
from core.report.markdown import render_markdown

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
ACCURACY_PLOT = "test_accuracy.png"
CONFUSION_PLOT = "confusion_matrix.png"

__all__ = [
    "ACCURACY_PLOT",
    "CONFUSION_PLOT",
    "REPORT_JSON",
    "REPORT_MD",
    "ModelOutcome",
    "best_val_epoch",
    "build_report",
    "confusion_matrix",
    "model_section",
    "plot_confusion_matrices",
    "render_markdown",
    "report_files",
    "write_report",
]


def report_files(folder: str) -> dict[str, str]:
    """Where the report's four files lie under ``folder``."""
    names = {
        "report_json": REPORT_JSON,
        "report_md": REPORT_MD,
        "accuracy_plot": ACCURACY_PLOT,
        "confusion_plot": CONFUSION_PLOT,
    }
    return {key: storage.join(folder, name) for key, name in names.items()}


def write_report(
    folder: str,
    outcomes: list[ModelOutcome],
    classes: list[str],
    images_per_split: dict[str, int],
    settings: dict[str, Any],
    artefacts: dict[str, str],
    title: str,
) -> dict[str, Any]:
    """Write the report's files under ``folder`` (a path or URI); return the report's data."""
    from core.train.plots import plot_accuracy_curves

    files = report_files(folder)
    report = build_report(
        outcomes, classes, images_per_split, settings, {**artefacts, **files}, title
    )
    plot_accuracy_curves(
        {f"{o.name} (alpha={o.alpha:g})": o.history for o in outcomes},
        "test_acc",
        files["accuracy_plot"],
        title=f"{title}: test accuracy per epoch",
    )
    matrices = {o.name: confusion_matrix(o.predictions, classes) for o in outcomes}
    for name, matrix in matrices.items():  # rows: true class, columns: predicted (classes order)
        report[name]["confusion_matrix"] = matrix.tolist()
    plot_confusion_matrices(matrices, classes, files["confusion_plot"])
    figures = {"Test accuracy per epoch": ACCURACY_PLOT, "Confusion matrices": CONFUSION_PLOT}
    storage.write_bytes(files["report_md"], render_markdown(report, figures).encode())
    storage.write_json(files["report_json"], report)
    return report
