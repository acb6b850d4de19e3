"""A captioning backend for any transformers vision-language model with a processor.

LLaVA, Qwen2-VL, InstructBLIP and BLIP-2 checkpoints all load through ``AutoProcessor`` and
``AutoModelForImageTextToText``; their differences (image tokens, resizing, conversation format)
live in the processor and its chat template. So one backend serves them all: it renders the prompt
with the chat template when there is one, lets the processor expand the image tokens, and
generates for a whole batch at once with left padding.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoConfig, AutoProcessor

from core.captioning.base import CaptionModel, GenerationSettings, generate_rows
from core.captioning.devices import resolve_device, resolve_dtype
from core.captioning.hf_vlm_tiny import write_tiny_llava
from core.config import HFVLMConfig

# Auto classes tried in order. ``AutoModelForVision2Seq`` is gone from transformers 5 but still
# names some models' class in 4.x, so it is used only where it exists.
_AUTO_MODEL_CLASSES = ("AutoModelForImageTextToText", "AutoModelForVision2Seq")

log = logging.getLogger(__name__)


def to_pil(image: np.ndarray | Image.Image) -> Image.Image:
    """Processors accept PIL images of any size; HxWx3 uint8 arrays become RGB PIL images."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got an array of shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def _load_processor(model_path: str) -> Any:
    """Load the processor, refusing anything without an image processor (a text-only model)."""
    try:
        processor = AutoProcessor.from_pretrained(model_path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{model_path}: no vision-language processor could be loaded from this folder "
            f"({type(exc).__name__}: {exc}). Point hf_vlm.model_path at a transformers "
            "vision-language checkpoint (e.g. LLaVA, Qwen2-VL, InstructBLIP, BLIP-2)."
        ) from exc
    if getattr(processor, "image_processor", None) is None:
        raise ValueError(
            f"{model_path}: is not a vision-language model: its processor "
            f"({type(processor).__name__}) has no image processor. Point hf_vlm.model_path at a "
            "checkpoint with an image processor (e.g. LLaVA, Qwen2-VL, InstructBLIP, BLIP-2)."
        )
    return processor


def _load_model(model_path: str, dtype: torch.dtype) -> Any:
    """Load the generative model through the first auto class that knows its config.

    Attention is SDPA (PyTorch's fused kernels) where the model supports it; a model that does
    not loads with its default attention (a warning says so).
    """
    errors = []
    for name in _AUTO_MODEL_CLASSES:
        auto_class = getattr(transformers, name, None)
        if auto_class is None:
            continue
        try:
            try:
                return auto_class.from_pretrained(
                    model_path, dtype=dtype, attn_implementation="sdpa"
                )
            except ValueError as exc:
                if "sdpa" not in str(exc).lower():
                    raise
                log.warning("%s: no SDPA attention (%s); loading its default", model_path, exc)
                return auto_class.from_pretrained(model_path, dtype=dtype)
        except ValueError as exc:  # "Unrecognized configuration class": try the next auto class
            errors.append(f"{name}: {exc}")
    raise ValueError(
        f"{model_path}: is not an image-text-to-text model that transformers can load "
        f"({'; '.join(errors) or 'no auto class available'})."
    )


def _load_config(model_path: str) -> Any:
    """Read config.json first: it fails fast, and cheaply, on a folder that holds no model."""
    try:
        return AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"{model_path}: no transformers model config found ({type(exc).__name__}: {exc}). "
            "Point hf_vlm.model_path at a vision-language checkpoint folder or hub id."
        ) from exc


