"""The batch-to-rows captioner used by Ray Data's ``map_batches`` and by plain loops alike.

``Captioner`` loads its backend once in ``__init__`` (once per actor) and turns a batch of decoded
images into caption rows: one row per (image, prompt, description), or one error row for an image
that could not be loaded or described. A failing batch is retried image by image, so one bad image
never costs the captions of its neighbours.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from core.captioning.base import CaptionModel, GenerationSettings, split_numbered_list
from core.config import CaptionerConfig

log = logging.getLogger(__name__)

CAPTION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("label", pa.string()),
        ("prompt", pa.string()),
        ("caption", pa.string()),
        ("model", pa.string()),
        ("error", pa.string()),
    ]
)


def build_caption_model(
    cfg: CaptionerConfig, manifest_path: str = "", device: str | None = None
) -> CaptionModel:
    """Instantiate the configured backend (imports are local so unused backends cost nothing)."""
    generation = GenerationSettings(
        max_new_tokens=cfg.max_new_tokens,
        num_beams=cfg.num_beams,
        decoding=cfg.decoding,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        temperature=cfg.temperature,
        repetition_penalty=cfg.repetition_penalty,
        seed=cfg.seed,
    )
    if cfg.backend == "reference":
        from core.captioning.reference import ReferenceCaptionModel

        return ReferenceCaptionModel(cfg.reference, manifest_path)
    if cfg.backend == "minigpt4":
        from core.captioning.minigpt4 import MiniGPT4CaptionModel

        return MiniGPT4CaptionModel(cfg.minigpt4, generation, device=device, dtype=cfg.dtype)
    if cfg.backend == "hf_vlm":
        from core.captioning.hf_vlm import HFVLMCaptionModel

        return HFVLMCaptionModel(cfg.hf_vlm, generation, device=device, dtype=cfg.dtype)
    raise ValueError(f"captioner.backend: unknown backend {cfg.backend!r}")


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 500 else text[:497] + "..."


class Captioner:
    """Callable class: ``Captioner(cfg, manifest_path)(batch) -> pyarrow.Table`` of caption rows.

    ``batch`` has columns ``id``, ``label``, ``image`` (HxWx3 uint8 arrays) and ``error`` (empty
    when the image loaded). Usable directly or as ``map_batches(Captioner, ...)``.
    """

    def __init__(
        self,
        cfg: CaptionerConfig,
        manifest_path: str = "",
        device: str | None = None,
        model: CaptionModel | None = None,
    ) -> None:
        self.cfg = cfg
        self.model = model if model is not None else build_caption_model(cfg, manifest_path, device)

    def _describe(self, ids: Sequence[str], images: Sequence[np.ndarray], prompt: str) -> list:
        """Describe a batch; on failure, retry one by one and return the exception per image."""
        try:
            return self.model.describe(ids, images, prompt)
        except Exception as exc:  # a backend failure must not sink the whole batch
            if len(ids) == 1:
                return [exc]
            log.warning("batch of %d failed (%s); retrying image by image", len(ids), _short(exc))
        results: list = []
        for image_id, image in zip(ids, images, strict=True):
            try:
                results.extend(self.model.describe([image_id], [image], prompt))
            except Exception as exc:
                results.append(exc)
        return results

    def __call__(self, batch: dict[str, Sequence]) -> pa.Table:
        ids = [str(i) for i in batch["id"]]
        labels = [None if v is None else str(v) for v in batch["label"]]
        load_errors = [str(e) if e else "" for e in batch["error"]]
        images = list(batch["image"])
        rows: dict[str, list] = {name: [] for name in CAPTION_SCHEMA.names}

        def add(i: int, prompt: str, caption: str, error: str) -> None:
            rows["id"].append(ids[i])
            rows["label"].append(labels[i])
            rows["prompt"].append(prompt)
            rows["caption"].append(caption)
            rows["model"].append(self.model.model_name)
            rows["error"].append(error)

        good = [i for i, err in enumerate(load_errors) if not err]
        failed: dict[int, str] = {i: load_errors[i] for i in range(len(ids)) if load_errors[i]}
        per_image: dict[int, list[tuple[str, str]]] = {i: [] for i in good}
        for prompt in self.cfg.prompts:
            todo = [i for i in good if i not in failed]
            if not todo:
                break
            results = self._describe([ids[i] for i in todo], [images[i] for i in todo], prompt)
            for i, result in zip(todo, results, strict=True):
                if isinstance(result, BaseException):
                    failed[i] = f"captioning failed: {_short(result)}"
                    continue
                texts = result
                if self.cfg.split_numbered:
                    texts = [item for text in texts for item in split_numbered_list(text)]
                per_image[i].extend((prompt, text) for text in texts)
        for i in range(len(ids)):
            if i in failed:
                add(i, "", "", failed[i])  # one error row per image, whatever the prompt count
            elif not per_image[i]:
                add(i, "", "", "the model returned no description")
            else:
                for prompt, text in per_image[i]:
                    add(i, prompt, text, "")
        return pa.table(rows, schema=CAPTION_SCHEMA)
