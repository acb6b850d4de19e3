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
    targets[:, 3] = 0  # a label without positives
    targets[0, 5] = 1
    scores = rng.random((n, num_labels))
    scores[:, 1] = np.round(scores[:, 1], 1)  # many ties
    scores[:, 2] = 0.5  # all tied
    defined = [average_precision_score(targets[:, j], scores[:, j]) for j in range(7) if j != 3]
    # skip_empty: the mean over the 6 labels with positives, as sklearn's defined APs.
    skip = mean_average_precision(scores, targets, "skip_empty")
    assert skip == pytest.approx(np.mean(defined), abs=1e-12)
    # reference (the default): label 3 counts 0, the mean is over all 7 labels.
    assert mean_average_precision(scores, targets) == pytest.approx(sum(defined) / 7, abs=1e-12)
    assert mean_average_precision(scores, targets, "reference") == pytest.approx(skip * 6 / 7)
    for j in (0, 1, 2, 5):
        assert average_precision(scores[:, j], targets[:, j]) == pytest.approx(
            average_precision_score(targets[:, j], scores[:, j]), abs=1e-12
        )
    assert np.isnan(average_precision(scores[:, 3], targets[:, 3]))
    # No label with a positive: nothing to rank, under either protocol.
    for protocol in ("reference", "skip_empty"):
        assert np.isnan(mean_average_precision(scores[:, [3]], targets[:, [3]], protocol))
    with pytest.raises(ValueError, match="map protocol"):
        mean_average_precision(scores, targets, "macro")


def test_map_protocols_by_hand():
    # Three labels over four images; label 2 has no positive.
    #   label 0: scores 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): AP = (1/1 + 2/3) / 2 = 5/6
    #   label 1: scores 0.2 (neg), 0.6 (pos), 0.4 (neg), 0.3 (neg): AP = 1/1 = 1
    #   label 2: no positive
    # reference: (5/6 + 1 + 0) / 3 = 11/18; skip_empty: (5/6 + 1) / 2 = 11/12
    scores = np.array([[0.9, 0.2, 0.5], [0.8, 0.6, 0.1], [0.7, 0.4, 0.3], [0.1, 0.3, 0.9]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert mean_average_precision(scores, targets, "reference") == pytest.approx(11 / 18)
    assert mean_average_precision(scores, targets, "skip_empty") == pytest.approx(11 / 12)
    # All labels with positives: the protocols agree.
    assert mean_average_precision(scores[:, :2], targets[:, :2], "reference") == pytest.approx(
        11 / 12
    )
    out = multilabel_metrics(scores, targets, None, prefix="gzsl", ks=(1,))
    assert out["gzsl_map"] == out["gzsl_map_reference"] == pytest.approx(11 / 18)
    assert out["gzsl_map_skip_empty"] == pytest.approx(11 / 12)
    skip = multilabel_metrics(
        scores, targets, None, prefix="gzsl", ks=(1,), map_protocol="skip_empty"
    )
    assert skip["gzsl_map"] == pytest.approx(11 / 12)
    assert {k: v for k, v in skip.items() if k != "gzsl_map"} == {
        k: v for k, v in out.items() if k != "gzsl_map"
    }
    with pytest.raises(ValueError, match="map_protocol"):
        multilabel_metrics(scores, targets, None, map_protocol="all")


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
    assert set(zsl) == {
        "zsl_map",
        "zsl_map_reference",
        "zsl_map_skip_empty",
        "zsl_p1",
        "zsl_r1",
        "zsl_f1_1",
        "zsl_p2",
        "zsl_r2",
        "zsl_f1_2",
    }
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


def test_clip_decoder_final_metrics_and_table_name_the_map_protocol():
    """Each epoch records both protocols; final_metrics.json quotes the configured one under
    zsl_map / gzsl_map, says which in map_protocol, and the printed table's header names it."""
    from types import SimpleNamespace

    from core.config import ClipDecoderTrainConfig, load_config
    from core.train.methods.clip_decoder import final_test_metrics, zsl_gzsl_metrics
    from ray_jobs.train_clip_decoder import format_table

    scores = np.array([[0.9, 0.2, 0.5], [0.8, 0.6, 0.1], [0.7, 0.4, 0.3], [0.1, 0.3, 0.9]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    unseen = [1, 2]  # label 2, unseen, has no positive
    # ZSL over labels 1, 2: reference (1 + 0) / 2 = 1/2, skip_empty 1; GZSL as in the hand test.
    epoch = zsl_gzsl_metrics(scores[:, unseen], scores, targets, unseen, prefix="test_")
    assert epoch["test_zsl_map"] == epoch["test_zsl_map_reference"] == pytest.approx(1 / 2)
    assert epoch["test_zsl_map_skip_empty"] == pytest.approx(1.0)
    assert epoch["test_gzsl_map"] == pytest.approx(11 / 18)
    skip_epoch = zsl_gzsl_metrics(
        scores[:, unseen], scores, targets, unseen, prefix="test_", map_protocol="skip_empty"
    )
    assert skip_epoch["test_zsl_map"] == pytest.approx(1.0)

    run = SimpleNamespace(
        info={"num_test": 4, "num_seen": 1, "num_unseen": 2},
        latest_checkpoint="ckpt",
        best_checkpoint="ckpt",
        checkpoint_metric="val_zsl_map",
    )
    history = [{"epoch": 0, **epoch}]
    reference = final_test_metrics(history, load_config(ClipDecoderTrainConfig), run)
    assert reference["map_protocol"] == "reference"
    assert reference["zsl_map"] == pytest.approx(1 / 2)
    assert reference["gzsl_map"] == pytest.approx(11 / 18)
    assert reference["zsl_map_skip_empty"] == pytest.approx(1.0)
    skip_cfg = load_config(ClipDecoderTrainConfig, None, ["map_protocol=skip_empty"])
    skip = final_test_metrics(history, skip_cfg, run)  # from the same epoch record
    assert skip["map_protocol"] == "skip_empty"
    assert skip["zsl_map"] == pytest.approx(1.0)
    assert skip["gzsl_map"] == pytest.approx(11 / 12)

    table = format_table(reference).splitlines()
    assert table[0].startswith("mAP protocol: reference (") and "counting 0" in table[0]
    assert table[1].split()[0] == "mAP" and table[2].split()[:2] == ["ZSL", "50.00"]
    table = format_table(skip).splitlines()
    assert table[0].startswith("mAP protocol: skip_empty (")
    assert table[2].split()[:2] == ["ZSL", "100.00"]
