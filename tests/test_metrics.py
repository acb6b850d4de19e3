"""Metrics against sklearn and against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from core.metrics import (
    accuracy,
    average_precision,
    mean_average_precision,
    multilabel_metrics,
    precision_recall_f1_at_k,
)


def test_map_matches_sklearn_with_ties_and_an_empty_label():
    rng = np.random.default_rng(0)
    n, num_labels = 60, 7
    targets = (rng.random((n, num_labels)) < 0.3).astype(int)
    targets[:, 3] = 0  # a label without positives: skipped
    targets[0, 5] = 1
    scores = rng.random((n, num_labels))
    scores[:, 1] = np.round(scores[:, 1], 1)  # many ties
    scores[:, 2] = 0.5  # all tied
    expected = np.mean(
        [average_precision_score(targets[:, j], scores[:, j]) for j in range(num_labels) if j != 3]
    )
    assert mean_average_precision(scores, targets) == pytest.approx(expected, abs=1e-12)
    for j in (0, 1, 2, 5):
        assert average_precision(scores[:, j], targets[:, j]) == pytest.approx(
            average_precision_score(targets[:, j], scores[:, j]), abs=1e-12
        )
    assert np.isnan(average_precision(scores[:, 3], targets[:, 3]))
    assert np.isnan(mean_average_precision(scores[:, [3]], targets[:, [3]]))


def test_ap_by_hand():
    # scores 0.9 (pos), 0.8 (neg), 0.8 (pos), 0.1 (neg); the two 0.8s form one threshold.
    # threshold 0.9: P = 1/1, R = 1/2; threshold 0.8: P = 2/3, R = 2/2.
    # AP = (1/2 - 0) * 1 + (1 - 1/2) * 2/3 = 1/2 + 1/3 = 5/6
    assert average_precision(np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 0, 1, 0])) == (
        pytest.approx(5 / 6)
    )


def test_precision_recall_f1_at_k_by_hand():
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0.3],
            [0.2, 0.1, 0.7, 0.6],
            [0.5, 0.4, 0.3, 0.2],
        ]
    )
    targets = np.array(
        [
            [1, 0, 0, 1],
            [0, 0, 1, 0],
            [0, 0, 0, 1],
        ]
    )
    # k = 2: image 0 predicts labels {0, 1} -> 1 hit (label 0)
    #        image 1 predicts labels {2, 3} -> 1 hit (label 2)
    #        image 2 predicts labels {0, 1} -> 0 hits
    # TP = 2, predictions k * N = 6, positives = 4
    # P = 2/6 = 1/3, R = 2/4 = 1/2, F1 = 2 * (1/3) * (1/2) / (1/3 + 1/2) = (1/3) / (5/6) = 2/5
    out = precision_recall_f1_at_k(scores, targets, 2)
    assert out == pytest.approx({"p": 1 / 3, "r": 1 / 2, "f1": 2 / 5})
    # k = 1: predictions 0, 2, 0 -> hits 1, 1, 0: P = 2/3, R = 2/4, F1 = 2*(2/3)(1/2)/(7/6) = 4/7
    assert precision_recall_f1_at_k(scores, targets, 1) == pytest.approx(
        {"p": 2 / 3, "r": 1 / 2, "f1": 4 / 7}
    )
    with pytest.raises(ValueError, match="k must be"):
        precision_recall_f1_at_k(scores, targets, 5)


def test_topk_ties_prefer_lower_label_index():
    scores = np.array([[0.5, 0.5, 0.5]])
    # the top-1 among three equal scores is label 0
    assert precision_recall_f1_at_k(scores, np.array([[1, 0, 0]]), 1)["p"] == 1.0
    assert precision_recall_f1_at_k(scores, np.array([[0, 0, 1]]), 1)["p"] == 0.0


def test_multilabel_metrics_keys_and_subset():
    rng = np.random.default_rng(1)
    scores = rng.random((20, 6))
    targets = (rng.random((20, 6)) < 0.4).astype(int)
    unseen = [4, 5]
    zsl = multilabel_metrics(scores, targets, unseen, prefix="zsl", ks=(1, 2))
    assert set(zsl) == {"zsl_map", "zsl_p1", "zsl_r1", "zsl_f1_1", "zsl_p2", "zsl_r2", "zsl_f1_2"}
    sub_s, sub_t = scores[:, unseen], targets[:, unseen]
    assert zsl["zsl_map"] == pytest.approx(mean_average_precision(sub_s, sub_t))
    assert zsl["zsl_r2"] == pytest.approx(precision_recall_f1_at_k(sub_s, sub_t, 2)["r"])
    gzsl = multilabel_metrics(scores, targets, None, prefix="gzsl")
    assert {"gzsl_map", "gzsl_p3", "gzsl_r3", "gzsl_f1_3", "gzsl_p5", "gzsl_f1_5"} <= set(gzsl)
    assert all(isinstance(v, float) for v in gzsl.values())
    with pytest.raises(ValueError, match="out of range"):
        multilabel_metrics(scores, targets, [6])


def test_accuracy():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        accuracy(logits, np.array([1, 0]))
