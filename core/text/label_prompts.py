"""Label embeddings from prompt templates: the queries of CLIP-Decoder's zero-shot head.

Each label is written into every template ("a photo of a {label}."), encoded by the frozen CLIP
text encoder, L2-normalised, averaged over templates and normalised again, which is open_clip's
zero-shot classifier recipe. Averaging over several phrasings smooths out the quirks of any one
prompt; the template set is a sweepable choice, hence the named sets below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

PLACEHOLDER = "{label}"

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {label}.",)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "default": DEFAULT_TEMPLATES,
    "bare": ("{label}",),
    "photo": (
        "a photo of a {label}.",
        "a photo of the {label}.",
        "a photo containing a {label}.",
        "an image with a {label} in it.",
    ),
    "scene": (
        "a photo of a {label}.",
        "a picture showing {label}.",
        "a photo of a scene with {label}.",
        "a close-up photo of a {label}.",
        "a blurry photo of a {label}.",
        "a bright photo of a {label}.",
        "a low resolution photo of a {label}.",
        "a cropped photo of a {label}.",
    ),
}


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A set name from :data:`TEMPLATE_SETS` or a list of templates, checked for ``{label}``."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(
                f"unknown template set {templates!r}; choose one of {', '.join(TEMPLATE_SETS)} "
                "or pass a list of templates"
            )
        templates = TEMPLATE_SETS[templates]
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates is empty: give at least one, e.g. 'a photo of a {label}.'")
    for t in templates:
        if not isinstance(t, str) or PLACEHOLDER not in t:
            raise ValueError(f"template {t!r} has no {PLACEHOLDER} placeholder")
    return templates


def format_prompts(labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Prompts label-major: all templates of label 0, then of label 1, ..."""
    return [t.replace(PLACEHOLDER, label) for label in labels for t in templates]


def embed_label_prompts(
    clip: Any,
    tokenizer: Callable[[list[str]], torch.Tensor] | None,
    labels: Sequence[str],
    templates: str | Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 256,
) -> torch.Tensor:
    """Embeddings [L, D] (float32, CPU, unit norm) of ``labels`` averaged over ``templates``.

    ``clip`` is a :class:`~core.models.open_clip_models.ClipBundle` (its tokenizer is used when
    ``tokenizer`` is None) or any model with ``encode_text``. Prompts are encoded in batches of
    ``batch_size`` on the model's device, without gradients and in eval mode (the model's own
    mode is restored afterwards).
    """
    model = getattr(clip, "model", clip)
    if tokenizer is None:
        tokenizer = getattr(clip, "tokenizer", None)
    if model is None or not hasattr(model, "encode_text"):
        raise ValueError("clip must be a ClipBundle or a model with encode_text (text tower kept)")
    if tokenizer is None:
        raise ValueError("no tokenizer: pass one, or a ClipBundle that carries it")
    labels = [str(x) for x in labels]
    if not labels:
        raise ValueError("labels is empty")
    empty = [i for i, x in enumerate(labels) if not x.strip()]
    if empty:
        raise ValueError(f"labels contain an empty name at index {empty[0]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    templates = resolve_templates(templates)
    prompts = format_prompts(labels, templates)
    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError):
        device = torch.device("cpu")
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    chunks = []
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                tokens = tokenizer(prompts[start : start + batch_size]).to(device)
                chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    finally:
        if was_training:
            model.train()
    per_prompt = torch.cat(chunks).view(len(labels), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)
