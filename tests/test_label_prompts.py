"""Label-prompt embeddings: template averaging checked against per-prompt encodings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _tolerance import assert_close_rel

from core.models.open_clip_models import build_clip
from core.text.label_prompts import (
    DEFAULT_TEMPLATES,
    TEMPLATE_SETS,
    embed_label_prompts,
    format_prompts,
    resolve_templates,
)


@pytest.fixture(scope="module")
def bundle():
    return build_clip("tiny-vit", "", seed=0)


def test_average_of_normalised_prompt_embeddings(bundle):
    labels = ["sky", "dog", "traffic light"]
    templates = ["a photo of a {label}.", "{label}", "a blurry picture of the {label}"]
    got = embed_label_prompts(bundle, None, labels, templates, batch_size=2)
    assert got.shape == (3, bundle.embed_dim) and got.dtype == torch.float32
    bundle.model.eval()
    with torch.no_grad():
        for i, label in enumerate(labels):
            prompts = [t.replace("{label}", label) for t in templates]
            one = F.normalize(bundle.model.encode_text(bundle.tokenizer(prompts)), dim=-1)
            expected = F.normalize(one.mean(dim=0), dim=-1)
            # the same float32 encoder, batched differently: rounding only (~1e-7 relative)
            assert_close_rel(got[i], expected, rel=1e-5, what=label)


def test_model_and_tokenizer_given_separately_and_mode_restored(bundle):
    bundle.model.train()
    a = embed_label_prompts(bundle.model, bundle.tokenizer, ["cat"], "photo")
    assert bundle.model.training
    b = embed_label_prompts(bundle, None, ["cat"], TEMPLATE_SETS["photo"])
    torch.testing.assert_close(a, b)


def test_template_checks():
    assert resolve_templates("default") == DEFAULT_TEMPLATES
    assert format_prompts(["a", "b"], ["x {label}", "{label} y"]) == ["x a", "a y", "x b", "b y"]
    with pytest.raises(ValueError, match=r"'a photo of a label' has no \{label\}"):
        resolve_templates(["a photo of a label"])
    with pytest.raises(ValueError, match="unknown template set"):
        resolve_templates("nope")
    with pytest.raises(ValueError, match="empty"):
        resolve_templates([])
