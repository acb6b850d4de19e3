"""J = CE + alpha * J_reg, checked against numpy and hand-derived gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.losses import description_regularizer, regularized_ce_loss


def test_regularizer_value_matches_numpy() -> None:
    x = np.array([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]])
    means = np.array([[0.5, 0.5], [-1.0, 1.0]])
    labels = np.array([0, 1, 0])
    # by hand: ||(0.5, 1.5)||^2 = 2.5; ||(1, -2)||^2 = 5; ||(2.5, 0)||^2 = 6.25 → mean 13.75/3
    expected = (2.5 + 5.0 + 6.25) / 3
    assert np.isclose(np.mean(np.sum((x - means[labels]) ** 2, axis=1)), expected)
    got = description_regularizer(torch.tensor(x), torch.tensor(means), torch.tensor(labels))
    assert abs(float(got) - expected) < 1e-12


def test_regularizer_gradient_is_2_over_b_times_difference() -> None:
    rng = np.random.default_rng(0)
    x_np = rng.normal(size=(4, 3))
    means_np = rng.normal(size=(2, 3))
    labels_np = np.array([1, 0, 1, 1])
    x = torch.tensor(x_np, requires_grad=True)
    description_regularizer(x, torch.tensor(means_np), torch.tensor(labels_np)).backward()
    expected = 2.0 / len(x_np) * (x_np - means_np[labels_np])
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=0, atol=1e-12)


def test_total_loss_terms_and_baseline() -> None:
    rng = np.random.default_rng(1)
    logits_np = rng.normal(size=(5, 3))
    x_np = rng.normal(size=(5, 4))
    means_np = rng.normal(size=(3, 4))
    labels_np = np.array([0, 2, 1, 1, 0])
    shifted = logits_np - logits_np.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    ce = -log_softmax[np.arange(5), labels_np].mean()
    reg = np.mean(np.sum((x_np - means_np[labels_np]) ** 2, axis=1))

    args = [torch.tensor(a) for a in (logits_np, x_np, labels_np, means_np)]
    terms = regularized_ce_loss(*args, alpha=0.3)
    assert set(terms) == {"loss", "ce", "reg"}
    # the terms come back in float32 (measured: under 1e-7 relative from numpy's float64);
    # 1e-5 relative is 100x that, and the 0.3 * reg term is 60% of the loss
    assert float(terms["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(terms["reg"]) == pytest.approx(reg, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(ce + 0.3 * reg, rel=1e-5)

    # alpha = 0: the baseline, whose gradient does not reach x through the regularizer.
    x = torch.tensor(x_np, requires_grad=True)
    logits = torch.tensor(logits_np, requires_grad=True)
    base = regularized_ce_loss(logits, x, args[2], args[3], alpha=0.0)
    assert float(base["loss"].detach()) == pytest.approx(ce, rel=1e-5)
    assert float(base["reg"]) == pytest.approx(reg, rel=1e-5)  # still logged
    base["loss"].backward()
    assert x.grad is None or float(x.grad.abs().sum()) == 0.0
