"""Plots written next to the runs (PNG, through core.storage so URIs work)."""

from __future__ import annotations

import io
from typing import Any

from core import storage


def new_figure() -> tuple[Any, Any]:
    """(figure, axes) on the Agg backend: jobs run headless."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 4))


def save_figure(fig: Any, dest: str) -> str:
    """Write ``fig`` as a PNG to ``dest`` (a path or URI) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    storage.write_bytes(dest, buffer.getvalue())
    return dest


def plot_accuracy_curves(
    runs: dict[str, list[dict[str, Any]]], metric: str, dest: str, title: str = ""
) -> str:
    """One line per run of ``metric`` against epoch (the paper's figure 2 for test accuracy)."""
    fig, ax = new_figure()
    for label, history in runs.items():
        epochs = [h["epoch"] + 1 for h in history]
        ax.plot(epochs, [h[metric] for h in history], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, dest)
