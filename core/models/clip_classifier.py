"""CLIP image encoder + one linear layer: the classifier of the LMM-regularized method.

The embedding ``x`` the regularizer pulls toward the class's mean description is the encoder's
output, i.e. the linear layer's input, so ``forward`` returns both the logits and ``x``. Class
means of raw text embeddings (the default) match this raw ``x``; class means of L2-normalised
text embeddings match ``normalize_embedding=True``, which returns ``x / ||x||`` instead.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from typing import Any

import torch
from torch import nn

from core import storage
from core.config import ClipConfig
from core.models.open_clip_models import ClipBundle, build_clip
from core.models.seeded_init import seeded_init_

MODEL_FILE = "model.safetensors"
LEGACY_MODEL_FILE = "model.pt"  # written before safetensors; still read (tensors only)
META_FILE = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong with it."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def load_tensor_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file, never running pickled code.

    torch files are read with ``weights_only=True`` given explicitly, which holds even with
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set; a file that needs anything but tensors and plain
    containers is refused. Every failure is one :class:`CheckpointError` line naming ``path``.
    """
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        try:
            return load_safetensors(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({_one_line(exc)})"
            ) from exc
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused, reason = storage.torch_load_failure(exc)
        if not refused:
            raise CheckpointError(f"{path}: not a readable torch file ({reason})") from exc
        raise CheckpointError(
            f"{path}: refused: it holds pickled objects other than tensors ({reason}), and "
            "loading them could run code (re-save the weights as safetensors)"
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable torch file ({_one_line(exc)})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state


def weights_file(folder: str) -> str:
    """The weights of a classifier checkpoint: ``model.safetensors``, or an older ``model.pt``."""
    for name in (MODEL_FILE, LEGACY_MODEL_FILE):
        path = storage.join(folder, name)
        if storage.exists(path):
            return path
    raise FileNotFoundError(f"{folder}: no {MODEL_FILE} (nor an older {LEGACY_MODEL_FILE})")


def read_meta(folder: str) -> dict[str, Any]:
    """A checkpoint's ``meta.json``; a missing or broken one is one line naming the file."""
    meta_path = storage.join(folder, META_FILE)
    if not storage.exists(meta_path):
        raise FileNotFoundError(f"{folder}: not a classifier checkpoint (no {META_FILE})")
    try:
        meta = json.loads(storage.read_bytes(meta_path))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({_one_line(exc)})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object")
    return meta


class ClipClassifier(nn.Module):
    """``logits, x = model(images)`` with ``x = encoder(images)`` and ``logits = head(x)``.

    ``normalize_embedding``: return ``x`` L2-normalised, for class means of normalised text
    embeddings, so both sides of the regularizer have norm about 1. The head still reads the raw
    encoder output, so the logits (the baseline, saved checkpoints, predictions) do not change.
    """

    def __init__(
        self,
        encoder: nn.Module,
        embed_dim: int,
        num_classes: int,
        normalize_embedding: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(embed_dim, num_classes)
        self.normalize_embedding = normalize_embedding

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.encoder(images)
        logits = self.head(x)
        if self.normalize_embedding:
            x = nn.functional.normalize(x, dim=-1)
        return logits, x


def build_classifier(
    clip: ClipConfig, num_classes: int, normalize_embedding: bool = False
) -> tuple[ClipClassifier, ClipBundle]:
    """The CLIP image tower (text tower dropped) with a fresh linear head.

    The head's weights come from the project's seeded initialisation (not torch's default for
    ``nn.Linear``), so the same seed gives the same head whatever torch version is installed.
    ``normalize_embedding`` should equal the class means' ``normalize`` (see
    :class:`ClipClassifier`).
    """
    bundle = build_clip(clip.model_name, clip.pretrained, clip.seed)
    model = ClipClassifier(bundle.model.visual, bundle.embed_dim, num_classes, normalize_embedding)
    seeded_init_(model.head, clip.seed)
    bundle.model = None  # the text tower is not needed for classification
    return model, bundle


def save_classifier(model: ClipClassifier, folder: str, meta: dict[str, Any]) -> None:
    """Weights (safetensors: loading them can never run code) plus what is needed to rebuild
    the model (clip config, class names)."""
    from safetensors.torch import save as save_safetensors

    if not storage.is_uri(folder):
        os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    storage.write_bytes(storage.join(folder, MODEL_FILE), save_safetensors(state))
    storage.write_json(storage.join(folder, META_FILE), meta)


def load_classifier(
    folder: str, device: str | torch.device = "cpu"
) -> tuple[ClipClassifier, dict[str, Any], Any]:
    """Rebuild a saved classifier: returns ``(model, meta, eval_transform)``.

    Any problem with the checkpoint (broken ``meta.json``, unreadable or unsafe weights, weights
    of another model) is one error line naming the file.
    """
    meta = read_meta(folder)
    meta_path = storage.join(folder, META_FILE)
    for key in ("clip", "classes"):
        if key not in meta:
            raise CheckpointError(f"{meta_path}: no {key!r} entry")
    try:
        clip = ClipConfig(**meta["clip"])
        classes = list(meta["classes"])
    except TypeError as exc:
        raise CheckpointError(f"{meta_path}: bad 'clip' or 'classes' ({exc})") from exc
    path = weights_file(folder)
    state = load_tensor_file(path)
    try:
        model, bundle = build_classifier(clip, len(classes))
    except ValueError as exc:
        raise CheckpointError(f"{meta_path}: {exc}") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: does not match the {clip.model_name} classifier with {len(classes)} classes "
            f"that {META_FILE} describes (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"other shape {wrong[:3]})"
        )
    model.load_state_dict(state)
    return model.to(device).eval(), meta, bundle.eval_transform
