"""CLIP-Decoder (Ali & Khan, 2023): TResNet features -> zero-shot ML-Decoder, CLIP label queries.

``out = model(images, label_embeddings)`` scores any label set: ``label_embeddings`` [L, T] are the
frozen CLIP text embeddings of the labels' prompts (:func:`core.text.label_prompts.
embed_label_prompts`), used as the ML-Decoder's queries through its shared projection, and
``out.logits`` is [B, L]. For the alignment loss the model also projects the pooled image features
and the label embeddings to one shared dimension (``out.image_embed`` [B, d], ``out.label_embed``
[L, d], both unit norm); these two projections are separate heads that only the alignment loss
uses.

Zero-shot protocol: training passes the SEEN labels only, so unseen labels never reach the loss
or the gradients (:func:`seen_label_loss` does this slicing); evaluation passes the unseen labels
(ZSL) or all of them (GZSL). As the decoder has no self-attention, a label's logit does not depend
on which other labels are scored with it.

Backbones are timm models (default ``tresnet_m``, features before pooling via
``forward_features``); ``"tresnet-tiny"`` is timm's TResNet class itself with one block per stage
and width factor 0.125 (256 output channels) for tests, whose random weights (and the head's) come
from :func:`core.models.seeded_init.seeded_init_`, independent of timm's and torch's init.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from core.losses import clip_decoder_loss
from core.models.ml_decoder import MLDecoder
from core.models.seeded_init import seeded_init_

# Shrunken TResNet (same architecture: space-to-depth stem, anti-aliased BasicBlock/Bottleneck
# stages with SE, plain BatchNorm) plus head sizes to match; a forward on 64x64 takes milliseconds.
TINY_BACKBONES: dict[str, dict[str, Any]] = {
    "tresnet-tiny": {"timm_name": "tresnet_m", "layers": [1, 1, 1, 1], "width_factor": 0.125},
}
TINY_HEAD = {"decoder_embedding": 32, "num_heads": 2, "dim_feedforward": 64, "align_dim": 32}
#: ML-Decoder applies ``duplicate_pooling`` [..., D, F] as ``h @ W``: its input size is dim -2.
_FAN_IN_DIMS = {"duplicate_pooling": -2}
HEAD_DEFAULTS = {
    "decoder_embedding": 768,
    "num_heads": 8,
    "dim_feedforward": 2048,
    "align_dim": 512,
}


@dataclass
class CLIPDecoderOutput:
    """Logits [B, L] over the given labels, and the aligned embeddings for ``L_clip``."""

    logits: torch.Tensor
    image_embed: torch.Tensor
    label_embed: torch.Tensor


class CLIPDecoder(nn.Module):
    """Backbone (spatial features) + zero-shot ML-Decoder + image/label alignment projections."""

    def __init__(
        self,
        backbone: nn.Module,
        text_dim: int,
        decoder_embedding: int = 768,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        align_dim: int = 512,
    ) -> None:
        super().__init__()
        num_features = int(getattr(backbone, "num_features", 0))
        if num_features < 1 or not hasattr(backbone, "forward_features"):
            raise ValueError("backbone must be a timm model (forward_features and num_features)")
        self.backbone = backbone
        self.text_dim = text_dim
        self.head = MLDecoder(
            num_classes=None,
            initial_num_features=num_features,
            decoder_embedding=decoder_embedding,
            num_heads=num_heads,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            zsl=True,
            wordvec_dim=text_dim,
        )
        self.image_proj = nn.Linear(num_features, align_dim)
        self.text_proj = nn.Linear(text_dim, align_dim)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features before pooling, [B, C, H, W]."""
        return self.backbone.forward_features(images)

    def forward(self, images: torch.Tensor, label_embeddings: torch.Tensor) -> CLIPDecoderOutput:
        """Score ``label_embeddings`` [L, text_dim] (one row per label) for ``images``."""
        feats = self.features(images)
        label_embeddings = label_embeddings.to(self.text_proj.weight.dtype)
        logits = self.head(feats, label_embeddings)
        pooled = feats.flatten(2).mean(dim=2) if feats.dim() == 4 else feats.mean(dim=1)
        image_embed = F.normalize(self.image_proj(pooled), dim=-1)
        label_embed = F.normalize(self.text_proj(label_embeddings), dim=-1)
        return CLIPDecoderOutput(logits, image_embed, label_embed)

    @property
    def data_config(self) -> dict[str, Any]:
        """timm's input settings for the backbone (input size, mean/std: TResNet uses 0/1)."""
        return timm.data.resolve_model_data_config(self.backbone)


