"""The frozen CLIP text encoder, as a plain callable and as a Ray Data batch function.

``TextEncoder`` loads the open_clip model once (once per actor under Ray Data) and embeds lists
of strings. ``ClassSumsMapper`` wraps it for ``map_batches``: it turns a batch of captions into one
row per (prompt, label) holding the count and the float64 sum of the embeddings, so only sums
leave the actor and nothing downstream grows with the number of captions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from core.config import ClipConfig, config_from_dict
from core.models.open_clip_models import build_clip

log = logging.getLogger(__name__)


def as_clip_config(clip: ClipConfig | Mapping[str, Any]) -> ClipConfig:
    """Accept a ``ClipConfig`` or its dict form (what travels to Ray actors), validated."""
    if isinstance(clip, ClipConfig):
        return clip
    return config_from_dict(ClipConfig, dict(clip))


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation; an all-zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


class TextEncoder:
    """``TextEncoder(clip)(texts) -> float32 [N, D]``: frozen CLIP text embeddings.

    The model is built once here and kept in eval mode without gradients; only the text tower is
    kept, since the image tower would only cost (GPU) memory. CUDA is used when available.
    """

    def __init__(
        self,
        clip: ClipConfig | Mapping[str, Any],
        device: str | None = None,
        chunk_size: int = 256,
    ) -> None:
        self.clip = as_clip_config(clip)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        bundle = build_clip(self.clip.model_name, self.clip.pretrained, self.clip.seed)
        model = bundle.model
        model.visual = None  # encode_text never touches the image tower
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = bundle.tokenizer
        with torch.inference_mode():
            probe = self.model.encode_text(self.tokenizer([""]).to(self.device))
        self.embed_dim = int(probe.shape[-1])

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], normalize: bool = False) -> np.ndarray:
        """Embed ``texts`` in chunks of ``chunk_size`` (bounded memory); float32 ``[N, D]``."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        out = []
        for start in range(0, len(texts), self.chunk_size):
            tokens = self.tokenizer(texts[start : start + self.chunk_size]).to(self.device)
            emb = self.model.encode_text(tokens).float()
            if normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            out.append(emb.cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    def __call__(self, texts: Sequence[str], normalize: bool = False) -> np.ndarray:
        return self.encode(texts, normalize=normalize)


def sums_schema(embed_dim: int) -> pa.Schema:
    """The mapper's output: one row per (prompt, label) with a count and a float64 sum."""
    return pa.schema(
        [
            ("prompt", pa.string()),
            ("label", pa.string()),
            ("count", pa.int64()),
            ("sum", pa.list_(pa.float64(), embed_dim)),
        ]
    )


def _strings(batch: pa.Table | Mapping[str, Any], name: str) -> list[str]:
    """A string column of a pyarrow or numpy batch, as Python strings."""
    if isinstance(batch, pa.Table):
        if name not in batch.column_names:
            raise ValueError(f"caption batch has no column {name!r}; has {batch.column_names}")
        values = batch.column(name).to_pylist()
    else:
        if name not in batch:
            raise ValueError(f"caption batch has no column {name!r}; has {list(batch)}")
        values = list(batch[name])
    return ["" if v is None else str(v) for v in values]


class ClassSumsMapper:
    """Ray Data batch function: captions (label, prompt, caption) → per-(prompt, label) sums.

    The output has one row per (prompt, label) pair present in the batch, not one per caption, so
    what leaves the actor is bounded by prompts x classes whatever the number of captions.
    Embeddings are summed in float64; with ``normalize`` each one is L2-normalised first.
    """

    def __init__(
        self,
        clip: ClipConfig | Mapping[str, Any],
        normalize: bool,
        classes: Sequence[str],
        device: str | None = None,
        encoder: TextEncoder | None = None,
    ) -> None:
        self.normalize = bool(normalize)
        self.classes = set(classes)
        self.encoder = encoder if encoder is not None else TextEncoder(clip, device=device)
        self.schema = sums_schema(self.encoder.embed_dim)

    def __call__(self, batch: pa.Table | Mapping[str, Any]) -> pa.Table:
        labels = _strings(batch, "label")
        prompts = _strings(batch, "prompt")
        captions = _strings(batch, "caption")
        unknown = sorted(set(labels) - self.classes)
        if unknown:  # the driver checks first; this guards direct use
            raise ValueError(f"caption labels not among the classes: {unknown[:10]}")
        if not labels:
            return self.schema.empty_table()
        emb = self.encoder.encode(captions).astype(np.float64)
        if self.normalize:
            emb = l2_normalize(emb)
        keys = sorted(set(zip(prompts, labels, strict=True)))
        index = {key: i for i, key in enumerate(keys)}
        rows = np.fromiter(
            (index[key] for key in zip(prompts, labels, strict=True)), np.int64, len(labels)
        )
        sums = np.zeros((len(keys), emb.shape[1]), dtype=np.float64)
        np.add.at(sums, rows, emb)
        counts = np.bincount(rows, minlength=len(keys)).astype(np.int64)
        flat = pa.array(sums.reshape(-1), type=pa.float64())
        return pa.Table.from_arrays(
            [
                pa.array([k[0] for k in keys], pa.string()),
                pa.array([k[1] for k in keys], pa.string()),
                pa.array(counts, pa.int64()),
                pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]),
            ],
            schema=self.schema,
        )
