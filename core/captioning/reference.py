"""Reference descriptions: captions a dataset already has, behind the captioner interface.

Datasets that ship descriptions (and the demo dataset) skip the LMM but flow through the same
captioning job, so the captions table and everything after it look the same either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core import storage
from core.captioning.base import CaptionModel
from core.config import ReferenceConfig
from core.data.manifest import _read_source_table


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple | np.ndarray):
        return [str(v) for v in value if v is not None and str(v).strip()]
    text = str(value).strip()
    return [text] if text else []


class ReferenceCaptionModel(CaptionModel):
    """Looks up each id's description(s) in a manifest column or in a separate id/caption file."""

    model_name = "reference"

    def __init__(self, cfg: ReferenceConfig, manifest_path: str) -> None:
        if cfg.file:
            table = _read_source_table(cfg.file)
            source, id_col, text_col = cfg.file, "id", "caption"
        else:
            table = storage.read_parquet(manifest_path)
            source, id_col, text_col = manifest_path, "id", cfg.column
        for col in (id_col, text_col):
            if col not in table.column_names:
                raise ValueError(
                    f"{source}: no column {col!r} for reference descriptions; "
                    f"columns are {', '.join(table.column_names)}"
                )
        self._source = source
        self._captions: dict[str, list[str]] = {}
        for image_id, text in zip(
            table.column(id_col).to_pylist(), table.column(text_col).to_pylist(), strict=True
        ):
            self._captions.setdefault(str(image_id), []).extend(_as_list(text))

    def describe(
        self, ids: Sequence[str], images: Sequence[np.ndarray], prompt: str
    ) -> list[list[str]]:
        out = []
        for image_id in ids:
            texts = self._captions.get(str(image_id))
            if not texts:
                raise KeyError(f"{self._source}: no reference description for id {image_id!r}")
            out.append(list(texts))
        return out
