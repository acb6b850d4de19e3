"""CLIP-Decoder model: shapes, backbone building, and the zero-shot guarantee of the loss."""

from __future__ import annotations

import pytest
import timm
import torch
from _tolerance import assert_close_rel

from core.models.clip_decoder import (
    CLIPDecoder,
    CLIPDecoderOutput,
    build_backbone,
    build_clip_decoder,
    seen_label_loss,
)

TEXT_DIM = 32
NUM_SEEN, NUM_UNSEEN = 5, 3


@pytest.fixture(scope="module")
def model() -> CLIPDecoder:
    return build_clip_decoder(TEXT_DIM, backbone="tresnet-tiny", seed=0)


def test_tiny_forward_shapes(model):
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randn(7, TEXT_DIM)
    out = model(images, labels)
    assert isinstance(out, CLIPDecoderOutput)
    assert out.logits.shape == (2, 7)
    assert out.image_embed.shape == (2, 32) and out.label_embed.shape == (7, 32)
    torch.testing.assert_close(out.image_embed.norm(dim=1), torch.ones(2))
    assert model.features(images).dim() == 4  # spatial features, before pooling
    assert isinstance(model.backbone, timm.models.tresnet.TResNet)
    assert model.data_config["mean"] == (0.0, 0.0, 0.0)


def test_same_seed_same_weights_and_local_checkpoint(tmp_path):
    a = build_clip_decoder(TEXT_DIM, backbone="tresnet-tiny", seed=3)
    b = build_clip_decoder(TEXT_DIM, backbone="tresnet-tiny", seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    ckpt = tmp_path / "backbone.pth"
    torch.save(a.backbone.state_dict(), ckpt)
    loaded = build_backbone("tresnet-tiny", pretrained=str(ckpt))
    for k, v in a.backbone.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_backbone("tresnet-tiny", pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="not a timm model"):
        build_backbone("no-such-net")


def _grads(model, label_emb, targets, seen_idx, images, seed=0):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same dropout masks for every call
    terms, _ = seen_label_loss(
        model, images, label_emb, targets, seen_idx, alpha=0.5, beta=1.0, temperature=0.1
    )
    terms["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return terms, grads


def test_unseen_labels_never_reach_the_loss_or_the_gradients(model):
    torch.manual_seed(0)
    model.train()
    images = torch.randn(3, 3, 64, 64)
    seen_emb = torch.randn(NUM_SEEN, TEXT_DIM, requires_grad=True)
    unseen_emb = torch.randn(NUM_UNSEEN, TEXT_DIM, requires_grad=True)
    targets = torch.zeros(3, NUM_SEEN + NUM_UNSEEN)
    targets[0, [0, 6]] = 1
    targets[1, [2, 5]] = 1
    targets[2, 7] = 1
    seen_idx = list(range(NUM_SEEN))

    terms, grads = _grads(model, torch.cat([seen_emb, unseen_emb]), targets, seen_idx, images)
    assert unseen_emb.grad is not None and torch.all(unseen_emb.grad == 0)
    assert seen_emb.grad.abs().sum() > 0
    assert grads, "the loss must reach the model's parameters"

    # change every unseen embedding and target: loss and every gradient stay identical
    targets2 = targets.clone()
    targets2[:, NUM_SEEN:] = 1 - targets2[:, NUM_SEEN:]
    other_unseen = torch.randn(NUM_UNSEEN, TEXT_DIM) * 5
    terms2, grads2 = _grads(
        model, torch.cat([seen_emb.detach(), other_unseen]), targets2, seen_idx, images
    )
    for key in ("loss", "clip", "cls"):
        assert torch.equal(terms[key].detach(), terms2[key].detach()), key
    assert grads.keys() == grads2.keys()
    for name, g in grads.items():
        assert torch.equal(g, grads2[name]), name

    # a seen target does change the loss (the check above is not vacuous)
    targets3 = targets.clone()
    targets3[2, 1] = 1
    terms3, _ = _grads(
        model, torch.cat([seen_emb.detach(), unseen_emb.detach()]), targets3, seen_idx, images
    )
    assert not torch.equal(terms["loss"].detach(), terms3["loss"].detach())


def test_scoring_subsets_gives_the_same_columns(model):
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randn(NUM_SEEN + NUM_UNSEEN, TEXT_DIM)
    with torch.no_grad():
        gzsl = model(images, labels).logits
        zsl = model(images, labels[NUM_SEEN:]).logits
    # the same dot products, batched with more labels: float32 rounding only (~1e-7 relative)
    assert_close_rel(zsl, gzsl[:, NUM_SEEN:], rel=1e-5, what="unseen-label logits")


def test_seen_label_loss_checks_shapes(model):
    images = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="same label set"):
        seen_label_loss(model, images, torch.randn(4, TEXT_DIM), torch.zeros(1, 5), [0, 1])
    with pytest.raises(ValueError, match="empty"):
        seen_label_loss(model, images, torch.randn(4, TEXT_DIM), torch.zeros(1, 4), [])
