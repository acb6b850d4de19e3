"""ML-Decoder head: official state-dict layout, same logits as a reference built from the paper.

The reference below is written independently from the ML-Decoder paper and the public head's
forward: its modules carry the official names (the extra weights hang off an
``nn.TransformerDecoder`` named ``decoder``, the word-vector projection sits on the head), and its
group-FC is the per-group loop into a zero buffer. Its layers are run in a Python loop because
recent torch's ``nn.TransformerDecoder.forward`` needs a ``self_attn`` the layer does not have.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _tolerance import assert_close_rel, rel_error
from torch import nn

from core.models.ml_decoder import MLDecoder

D, FEATS, HEADS, FF = 16, 12, 4, 24
# Both sides run the same float32 layers through different code (MultiheadAttention, a per-group
# loop): they agree to rounding, measured up to 5e-7 relative to the largest logit. 1e-4 leaves
# 200x for other torch builds and is still 100x below a 1% error.
REL = 1e-4


class RefLayer(nn.Module):
    """Decoder layer without self-attention: queries -> +dropout, norm1 -> cross-attn -> FFN."""

    def __init__(self, d: int, heads: int, ff: int, p: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(p)
        self.dropout1 = nn.Dropout(p)
        self.dropout2 = nn.Dropout(p)
        self.dropout3 = nn.Dropout(p)
        self.multihead_attn = nn.MultiheadAttention(d, heads, dropout=p)
        self.linear1 = nn.Linear(d, ff)
        self.linear2 = nn.Linear(ff, d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)

    def forward(self, tgt, memory):
        x = tgt + self.dropout1(tgt)
        x = self.norm1(x)
        a = self.multihead_attn(x, memory, memory)[0]
        x = self.norm2(x + self.dropout2(a))
        y = self.linear2(self.dropout(torch.relu(self.linear1(x))))
        return self.norm3(x + self.dropout3(y))


class RefMLDecoder(nn.Module):
    def __init__(self, num_classes: int, groups: int, zsl: bool = False, wordvec_dim: int = 10):
        super().__init__()
        groups = min(groups, num_classes)
        self.zsl = zsl
        self.decoder = nn.TransformerDecoder(RefLayer(D, HEADS, FF), num_layers=1)
        self.decoder.embed_standart = nn.Linear(FEATS, D)
        if zsl:
            self.decoder.query_embed = None  # set to word vectors from outside, as upstream
            self.wordvec_proj = nn.Linear(wordvec_dim, D)
            self.decoder.duplicate_pooling = nn.Parameter(torch.randn(D, 1))
            self.decoder.duplicate_pooling_bias = nn.Parameter(torch.randn(1))
            self.decoder.duplicate_factor = 1
        else:
            self.decoder.query_embed = nn.Embedding(groups, D)
            self.decoder.query_embed.requires_grad_(False)
            self.decoder.num_classes = num_classes
            self.decoder.duplicate_factor = int(num_classes / groups + 0.999)
            self.decoder.duplicate_pooling = nn.Parameter(
                torch.randn(groups, D, self.decoder.duplicate_factor)
            )
            self.decoder.duplicate_pooling_bias = nn.Parameter(torch.randn(num_classes))

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2) if x.dim() == 4 else x
        memory = F.relu(self.decoder.embed_standart(tokens))
        if self.zsl:
            q = F.relu(self.wordvec_proj(self.decoder.query_embed))
        else:
            q = self.decoder.query_embed.weight
        tgt = q.unsqueeze(1).expand(-1, memory.shape[0], -1)
        h = tgt
        for layer in self.decoder.layers:
            h = layer(h, memory.transpose(0, 1))
        h = h.transpose(0, 1)  # [B, Q, D]
        out = torch.zeros(h.shape[0], h.shape[1], self.decoder.duplicate_factor)
        for i in range(h.shape[1]):
            w = self.decoder.duplicate_pooling
            w_i = w[i] if w.dim() == 3 else w
            out[:, i, :] = h[:, i, :] @ w_i
        logits = out.flatten(1)
        if not self.zsl:
            logits = logits[:, : self.decoder.num_classes]
        return logits + self.decoder.duplicate_pooling_bias


def _randomise(module: nn.Module) -> None:
    """LayerNorms and biases start at 1/0; give every tensor random values so nothing hides."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


