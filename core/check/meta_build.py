"""Every model the jobs run, built at its real architecture on the ``meta`` device.

No weights are read and nothing is initialised: open_clip models from their registered configs,
timm backbones by name, transformers models from config objects (read from a weight folder's
``config.json`` when it exists, else from a published configuration). The same classes the jobs
use are built here (``ClipClassifier``, ``CLIPDecoder``, BLIP-2's vision model and Q-Former,
LLaMA, LLaVA), so a shape that does not fit fails here as it would on the cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

META = torch.device("meta")


@dataclass(frozen=True)
class ClipShape:
    """Widths of an open_clip model, from its registered config (nothing built)."""

    name: str
    embed_dim: int  # image and text embedding width
    image_size: int
    text_context: int


def clip_shape(model_name: str) -> ClipShape:
    """The embedding width and input sizes of an open_clip model name (tiny presets included)."""
    import open_clip

    from core.models.open_clip_models import register_tiny_configs

    register_tiny_configs()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"clip model {model_name!r} is not an open_clip model")
    size = cfg["vision_cfg"].get("image_size", 224)
    size = size[0] if isinstance(size, list | tuple) else int(size)
    return ClipShape(
        model_name, int(cfg["embed_dim"]), size, int(cfg["text_cfg"].get("context_length", 77))
    )


def open_clip_model(model_name: str) -> Any:
    """The whole open_clip model on meta (callers drop the tower they do not use)."""
    import open_clip

    from core.models.open_clip_models import register_tiny_configs

    register_tiny_configs()
    with META:
        return open_clip.create_model(model_name, pretrained=None, device=META)


def classifier(model_name: str, num_classes: int) -> nn.Module:
    """``ClipClassifier``: the image tower of ``model_name`` plus a linear head, on meta."""
    from core.models.clip_classifier import ClipClassifier

    model = open_clip_model(model_name)
    embed_dim = clip_shape(model_name).embed_dim
    with META:
        return ClipClassifier(model.visual, embed_dim, num_classes)


def text_tower(model_name: str) -> nn.Module:
    """The open_clip model without its image tower (what the class-means job keeps)."""
    model = open_clip_model(model_name)
    model.visual = None
    return model


def clip_decoder(model_cfg: Any, text_dim: int) -> nn.Module:
    """``CLIPDecoder`` as ``core.train.methods.clip_decoder.build_model`` builds it, on meta."""
    from core.models.clip_decoder import (
        HEAD_DEFAULTS,
        TINY_BACKBONES,
        TINY_HEAD,
        CLIPDecoder,
        build_backbone,
    )

    defaults = TINY_HEAD if model_cfg.backbone in TINY_BACKBONES else HEAD_DEFAULTS
    sizes = {
        key: getattr(model_cfg, key) or defaults[key]
        for key in ("decoder_embedding", "num_heads", "dim_feedforward", "align_dim")
    }
    with META:
        backbone = build_backbone(model_cfg.backbone, pretrained=False)
        return CLIPDecoder(backbone, text_dim, dropout=model_cfg.dropout, **sizes)


def read_json(path: str) -> dict[str, Any] | None:
    """A local JSON file (a weight folder's config.json), or None when it is not there."""
    file = Path(path)
    return json.loads(file.read_text()) if file.is_file() else None


@dataclass
class Blip2ImageSide:
    """BLIP-2's parts that MiniGPT-4 uses, on meta."""

    vision: nn.Module
    qformer: nn.Module
    query_tokens: torch.Tensor
    image_size: int


def blip2_image_side(values: dict[str, Any]) -> Blip2ImageSide:
    """BLIP-2's vision model, Q-Former and query tokens from a BLIP-2 ``config.json``'s values."""
    from transformers import (
        Blip2QFormerConfig,
        Blip2QFormerModel,
        Blip2VisionConfig,
        Blip2VisionModel,
    )

    vision_cfg = Blip2VisionConfig(**_plain(values.get("vision_config", {})))
    qformer_cfg = Blip2QFormerConfig(**_plain(values.get("qformer_config", {})))
    queries = int(values.get("num_query_tokens", 32))
    with META:
        vision = Blip2VisionModel(vision_cfg)
        qformer = Blip2QFormerModel(qformer_cfg)
        query_tokens = nn.Parameter(torch.zeros(1, queries, qformer_cfg.hidden_size))
    return Blip2ImageSide(vision, qformer, query_tokens, int(vision_cfg.image_size))


def causal_lm(values: dict[str, Any]) -> nn.Module:
    """A decoder-only LLM (LLaMA family) from its ``config.json`` values, on meta."""
    from transformers import AutoConfig, AutoModelForCausalLM

    values = _plain(values)
    config = AutoConfig.for_model(values.pop("model_type", "llama"), **values)
    with META:
        return AutoModelForCausalLM.from_config(config)


def llava(values: dict[str, Any]) -> nn.Module:
    """A LLaVA-style image-text-to-text model from its ``config.json`` values, on meta."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    values = _plain(values)
    config = AutoConfig.for_model(values.pop("model_type", "llava"), **values)
    with META:
        return AutoModelForImageTextToText.from_config(config)


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the bookkeeping keys transformers writes (architectures, ...)."""
    drop = {"architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype"}
    return {k: v for k, v in values.items() if k not in drop}