def build_backbone(name: str = "tresnet_m", pretrained: bool | str = False) -> nn.Module:
    """A timm model without classifier; ``pretrained`` is a flag (timm's hub weights) or a path.

    A path loads a local checkpoint through timm's own loader (``pretrained_cfg_overlay``), so key
    filtering (e.g. TResNet's inplace-ABN conversion) applies as for hub weights.
    """
    kwargs: dict[str, Any] = {"num_classes": 0}
    timm_name = name
    if name in TINY_BACKBONES:
        preset = dict(TINY_BACKBONES[name])
        timm_name = preset.pop("timm_name")
        kwargs.update(preset)
    elif name not in timm.list_models():
        raise ValueError(
            f"backbone {name!r} is not a timm model (see timm.list_models()) nor a tiny preset "
            f"({', '.join(TINY_BACKBONES)})"
        )
    if isinstance(pretrained, str) and pretrained:
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"backbone checkpoint {pretrained!r} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": pretrained}
        pretrained = True
    return timm.create_model(timm_name, pretrained=bool(pretrained), **kwargs)


def build_clip_decoder(
    text_dim: int,
    backbone: str = "tresnet_m",
    pretrained: bool | str = False,
    decoder_embedding: int | None = None,
    num_heads: int | None = None,
    dim_feedforward: int | None = None,
    align_dim: int | None = None,
    dropout: float = 0.1,
    seed: int = 0,
) -> CLIPDecoder:
    """Build a CLIP-Decoder; ``text_dim`` is the CLIP text embedding size (ClipBundle.embed_dim).

    Head sizes left as None take the paper-scale defaults (768 / 8 heads / 2048 / 512), or small
    ones for a tiny backbone preset. New weights are seeded, so the same call gives the same model;
    with a tiny backbone preset they follow :func:`seeded_init_` (the backbone too, unless it was
    loaded from ``pretrained``), so they do not change with timm's or torch's init defaults.
    """
    defaults = TINY_HEAD if backbone in TINY_BACKBONES else HEAD_DEFAULTS
    given = {
        "decoder_embedding": decoder_embedding,
        "num_heads": num_heads,
        "dim_feedforward": dim_feedforward,
        "align_dim": align_dim,
    }
    sizes = {k: defaults[k] if v is None else v for k, v in given.items()}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_backbone(backbone, pretrained)
        model = CLIPDecoder(net, text_dim, dropout=dropout, **sizes)
    if backbone in TINY_BACKBONES:
        exclude = ("backbone.",) if pretrained else ()
        seeded_init_(model, seed, fan_in_dims=_FAN_IN_DIMS, exclude=exclude)
    return model


def seen_label_loss(
    model: CLIPDecoder,
    images: torch.Tensor,
    label_embeddings: torch.Tensor,
    targets: torch.Tensor,
    train_label_idx: Sequence[int] | torch.Tensor,
    alpha: float = 1.0,
    beta: float = 1.0,
    **loss_kwargs: Any,
) -> tuple[dict[str, torch.Tensor], CLIPDecoderOutput]:
    """The training step's loss on the seen labels only; returns (loss terms, model output).

    ``label_embeddings`` [L_all, T] and ``targets`` [B, L_all] cover the full label set; only the
    columns in ``train_label_idx`` (the seen labels) are given to the model and the loss, so the
    other labels' embeddings and targets cannot affect the loss or any gradient. ``loss_kwargs``
    go to :func:`core.losses.clip_decoder_loss` (temperature, gamma_neg, cls_reduction ...).
    """
    if label_embeddings.dim() != 2 or targets.dim() != 2:
        raise ValueError("label_embeddings must be [L, T] and targets [B, L]")
    if targets.shape[1] != label_embeddings.shape[0]:
        raise ValueError(
            f"targets has {targets.shape[1]} label columns but label_embeddings has "
            f"{label_embeddings.shape[0]} rows: both must cover the same label set"
        )
    idx = torch.as_tensor(train_label_idx, dtype=torch.long, device=label_embeddings.device)
    if idx.numel() == 0:
        raise ValueError("train_label_idx is empty: name the seen labels to train on")
    out = model(images, label_embeddings.index_select(0, idx))
    seen_targets = targets.index_select(1, idx.to(targets.device))
    terms = clip_decoder_loss(
        out.logits, out.image_embed, out.label_embed, seen_targets, alpha, beta, **loss_kwargs
    )
    return terms, out