class HFVLMCaptionModel(CaptionModel):
    """Caption images with a transformers vision-language model (LLaVA, Qwen2-VL, BLIP-2, ...)."""

    def __init__(
        self,
        cfg: HFVLMConfig,
        generation: GenerationSettings,
        device: str | None = None,
        dtype: str = "auto",
    ) -> None:
        """Load processor and model once (per actor); ``cfg.tiny`` writes a tiny LLaVA first."""
        self.generation = generation
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if cfg.tiny:
            folder = tempfile.mkdtemp(prefix="tiny-llava-")
            try:
                self._load(str(write_tiny_llava(Path(folder), cfg.seed)))
            finally:
                # Everything is in memory now; do not leak one folder per actor.
                shutil.rmtree(folder, ignore_errors=True)
            self.model_name = f"{self.model_type}-tiny"
        else:
            if not cfg.model_path:
                raise ValueError("hf_vlm.model_path is required unless hf_vlm.tiny is true")
            self._load(cfg.model_path)
            self.model_name = Path(cfg.model_path.rstrip("/\\")).name or self.model_type

    def _load(self, model_path: str) -> None:
        config = _load_config(model_path)
        self.model_type: str = getattr(config, "model_type", "") or "hf_vlm"
        self.processor = _load_processor(model_path)
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError(f"{model_path}: the processor has no tokenizer to decode answers with")
        # Batched generation appends new tokens on the right, so prompts must be padded on the
        # left; right padding would leave pad tokens between a short prompt and its answer.
        self.tokenizer.padding_side = "left"
        self.model = _load_model(model_path, self.dtype).to(self.device).eval()

    def format_prompt(self, prompt: str) -> str:
        """The text the processor receives: the chat template's user turn with one image.

        Models trained on conversations answer far better in their own format; models without a
        chat template (BLIP-2) take the prompt as is, and their processor adds the image tokens.
        """
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        return prompt

    def build_inputs(
        self, images: Sequence[np.ndarray | Image.Image], prompts: Sequence[str]
    ) -> Any:
        """One processor call for the whole batch: left-padded token ids plus pixel values."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        texts = [self.format_prompt(p) for p in prompts]
        inputs = self.processor(
            images=[to_pil(im) for im in images], text=texts, padding=True, return_tensors="pt"
        )
        # Casts only floating tensors (pixel values) to the model's dtype; ids stay integers.
        return inputs.to(self.device, dtype=self.dtype)

    def describe_each(
        self,
        images: Sequence[np.ndarray | Image.Image],
        prompts: Sequence[str],
        ids: Sequence[str] | None = None,
    ) -> list[str]:
        """One answer per (image, prompt) pair: one batch, or with ``decoding: sample`` one
        generation per pair seeded from (seed, id, prompt) (see :func:`generate_rows`), so
        sampling needs the images' ``ids``."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if not images:
            return []
        if ids is None:
            if self.generation.sample:
                raise ValueError(
                    "decoding=sample seeds each image by its id: pass ids to describe_each"
                )
            ids = [str(i) for i in range(len(images))]
        if len(ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(ids)} ids")
        lengths = None
        if len(set(prompts)) > 1:  # one generate per prompt length: no row padded
            known = {p: self.prompt_length(p) for p in set(prompts)}
            lengths = [known[p] for p in prompts]
        return generate_rows(
            ids,
            prompts,
            self.generation,
            self.device,
            lambda rows: self._generate([images[i] for i in rows], [prompts[i] for i in rows]),
            lengths=lengths,
        )

    def prompt_length(self, prompt: str) -> int:
        """Text tokens of ``prompt`` as the processor receives it (the image's tokens are the
        same for every prompt), for grouping prompts of one length."""
        return len(self.tokenizer(self.format_prompt(prompt)).input_ids)

    @torch.inference_mode()
    def _generate(
        self, images: Sequence[np.ndarray | Image.Image], prompts: Sequence[str]
    ) -> list[str]:
        """One batched ``generate`` call; sampling draws from torch's global RNG."""
        inputs = self.build_inputs(images, prompts)
        kwargs: dict[str, Any] = self.generation.generate_kwargs()
        if getattr(self.model.generation_config, "pad_token_id", None) is None:
            kwargs["pad_token_id"] = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        output = self.model.generate(**inputs, **kwargs)
        input_ids = inputs["input_ids"]
        prompt_len = input_ids.shape[1]
        # Decoder-only models return prompt + answer; encoder-decoder ones (BLIP-2 with T5)
        # return only the answer.
        if output.shape[1] >= prompt_len and torch.equal(output[:, :prompt_len], input_ids):
            output = output[:, prompt_len:]
        texts = self.tokenizer.batch_decode(output, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def describe(
        self, ids: Sequence[str], images: Sequence[np.ndarray], prompt: str
    ) -> list[list[str]]:
        """One description per image for ``prompt``: ``[[text], [text], ...]``."""
        texts = self.describe_each(images, [prompt] * len(images), ids=[str(i) for i in ids])
        return [[text] for text in texts]
