"""The captioner interface shared by every backend.

A backend is a ``CaptionModel``: it loads its weights once in ``__init__`` and turns a list of RGB
images plus one prompt into descriptions. ``Captioner`` (in ``core.captioning.captioner``) wraps a
backend into the batch-to-rows callable that Ray Data's ``map_batches`` and plain Python loops use.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GenerationSettings:
    """How a generative backend decodes: greedy when ``num_beams == 1``, beam search otherwise."""

    max_new_tokens: int = 64
    num_beams: int = 1


class CaptionModel(ABC):
    """One captioning backend. Subclasses load their model in ``__init__`` (once per actor)."""

    #: Written to the ``model`` column of the captions table.
    model_name: str = "unknown"

    @abstractmethod
    def describe(
        self, ids: Sequence[str], images: Sequence[np.ndarray], prompt: str
    ) -> list[list[str]]:
        """Describe each image for ``prompt``.

        ``images`` are HxWx3 uint8 RGB arrays, ``ids`` the manifest ids of the same rows. Returns
        one list of descriptions per image (usually one; more when a backend reads several
        reference descriptions).
        """


_NUMBERED_ITEM = re.compile(r"(?:^|\s)(\d{1,2})[.):]\s+")


def split_numbered_list(text: str) -> list[str]:
    """Split an answer like ``"1. a dog 2. on grass"`` into its items.

    LMMs asked for "10 semantic descriptions" answer with a numbered list, on one line or many; each
    item becomes one description (one caption row). Text without numbering is returned whole.
    """
    text = text.strip()
    matches = list(_NUMBERED_ITEM.finditer(text))
    # Only treat it as a list when the numbers count up from 1.
    expected, starts = 1, []
    for m in matches:
        if int(m.group(1)) == expected:
            starts.append(m)
            expected += 1
    if not starts:
        return [text] if text else []
    items = []
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        item = text[m.end() : end].strip().rstrip(",;").strip()
        if item:
            items.append(item)
    return items
