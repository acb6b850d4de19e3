"""Confusion matrices from a prediction job's ``predictions.parquet``, and their plot."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from core import storage

#: Up to this many classes each cell is labelled with its count; beyond, only colour is legible.
ANNOTATE_MAX_CLASSES = 15


def confusion_matrix(predictions: str, classes: list[str]) -> np.ndarray:
    """Counts ``[true class, predicted class]`` over the rows that were predicted (no error).

    Rows of a label outside ``classes`` cannot occur for a checkpoint trained on the same
    manifest; they are an error naming the file rather than a silently smaller matrix.
    """
    table = storage.read_parquet(predictions, columns=["label", "predicted", "error"])
    table = table.filter(pc.equal(pc.fill_null(table.column("error"), ""), ""))
    index = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for true, predicted in zip(
        table.column("label").to_pylist(), table.column("predicted").to_pylist(), strict=True
    ):
        if true not in index or predicted not in index:
            raise ValueError(
                f"{predictions}: class {true!r} or {predicted!r} is not a manifest class"
            )
        matrix[index[true], index[predicted]] += 1
    return matrix


def plot_confusion_matrices(matrices: dict[str, np.ndarray], classes: list[str], dest: str) -> str:
    """One panel per model, side by side: each row normalised to the share of that class's test
    images (so classes of different sizes read alike), with counts written in small matrices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.train.plots import save_figure

    n = len(classes)
    side = min(12.0, max(3.5, 0.35 * n + 2.0))
    fig, axes = plt.subplots(1, len(matrices), figsize=(side * len(matrices), side), squeeze=False)
    ticks = np.arange(n)
    font = max(4, min(9, int(160 / max(n, 1))))
    for ax, (name, counts) in zip(axes[0], matrices.items(), strict=True):
        totals = counts.sum(axis=1, keepdims=True)
        shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
        image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        correct = int(np.trace(counts))
        total = int(counts.sum())
        accuracy = f"{correct / total:.3f}" if total else "n/a"
        ax.set_title(f"{name}: accuracy {accuracy} ({correct}/{total})")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_xticks(ticks, classes, rotation=90, fontsize=font)
        ax.set_yticks(ticks, classes, fontsize=font)
        if n <= ANNOTATE_MAX_CLASSES:
            for (i, j), value in np.ndenumerate(counts):
                if value:
                    colour = "white" if shares[i, j] > 0.6 else "black"
                    ax.text(j, i, str(value), ha="center", va="center", color=colour, fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return save_figure(fig, dest)
