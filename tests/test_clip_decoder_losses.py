"""CLIP-Decoder losses: ASL against a value worked out by hand, alignment loss against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.losses import asymmetric_loss, clip_decoder_loss, label_alignment_loss


def test_asymmetric_loss_by_hand():
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, -2.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])

    def sig(x):
        return 1 / (1 + math.exp(-x))

    def neg(x):  # negative entry: q = min(1, 1 - p + 0.05), term = -(1 - q)^4 * log(q)
        q = min(1.0, 1 - sig(x) + 0.05)
        return -((1 - q) ** 4) * math.log(q)

    # positives (gamma_pos = 0): -log(p)
    #   x = 0  -> p = 0.5      -> 0.693147
    #   x = -2 -> p = 0.119203 -> 2.126928
    #   x = 0  -> p = 0.5      -> 0.693147
    # negatives:
    #   x = 2  -> p = 0.880797, q = 0.169203, (1-q)^4 = 0.476410, -log q = 1.776668 -> 0.846415
    #   x = -1 -> p = 0.268941, q = 0.781059 -> 0.000568
    #   x = 1  -> p = 0.731059, q = 0.318941 -> 0.245860
    # sum = 4.606065
    expected = (
        -math.log(sig(0.0)) + neg(2.0) + neg(-1.0) + neg(1.0) - math.log(sig(-2.0)) - math.log(0.5)
    )
    assert expected == pytest.approx(4.606065, rel=1e-6)  # the hand sum is to 6 decimals
    # float32 against float64: each term carries a few float32 roundings (~1e-7 relative each);
    # 1e-5 relative is 100x that and 1/10 of the smallest term (0.000568 / 4.6 = 1.2e-4)
    got = asymmetric_loss(logits, targets, gamma_neg=4, gamma_pos=0, clip=0.05)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    mean = asymmetric_loss(logits, targets, reduction="mean")
    assert mean.item() == pytest.approx(expected / 6, rel=1e-5)
    # gamma 0 and no clip: plain binary cross-entropy (summed)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    plain = asymmetric_loss(logits, targets, gamma_neg=0, gamma_pos=0, clip=0)
    assert plain.item() == pytest.approx(bce.item(), rel=1e-5)


def test_asymmetric_loss_focal_weight_has_no_gradient():
    logits = torch.tensor([[0.3, -1.2]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0]])
    asymmetric_loss(logits, targets).backward()
    # with the weight w held constant: d/dx [-w * log(q)] for the negative, q = 1 - p + clip
    p = torch.sigmoid(torch.tensor(-1.2)).item()
    q = 1 - p + 0.05
    w = (1 - q) ** 4
    expected_neg = w * p * (1 - p) / q
    assert logits.grad[0, 1].item() == pytest.approx(expected_neg, rel=1e-5)
    expected_pos = torch.sigmoid(torch.tensor(0.3)).item() - 1  # d/dx [-log p] = p - 1
    assert logits.grad[0, 0].item() == pytest.approx(expected_pos, rel=1e-5)


def _numpy_alignment(img, lab, targets, temperature):
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    lab = lab / np.linalg.norm(lab, axis=1, keepdims=True)
    z = img @ lab.T / temperature
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    per_image = [-log_p[i, targets[i] > 0].mean() for i in range(len(img)) if targets[i].any()]
    return float(np.mean(per_image))


def test_label_alignment_loss_matches_numpy_and_skips_images_without_positives():
    rng = np.random.default_rng(0)
    img, lab = rng.normal(size=(5, 8)), rng.normal(size=(6, 8))
    targets = np.zeros((5, 6))
    targets[0, [1, 2]] = 1
    targets[1, 0] = 1
    targets[3, [0, 4, 5]] = 1  # images 2 and 4 have no positives
    got = label_alignment_loss(
        torch.tensor(img), torch.tensor(lab), torch.tensor(targets), temperature=0.1
    )
    assert got.item() == pytest.approx(_numpy_alignment(img, lab, targets, 0.1), rel=1e-5)
    # no positive anywhere: zero, and still differentiable
    x = torch.tensor(img, requires_grad=True)
    zero = label_alignment_loss(x, torch.tensor(lab), torch.zeros(5, 6))
    zero.backward()
    assert zero.item() == 0.0 and torch.all(x.grad == 0)
    with pytest.raises(ValueError, match="targets must be"):
        label_alignment_loss(torch.tensor(img), torch.tensor(lab), torch.zeros(5, 5))


def test_clip_decoder_loss_combines_named_terms():
    rng = np.random.default_rng(2)
    logits = torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float32)
    img = torch.tensor(rng.normal(size=(4, 8)), dtype=torch.float32)
    lab = torch.tensor(rng.normal(size=(3, 8)), dtype=torch.float32)
    targets = torch.tensor((rng.random((4, 3)) < 0.5).astype(np.float32))
    out = clip_decoder_loss(logits, img, lab, targets, alpha=0.3, beta=2.0, temperature=0.2)
    assert set(out) == {"loss", "clip", "cls"}
    cls = asymmetric_loss(logits, targets)
    align = label_alignment_loss(img, lab, targets, 0.2)
    assert out["cls"].item() == pytest.approx(cls.item())
    assert out["clip"].item() == pytest.approx(align.item())
    # float32 weighted sum of two positive terms: a few roundings (~2e-7 relative)
    assert out["loss"].item() == pytest.approx(0.3 * align.item() + 2.0 * cls.item(), rel=1e-5)