@pytest.mark.parametrize(("num_classes", "groups"), [(10, 4), (7, 7), (5, 100)])
def test_normal_mode_matches_reference(num_classes, groups):
    torch.manual_seed(0)
    ref = RefMLDecoder(num_classes, groups)
    _randomise(ref)
    ours = MLDecoder(num_classes, FEATS, D, groups, num_heads=HEADS, dim_feedforward=FF)
    ref_sd = ref.state_dict()
    assert set(ref_sd) == set(ours.state_dict())
    ours.load_state_dict(ref_sd, strict=True)
    ref.eval()
    ours.eval()
    x = torch.randn(3, FEATS, 2, 3)
    with torch.no_grad():
        expected = ref(x)
        got = ours(x)
    assert got.shape == (3, num_classes)
    assert_close_rel(got, expected, rel=REL, what="logits")
    tokens = torch.randn(2, 5, FEATS)  # token input [B, N, C] as well
    with torch.no_grad():
        assert_close_rel(ours(tokens), ref(tokens), rel=REL, what="logits from tokens")


def test_default_groups_and_frozen_queries():
    head = MLDecoder(250, FEATS, D, num_heads=HEADS, dim_feedforward=FF)
    assert head.decoder.query_embed.weight.shape == (100, D)  # min(100, classes) by default
    assert head.decoder.duplicate_pooling.shape == (100, D, 3)  # ceil(250 / 100)
    assert not head.decoder.query_embed.weight.requires_grad


def test_zero_shot_matches_reference_and_scores_any_label_set():
    torch.manual_seed(1)
    ref = RefMLDecoder(num_classes=5, groups=5, zsl=True, wordvec_dim=10)
    _randomise(ref)
    ours = MLDecoder(None, FEATS, D, num_heads=HEADS, dim_feedforward=FF, zsl=True, wordvec_dim=10)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.eval()
    ours.eval()
    x = torch.randn(3, FEATS, 2, 2)
    seen, other = torch.randn(6, 10), torch.randn(4, 10)
    with torch.no_grad():
        ref.decoder.query_embed = seen
        expected = ref(x)
        got = ours(x, seen)
        got_other = ours(x, other)
        both = ours(x, torch.cat([seen, other]))
    assert_close_rel(got, expected, rel=REL, what="zero-shot logits")
    assert got_other.shape == (3, 4)
    # other labels, other logits: measured 0.15 relative, far above rounding (1e-7)
    assert rel_error(got[:, :4], got_other) > 1e-2
    # no self-attention: a label's logit does not depend on the other labels scored with it
    assert_close_rel(both, torch.cat([got, got_other], dim=1), rel=REL, what="joint scoring")


def test_official_key_names_and_no_self_attention():
    normal = MLDecoder(20, 2048, 768, num_groups=10)
    zsl = MLDecoder(None, 2048, 768, zsl=True, wordvec_dim=300)
    for head in (normal, zsl):
        keys = set(head.state_dict())
        assert not any("self_attn" in k for k in keys)
        assert "decoder.layers.0.multihead_attn.in_proj_weight" in keys
        assert "decoder.embed_standart.weight" in keys
        assert not any(k.startswith("decoder.layers.1") for k in keys)
    shapes = {k: tuple(v.shape) for k, v in zsl.state_dict().items()}
    assert shapes["wordvec_proj.weight"] == (768, 300)
    assert shapes["decoder.duplicate_pooling"] == (768, 1)
    assert shapes["decoder.duplicate_pooling_bias"] == (1,)
    assert "decoder.query_embed.weight" not in shapes
    shapes = {k: tuple(v.shape) for k, v in normal.state_dict().items()}
    assert shapes["decoder.query_embed.weight"] == (10, 768)
    assert shapes["decoder.duplicate_pooling"] == (10, 768, 2)
    assert shapes["decoder.duplicate_pooling_bias"] == (20,)
    assert shapes["decoder.layers.0.linear1.weight"] == (2048, 768)
    # word vectors of the decoder's own width: identity projection, no weights (as upstream)
    same = MLDecoder(None, 64, 32, num_heads=2, dim_feedforward=8, zsl=True, wordvec_dim=32)
    assert not any(k.startswith("wordvec_proj") for k in same.state_dict())


def test_clear_errors():
    zsl = MLDecoder(None, FEATS, D, num_heads=HEADS, dim_feedforward=FF, zsl=True, wordvec_dim=10)
    with pytest.raises(ValueError, match="label_embeddings"):
        zsl(torch.randn(1, FEATS, 2, 2))
    with pytest.raises(ValueError, match=r"\[num_labels, 10\]"):
        zsl(torch.randn(1, FEATS, 2, 2), torch.randn(3, 7))
    normal = MLDecoder(4, FEATS, D, num_heads=HEADS, dim_feedforward=FF)
    with pytest.raises(ValueError, match="zero-shot"):
        normal(torch.randn(1, FEATS, 2, 2), torch.randn(3, 10))
    with pytest.raises(ValueError, match="divisible"):
        MLDecoder(4, FEATS, 10, num_heads=3)
