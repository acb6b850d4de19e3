"""Building open_clip models: real ones by name + pretrained tag or local file, tiny ones offline.

Real checkpoints load through open_clip's own factory (``pretrained`` is an open_clip tag such as
``openai`` or a path to a local ``.pt``/``.bin``/``.safetensors`` file). The tiny presets are
open_clip model configs of the same architecture with width 32, registered under their own names,
so tests and the demo run every code path without weights or network; their random weights come
from :func:`core.models.seeded_init.seeded_init_`, so they do not change with open_clip's own init.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from core.models.seeded_init import seeded_init_

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    # A ViT of the same family as ViT-B/32 and ViT-L/14, shrunk to width 32 and 2 layers.
    "tiny-vit": {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 32,
            "head_width": 16,
            "patch_size": 8,
        },
        "text_cfg": {
            "context_length": 32,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 2,
        },
    },
}
#: open_clip applies these matrices as ``x @ W``: their input size is dimension 0.
_FAN_IN_DIMS = {"proj": 0, "text_projection": 0}


_REGISTER_LOCK = threading.Lock()


def register_tiny_configs() -> None:
    """Add the tiny configs to open_clip's registry (idempotent, per process).

    open_clip's public registration reads JSON files from a path; it keeps what it read in memory
    (rescans skip paths that no longer exist), so the files live in a temporary folder that is
    removed as soon as they are read: one process, Ray worker or not, leaves nothing behind.
    Threads take turns: a rescan by one must not meet the folder another is removing.
    """
    with _REGISTER_LOCK:
        missing = {n: c for n, c in TINY_CONFIGS.items() if n not in open_clip.list_models()}
        if not missing:
            return
        with tempfile.TemporaryDirectory(prefix="open-clip-tiny-") as folder:
            for name, cfg in missing.items():
                Path(folder, f"{name}.json").write_text(json.dumps(cfg))
            open_clip.add_model_config(folder)
    unregistered = sorted(set(missing) - set(open_clip.list_models()))
    if unregistered:
        raise RuntimeError(f"open_clip did not register the tiny configs {unregistered}")


def is_tiny(model_name: str) -> bool:
    return model_name in TINY_CONFIGS


@dataclass
class ClipBundle:
    """A CLIP model with the transforms and tokenizer that belong to it."""

    model: Any
    train_transform: Any
    eval_transform: Any
    tokenizer: Any
    embed_dim: int
    image_size: int


def build_clip(model_name: str, pretrained: str = "", seed: int = 0) -> ClipBundle:
    """Create an open_clip model on CPU (callers move it); tiny models get seeded random weights.

    ``pretrained`` is an open_clip tag (downloaded through open_clip's cache) or a local
    checkpoint path; "" means random initialisation (only sensible for tiny models and tests).
    A tiny model without ``pretrained`` is initialised by :func:`seeded_init_` with ``seed``.
    """
    register_tiny_configs()
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"clip model {model_name!r} is not an open_clip model (see open_clip.list_models()) "
            f"or use a tiny preset: {', '.join(TINY_CONFIGS)}"
        )
    if pretrained and not is_tiny(model_name) and not os.path.exists(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise ValueError(
                f"clip pretrained {pretrained!r}: neither a local file nor a tag of {model_name} "
                f"(tags: {', '.join(tags) or 'none'})"
            )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model, train_tf, eval_tf = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained or None
        )
    if is_tiny(model_name) and not pretrained:
        seeded_init_(model, seed, fan_in_dims=_FAN_IN_DIMS)
    tokenizer = open_clip.get_tokenizer(model_name)
    visual = model.visual
    size = getattr(visual, "image_size", 224)
    size = size[0] if isinstance(size, tuple | list) else int(size)
    embed_dim = int(getattr(visual, "output_dim", 0) or model.text_projection.shape[1])
    return ClipBundle(model, train_tf, eval_tf, tokenizer, embed_dim, size)


def embed_dim_of(model_name: str) -> int:
    """The width of a CLIP model's image and text embeddings, from its config (nothing built)."""
    register_tiny_configs()
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise ValueError(f"clip model {model_name!r} is not an open_clip model")
    return int(model_cfg["embed_dim"])


def build_transforms(model_name: str, pretrained: str = "") -> tuple[Any, Any]:
    """open_clip's (train, eval) image transforms for a model, without building the model.

    The training driver needs only the transforms to plan its Ray Data streams; creating a
    ViT-L/14 there just for them would cost seconds and gigabytes. The preprocessing settings
    (mean, std, interpolation, resize mode) come from the pretrained tag's config when there is
    one, as ``create_model_and_transforms`` does.
    """
    register_tiny_configs()
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise ValueError(f"clip model {model_name!r} is not an open_clip model")
    size = model_cfg["vision_cfg"].get("image_size", 224)
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    options = {
        "mean": tag_cfg.get("mean") or open_clip.OPENAI_DATASET_MEAN,
        "std": tag_cfg.get("std") or open_clip.OPENAI_DATASET_STD,
        "interpolation": tag_cfg.get("interpolation"),
        "resize_mode": tag_cfg.get("resize_mode"),
    }
    return (
        open_clip.image_transform(size, is_train=True, **options),
        open_clip.image_transform(size, is_train=False, **options),
    )
