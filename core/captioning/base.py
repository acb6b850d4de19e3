"""The captioner interface shared by every backend.

A backend is a ``CaptionModel``: it loads its weights once in ``__init__`` and turns a list of RGB
images plus one prompt into descriptions. ``Captioner`` (in ``core.captioning.captioner``) wraps a
backend into the batch-to-rows callable that Ray Data's ``map_batches`` and plain Python loops use.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch


@dataclass(frozen=True)
class GenerationSettings:
    """How a generative backend decodes.

    ``greedy``: greedy when ``num_beams == 1``, beam search otherwise (deterministic).
    ``sample``: nucleus sampling as the official MiniGPT-4 demo (``Chat.answer_prepare``:
    ``do_sample=True, top_p=0.9, temperature=1.0, repetition_penalty=1.05, num_beams=1,
    min_length=1``, and transformers' default ``top_k=50``, which that call relies on). Each
    (image, prompt) draws from its own seed, :func:`row_seed`, so captions do not depend on batch
    composition, actor or retry.
    """

    max_new_tokens: int = 64
    num_beams: int = 1
    decoding: Literal["greedy", "sample"] = "greedy"
    top_p: float = 0.9
    top_k: int = 50
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    @property
    def sample(self) -> bool:
        return self.decoding == "sample"

    def generate_kwargs(self) -> dict[str, Any]:
        """The decoding arguments of ``generate``.

        Sampling passes every knob, so a checkpoint's own ``generation_config.json`` (e.g.
        LLaMA-2-chat's temperature 0.6) cannot change the official settings. Greedy passes
        ``repetition_penalty`` only when it is not 1.0, so greedy decoding is what it always was.
        """
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.sample,
            # The KV cache: each new token attends to cached keys and values instead of running
            # the whole sequence again. Explicit, so a checkpoint's generation_config.json or
            # config.json (use_cache: false) cannot turn it off.
            "use_cache": True,
        }
        if self.sample:
            # min_new_tokens=1 is the official min_length=1: the first token cannot end the answer.
            kwargs.update(
                top_p=self.top_p,
                top_k=self.top_k,
                temperature=self.temperature,
                repetition_penalty=self.repetition_penalty,
                min_new_tokens=1,
            )
        elif self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs


def row_seed(seed: int, image_id: str, prompt: str) -> int:
    """The sampling seed of one (image, prompt): a hash of ``(seed, image id, prompt)``.

    Stable across processes (unlike Python's ``hash``), so a rerun, another actor or a batch of
    another size draws the same caption for the same image.
    """
    digest = hashlib.sha256(f"{int(seed)}\0{image_id}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's RNG (CPU and ``device``'s CUDA generator) seeded with ``seed``,
    restoring the caller's random state afterwards."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def generate_by_length(
    lengths: Sequence[int], generate: Callable[[list[int]], list[str]]
) -> list[str]:
    """``generate(row_indices)`` once per distinct prompt length, shortest first; the answers come
    back in the rows' own order.

    Prompts of one length need no padding: a padded row attends over its pad positions at every
    decoding step and its answer can drift from the unpadded one's by rounding. With one length
    (one prompt for the batch, the captioner's case) this is one call over every row.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])  # stable: ties keep their order
    out: list[str] = [""] * len(lengths)
    for _, group in itertools.groupby(order, key=lambda i: lengths[i]):
        rows = list(group)
        texts = generate(rows)
        if len(texts) != len(rows):
            raise ValueError(f"generate returned {len(texts)} answers for {len(rows)} rows")
        for i, text in zip(rows, texts, strict=True):
            out[i] = text
    return out


def generate_rows(
    ids: Sequence[str],
    prompts: Sequence[str],
    settings: GenerationSettings,
    device: torch.device,
    generate: Callable[[list[int]], list[str]],
    lengths: Sequence[int] | None = None,
) -> list[str]:
    """Call ``generate(row_indices)`` once for the batch, or once per row when sampling.

    With ``lengths`` (each row's prompt length in tokens) greedy and beam search run once per
    distinct length instead, shortest first (:func:`generate_by_length`), results in row order.

    transformers' ``generate`` draws every row from one global RNG, so a batched sample would
    depend on which images share the batch. Sampling therefore generates row by row, each under
    :func:`seeded_rng` with its :func:`row_seed`: exactly reproducible (no padding, as the official
    demo, which captions one image at a time), at the cost of batching: a GPU decodes one sequence
    per step instead of ``batch_size``, so expect several times lower throughput and scale with
    actors instead. Greedy and beam search stay batched.
    """
    if len(ids) != len(prompts):
        raise ValueError(f"got {len(ids)} ids for {len(prompts)} prompts")
    if not settings.sample:
        if lengths is not None:
            if len(lengths) != len(ids):
                raise ValueError(f"got {len(lengths)} prompt lengths for {len(ids)} rows")
            return generate_by_length(lengths, generate)
        return generate(list(range(len(ids))))
    texts: list[str] = []
    for i, (image_id, prompt) in enumerate(zip(ids, prompts, strict=True)):
        with seeded_rng(row_seed(settings.seed, str(image_id), prompt), device):
            texts.extend(generate([i]))
    return texts


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
