"""CLIP image encoder + one linear layer: the classifier of the LMM-regularized method.

The embedding ``x`` the regularizer pulls toward the class's mean description is the encoder's
output, i.e. the linear layer's input, so ``forward`` returns both the logits and ``x``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from core import storage
from core.config import ClipConfig
from core.models.open_clip_models import ClipBundle, build_clip
from core.models.seeded_init import seeded_init_

MODEL_FILE = "model.pt"
META_FILE = "meta.json"


class ClipClassifier(nn.Module):
    """``logits, x = model(images)`` with ``x = encoder(images)`` and ``logits = head(x)``."""

    def __init__(self, encoder: nn.Module, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.encoder(images)
        return self.head(x), x


def build_classifier(clip: ClipConfig, num_classes: int) -> tuple[ClipClassifier, ClipBundle]:
    """The CLIP image tower (text tower dropped) with a fresh linear head.

    The head's weights come from the project's seeded initialisation (not torch's default for
    ``nn.Linear``), so the same seed gives the same head whatever torch version is installed.
    """
    bundle = build_clip(clip.model_name, clip.pretrained, clip.seed)
    model = ClipClassifier(bundle.model.visual, bundle.embed_dim, num_classes)
    seeded_init_(model.head, clip.seed)
    bundle.model = None  # the text tower is not needed for classification
    return model, bundle


def save_classifier(model: ClipClassifier, folder: str, meta: dict[str, Any]) -> None:
    """Weights plus what is needed to rebuild the model (clip config, class names)."""
    local = not storage.is_uri(folder)
    if local:
        os.makedirs(folder, exist_ok=True)
    import io

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    storage.write_bytes(storage.join(folder, MODEL_FILE), buf.getvalue())
    storage.write_json(storage.join(folder, META_FILE), meta)


def load_classifier(folder: str, device: str | torch.device = "cpu"):
    """Rebuild a saved classifier: returns ``(model, meta, eval_transform)``."""
    meta_path = storage.join(folder, META_FILE)
    if not storage.exists(meta_path):
        raise FileNotFoundError(f"{folder}: not a classifier checkpoint (no {META_FILE})")
    meta = json.loads(storage.read_bytes(meta_path))
    clip = ClipConfig(**meta["clip"])
    model, bundle = build_classifier(clip, len(meta["classes"]))
    import io

    state = torch.load(
        io.BytesIO(storage.read_bytes(storage.join(folder, MODEL_FILE))),
        map_location="cpu",
        weights_only=True,
    )
    model.load_state_dict(state)
    return model.to(device).eval(), meta, bundle.eval_transform
