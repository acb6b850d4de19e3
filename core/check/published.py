"""Published configurations of the real models, shipped as small JSON files.

Where a preset's weight folders are absent (CI, a laptop, before the weights are synced), the
architecture comes from the named model's published configuration instead, so the check still
builds the real sizes. Each file (``core/models/published/<name>.json``) says where its numbers
come from (``source``) and what it describes (``kind``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parents[1] / "models" / "published"


def names(kind: str | None = None) -> list[str]:
    """The published configurations (of one ``kind``: llm, blip2_image_side, ...)."""
    return sorted(
        n for n in (p.stem for p in FOLDER.glob("*.json")) if kind in (None, load(n)["kind"])
    )


@functools.cache
def load(name: str) -> dict[str, Any]:
    """One published configuration by name; an unknown name lists the known ones."""
    path = FOLDER / f"{name}.json"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(FOLDER.glob("*.json")))
        raise ValueError(f"no published configuration {name!r}; known: {known}")
    return json.loads(path.read_text())


def match(path: str, kind: str) -> str | None:
    """The published configuration a weight folder's name points at (``/models/vicuna-7b-v0``
    → ``vicuna-7b-v0``); None when no name of that kind is part of the folder's name."""
    base = Path(path.rstrip("/")).name.lower().replace("_", "-")
    found = [n for n in names(kind) if n in base]
    return max(found, key=len) if found else None
