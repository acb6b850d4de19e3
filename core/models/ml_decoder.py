"""ML-Decoder (Ridnik et al., 2023): a cross-attention classification head over spatial features.

What it is: the backbone's spatial tokens are projected to ``decoder_embedding`` (``embed_standart``
+ ReLU); a fixed set of queries attends to them through ONE transformer decoder layer that has
cross-attention and a feed-forward block but no self-attention; the query outputs are turned into
logits by group decoding (a group fully-connected layer: query ``g`` produces ``duplicate_factor``
consecutive logits with its own weights).

Zero-shot mode (``zsl=True``): the queries are label embeddings (word vectors, or CLIP text
embeddings in CLIP-Decoder) passed through a shared ``wordvec_proj`` + ReLU, and the group-FC is a
single ``[decoder_embedding, 1]`` weight shared by every query, so one query gives one logit and
any label set can be scored. The label embeddings are an argument of :meth:`MLDecoder.forward`;
nothing is set on a submodule from outside. As the decoder has no self-attention, the logit of a
label depends only on the image and on that label's own embedding: scoring a subset of labels
gives exactly the corresponding columns of scoring them all.

State-dict layout: identical to the official ``MLDecoder`` (Alibaba-MIIL/ML_Decoder,
``src_files/ml_decoder/ml_decoder.py``), where the extra modules hang off the ``decoder``
container, so official checkpoints load with ``strict=True``:

- ``decoder.layers.0.multihead_attn.{in_proj_weight,in_proj_bias,out_proj.weight,out_proj.bias}``
- ``decoder.layers.0.{linear1,linear2,norm1,norm2,norm3}.{weight,bias}``
- ``decoder.embed_standart.{weight,bias}``: Linear(initial_num_features -> decoder_embedding)
- ``decoder.query_embed.weight``: [num_groups, decoder_embedding], frozen (normal mode only)
- ``decoder.duplicate_pooling``: [num_groups, decoder_embedding, duplicate_factor] (normal mode)
  or [decoder_embedding, 1] (zero-shot mode)
- ``decoder.duplicate_pooling_bias``: [num_classes] (normal mode) or [1] (zero-shot mode)
- ``wordvec_proj.{weight,bias}``: Linear(wordvec_dim -> decoder_embedding) (zero-shot mode; absent
  when ``wordvec_dim == decoder_embedding``, where the official head uses an identity)

No key differs from the official layout. Differences in behaviour, none of which touch the keys:
every hyperparameter (heads, feed-forward width, dropout, word-vector size, which the official code
fixes at 300) is a constructor argument; the group-FC is one einsum instead of a per-group loop;
no ``.cuda()``; and the layer loop is ours, because recent torch's ``nn.TransformerDecoder.forward``
reads ``layers[0].self_attn``, which a layer without self-attention does not have.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_MAX_GROUPS = 100  # official default group count when ``num_groups`` is not given


class CrossAttentionDecoderLayer(nn.Module):
    """A transformer decoder layer with the self-attention block removed (post-norm).

    ML-Decoder drops self-attention between queries (quadratic in the number of labels, and it
    ties labels together); the residual + ``norm1`` step that followed it is kept, applied to the
    queries themselves, so the module names and the computation match the official layer.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``tgt`` [Q, B, D] queries, ``memory`` [S, B, D] image tokens (sequence-first)."""
        tgt = self.norm1(tgt + self.dropout1(tgt))
        attended = self.multihead_attn(tgt, memory, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        ff = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ff))


class _DecoderStack(nn.Module):
    """Container named ``decoder`` in the official head; holds the layer(s) and the head weights."""

    def __init__(self, layer: CrossAttentionDecoderLayer) -> None:
        super().__init__()
        self.layers = nn.ModuleList([layer])

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            tgt = layer(tgt, memory)
        return tgt


class MLDecoder(nn.Module):
    """ML-Decoder head: ``logits = head(features)`` or, zero-shot, ``head(features, label_emb)``.

    Args:
        num_classes: number of logits in normal mode; ignored (may be None) in zero-shot mode.
        initial_num_features: channels of the backbone features (e.g. 2048 for TResNet-M).
        decoder_embedding: width of the decoder (official default 768).
        num_groups: number of queries in normal mode; None means min(100, num_classes), the
            official default; each query decodes ``ceil(num_classes / num_groups)`` logits.
        num_heads, dim_feedforward, dropout, layer_norm_eps: the decoder layer's settings
            (official: 8, 2048, 0.1, 1e-5).
        zsl: zero-shot mode (queries come from label embeddings given to ``forward``).
        wordvec_dim: size of the label embeddings in zero-shot mode (official: 300, word2vec).
    """

    def __init__(
        self,
        num_classes: int | None,
        initial_num_features: int,
        decoder_embedding: int = 768,
        num_groups: int | None = None,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        layer_norm_eps: float = 1e-5,
        zsl: bool = False,
        wordvec_dim: int = 300,
    ) -> None:
        super().__init__()
        if decoder_embedding % num_heads:
            raise ValueError(
                f"decoder_embedding={decoder_embedding} must be divisible by num_heads={num_heads}"
            )
        self.zsl = bool(zsl)
        self.decoder_embedding = decoder_embedding
        self.wordvec_dim = wordvec_dim
        layer = CrossAttentionDecoderLayer(
            decoder_embedding, num_heads, dim_feedforward, dropout, layer_norm_eps
        )
        self.decoder = _DecoderStack(layer)
        self.decoder.embed_standart = nn.Linear(initial_num_features, decoder_embedding)
        if self.zsl:
            self.num_classes = None
            self.num_groups = None
            self.duplicate_factor = 1
            self.decoder.query_embed = None
            self.wordvec_proj = (
                nn.Identity()
                if wordvec_dim == decoder_embedding
                else nn.Linear(wordvec_dim, decoder_embedding)
            )
            pooling = torch.empty(decoder_embedding, 1)
            pooling_bias = torch.empty(1)
        else:
            if not num_classes or num_classes < 1:
                raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
            groups = min(num_groups or DEFAULT_MAX_GROUPS, num_classes)
            if groups < 1:
                raise ValueError(f"num_groups must be positive, got {num_groups}")
            self.num_classes = num_classes
            self.num_groups = groups
            self.duplicate_factor = -(-num_classes // groups)  # ceil
            self.decoder.query_embed = nn.Embedding(groups, decoder_embedding)
            self.decoder.query_embed.requires_grad_(False)  # non-learnable queries
            pooling = torch.empty(groups, decoder_embedding, self.duplicate_factor)
            pooling_bias = torch.empty(num_classes)
        self.decoder.duplicate_pooling = nn.Parameter(pooling)
        self.decoder.duplicate_pooling_bias = nn.Parameter(pooling_bias)
        nn.init.xavier_normal_(self.decoder.duplicate_pooling)
        nn.init.zeros_(self.decoder.duplicate_pooling_bias)

    def queries(self, label_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's queries [Q, decoder_embedding] (zero-shot: projected label embeddings)."""
        if not self.zsl:
            if label_embeddings is not None:
                raise ValueError("label_embeddings are only used in zero-shot mode (zsl=True)")
            return self.decoder.query_embed.weight
        if label_embeddings is None:
            raise ValueError(
                "zero-shot ML-Decoder needs label_embeddings [num_labels, wordvec_dim]"
            )
        if label_embeddings.dim() != 2 or label_embeddings.shape[1] != self.wordvec_dim:
            raise ValueError(
                f"label_embeddings must be [num_labels, {self.wordvec_dim}], "
                f"got {list(label_embeddings.shape)}"
            )
        if label_embeddings.shape[0] == 0:
            raise ValueError("label_embeddings is empty: give at least one label to score")
        return F.relu(self.wordvec_proj(label_embeddings))

    def forward(
        self, features: torch.Tensor, label_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [B, num_classes], or [B, num_labels] in zero-shot mode.

        ``features`` are spatial backbone features [B, C, H, W] (flattened to H*W tokens) or
        tokens [B, N, C]. In zero-shot mode ``label_embeddings`` [L, wordvec_dim] are the labels
        to score, one logit per row, in that order.
        """
        if features.dim() == 4:
            tokens = features.flatten(2).transpose(1, 2)
        elif features.dim() == 3:
            tokens = features
        else:
            raise ValueError(
                f"features must be [B, C, H, W] or [B, N, C], got {list(features.shape)}"
            )
        memory = F.relu(self.decoder.embed_standart(tokens))  # [B, S, D]
        queries = self.queries(label_embeddings).to(memory.dtype)  # [Q, D]
        batch = memory.shape[0]
        tgt = queries.unsqueeze(1).expand(-1, batch, -1)  # [Q, B, D]
        h = self.decoder(tgt, memory.transpose(0, 1)).transpose(0, 1)  # [B, Q, D]
        pooling = self.decoder.duplicate_pooling.to(h.dtype)
        if self.zsl:
            logits = (h @ pooling).squeeze(-1)  # shared [D, 1] weight for every label
        else:
            grouped = torch.einsum("bqd,qdf->bqf", h, pooling)  # group fully-connected
            logits = grouped.flatten(1)[:, : self.num_classes]
        return logits + self.decoder.duplicate_pooling_bias.to(h.dtype)
