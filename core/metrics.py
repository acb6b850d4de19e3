"""Evaluation metrics: accuracy (single-label), mAP and P/R/F1@K (multi-label, ZSL / GZSL).

numpy in, Python floats out, all as fractions in [0, 1] (the papers print percentages: x100).
ZSL scores only the unseen labels, GZSL all labels; :func:`multilabel_metrics` takes the label
subset and a key prefix so both come out as flat keys (``zsl_map``, ``gzsl_f1_3`` ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np

#: How mAP treats a label without positives among the evaluated images. ``reference``: its AP
#: counts 0 and the mean is over all labels, as the NUS-WIDE ZSL reference evaluation does (its
#: ``compute_AP`` starts every AP at 0, skips labels without positives, then averages all).
#: Published ZSL / GZSL mAPs are on this scale. ``skip_empty``: such labels are left out of the
#: mean (their AP is undefined), as averaging sklearn's ``average_precision_score`` over the
#: labels it defines; never lower than ``reference``.
MapProtocol = Literal["reference", "skip_empty"]
MAP_PROTOCOLS: tuple[str, ...] = get_args(MapProtocol)


def _as_2d(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must both be [N, L], got {scores.shape} and {targets.shape}"
        )
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return scores, targets > 0


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max over ``logits`` [N, C] equals ``labels`` [N]."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"logits must be [N, C] and labels [N], got {logits.shape}, {labels.shape}"
        )
    if logits.shape[0] == 0:
        raise ValueError("accuracy of an empty set")
    return float((logits.argmax(axis=1) == labels).mean())


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Step-wise AP of one label: ``sum_k (R_k - R_{k-1}) * P_k`` over descending thresholds.

    Every distinct score is a threshold and tied scores enter together (as in
    ``sklearn.metrics.average_precision_score``), so the order among ties does not matter.
    NaN when there are no positives.
    """
    positives = np.asarray(positives) > 0
    n_pos = int(positives.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    sorted_scores = np.asarray(scores, dtype=np.float64)[order]
    hits = positives[order]
    # last index of each run of equal scores: the points where a threshold admits the run
    ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    tp = np.cumsum(hits)[ends]
    precision = tp / (ends + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(
    scores: np.ndarray, targets: np.ndarray, protocol: MapProtocol = "reference"
) -> float:
    """Mean over labels of the per-label AP (see :func:`average_precision`).

    ``scores`` [N, L] (higher = more likely), ``targets`` [N, L] 0/1. A label with no positive
    among the N images counts 0 (``protocol="reference"``) or is left out (``"skip_empty"``); see
    :data:`MapProtocol`. NaN under both when no label has a positive: there is nothing to rank.
    """
    scores, positives = _as_2d(scores, targets)
    return _mean_ap(_label_aps(scores, positives), protocol)


def _label_aps(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Per-label AP [L]; NaN for a label without positives."""
    return np.array(
        [average_precision(scores[:, j], positives[:, j]) for j in range(scores.shape[1])],
        dtype=np.float64,
    )


def _mean_ap(aps: np.ndarray, protocol: str) -> float:
    """Average per-label APs (NaN = no positives) under ``protocol``."""
    if protocol not in MAP_PROTOCOLS:
        raise ValueError(f"map protocol must be one of {MAP_PROTOCOLS}, got {protocol!r}")
    defined = ~np.isnan(aps)
    if not defined.any():
        return float("nan")
    if protocol == "reference":
        return float(np.where(defined, aps, 0.0).mean())
    return float(aps[defined].mean())


def precision_recall_f1_at_k(scores: np.ndarray, targets: np.ndarray, k: int) -> dict[str, float]:
    """Top-k precision, recall and F1 pooled over all images (the zero-shot multi-label protocol).

    Each image predicts its k highest-scoring labels (ties broken by the lower label index).
    With TP the number of predicted labels that are positives, summed over all N images:
    ``P = TP / (k * N)``, ``R = TP / (number of positives)``, ``F1 = 2PR / (P + R)`` (0 when
    P + R = 0). Images without positives count in P's denominator, as in the evaluation code of
    the ZSL papers (whose test sets drop such images beforehand).
    """
    scores, positives = _as_2d(scores, targets)
    n, num_labels = scores.shape
    if not 1 <= k <= num_labels:
        raise ValueError(f"k must be in [1, {num_labels}] (the number of labels), got {k}")
    if n == 0:
        raise ValueError("precision/recall at k of an empty set")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    tp = int(np.take_along_axis(positives, top, axis=1).sum())
    total = int(positives.sum())
    p = tp / (k * n)
    r = tp / total if total else 0.0
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"p": float(p), "r": float(r), "f1": float(f1)}


def multilabel_metrics(
    scores: np.ndarray,
    targets: np.ndarray,
    label_idx: Sequence[int] | np.ndarray | None = None,
    prefix: str = "zsl",
    ks: Sequence[int] = (3, 5),
    map_protocol: MapProtocol = "reference",
) -> dict[str, float]:
    """mAP and P/R/F1@k on a label subset, as flat keys ``{prefix}_map``, ``{prefix}_p3``,
    ``{prefix}_r3``, ``{prefix}_f1_3``, ``{prefix}_p5`` ...

    ``label_idx`` picks the columns to evaluate (ZSL: the unseen labels; GZSL: all, ``None``).
    Scores of the other labels play no part, so ZSL top-k is among unseen labels only.
    ``{prefix}_map`` follows ``map_protocol``; ``{prefix}_map_reference`` and
    ``{prefix}_map_skip_empty`` give both, so a table can quote either.
    """
    scores, positives = _as_2d(scores, targets)
    if label_idx is not None:
        idx = np.asarray(label_idx, dtype=np.int64)
        if idx.size == 0:
            raise ValueError("label_idx is empty: name at least one label to evaluate")
        if idx.min() < 0 or idx.max() >= scores.shape[1]:
            raise ValueError(f"label_idx out of range for {scores.shape[1]} labels")
        scores, positives = scores[:, idx], positives[:, idx]
    if map_protocol not in MAP_PROTOCOLS:
        raise ValueError(f"map_protocol must be one of {MAP_PROTOCOLS}, got {map_protocol!r}")
    aps = _label_aps(scores, positives)  # once: NUS-WIDE's GZSL ranks 1006 labels per epoch
    by_protocol = {p: _mean_ap(aps, p) for p in MAP_PROTOCOLS}
    out = {f"{prefix}_map": by_protocol[map_protocol]}
    out.update({f"{prefix}_map_{p}": value for p, value in by_protocol.items()})
    for k in ks:
        prf = precision_recall_f1_at_k(scores, positives, k)
        out[f"{prefix}_p{k}"] = prf["p"]
        out[f"{prefix}_r{k}"] = prf["r"]
        out[f"{prefix}_f1_{k}"] = prf["f1"]
    return out
