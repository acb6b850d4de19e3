"""MiniGPT-4 (Vision-CAIR/MiniGPT-4) assembled from transformers parts.

MiniGPT-4 is BLIP-2's frozen image side (EVA ViT-g/14 + its layer norm, the Q-Former and 32 query
tokens), one trained linear layer ``llama_proj`` and a frozen chat LLM (Vicuna V0 or
LLaMA-2-chat). transformers' ``Blip2VisionModel`` / ``Blip2QFormerModel`` hold the same image-side
weights (``post_layernorm`` is MiniGPT-4's ``ln_vision``), so the model is built from three files
on disk, each in its official layout:

* ``blip2_path``: a transformers BLIP-2 folder (``Blip2ForConditionalGeneration.save_pretrained``).
  Only the vision encoder, Q-Former and query tokens are read; the BLIP-2 language model is never
  instantiated, so a 12 GB flan-t5-xxl folder costs only its image-side shards.
* ``checkpoint``: the official MiniGPT-4 ``.pth``, state dict under ``"model"``; only
  ``llama_proj.weight`` / ``llama_proj.bias`` are used. Read with ``weights_only=True`` so a
  checkpoint cannot run code when loaded.
* ``llm_path``: a transformers causal-LM folder with its tokenizer.

The prompt follows the official demo's conversation templates; the image embeddings replace the
``<ImageHere>`` placeholder exactly as the official ``get_context_emb`` does (BOS only on the text
before the image).
"""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Blip2Config,
    Blip2QFormerModel,
    Blip2VisionModel,
)

from core.captioning.base import CaptionModel, GenerationSettings, generate_rows
from core.captioning.devices import resolve_device, resolve_dtype
from core.config import MiniGPT4Config

# --------------------------------------------------------------------------------------------
# Conversation templates (minigpt4/conversation/conversation.py, demo.py)
# --------------------------------------------------------------------------------------------

IMAGE_PLACEHOLDER = "<ImageHere>"
#: What the official ``Chat.upload_img`` puts in the user's turn; ``Chat.ask`` appends " " + text.
IMAGE_MESSAGE = f"<Img>{IMAGE_PLACEHOLDER}</Img>"

_SYSTEM = (
    "Give the following image: <Img>ImageContent</Img>. "
    "You will be able to see the image once I provide it to you. Please answer my questions."
)


@dataclass(frozen=True)
class ConversationTemplate:
    """One official single-separator conversation (``SeparatorStyle.SINGLE``)."""

    system: str
    roles: tuple[str, str]
    sep: str

    def prompt(self, text: str) -> str:
        """The prompt the official demo builds for one image and one question.

        ``system + sep``, then the user's turn ``role + "<Img><ImageHere></Img> " + text + sep``,
        then the assistant role with no message, which is where generation continues.
        """
        user_message = f"{IMAGE_MESSAGE} {text}"
        return self.system + self.sep + self.roles[0] + user_message + self.sep + self.roles[1]


#: ``CONV_VISION_Vicuna0`` and ``CONV_VISION_LLama2`` of the official repo.
TEMPLATES: dict[str, ConversationTemplate] = {
    "vicuna": ConversationTemplate(system=_SYSTEM, roles=("Human: ", "Assistant: "), sep="###"),
    "llama2": ConversationTemplate(system=_SYSTEM, roles=("<s>[INST] ", " [/INST] "), sep=""),
}

#: The official demo stops on "###" (token ids [835] and [2277, 29937] in LLaMA's vocabulary) for
#: both templates; as strings they work with any tokenizer.
STOP_STRINGS = ("###",)


def build_prompt(template: str, text: str) -> str:
    """Wrap a question in the official conversation template (one image placeholder)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown MiniGPT-4 template {template!r}; use one of {sorted(TEMPLATES)}")
    if IMAGE_PLACEHOLDER in text:
        raise ValueError(f"the prompt must not contain {IMAGE_PLACEHOLDER!r}; the template adds it")
    return TEMPLATES[template].prompt(text)


def clean_answer(text: str) -> str:
    """Cut the answer as the official ``Chat.answer`` does: at "###", after "Assistant:"."""
    text = text.split("###")[0]
    return text.split("Assistant:")[-1].strip()


# --------------------------------------------------------------------------------------------
# Image preprocessing (Blip2ImageEvalProcessor)
# --------------------------------------------------------------------------------------------

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess_image(image: np.ndarray, image_size: int) -> torch.Tensor:
    """HxWx3 uint8 RGB -> normalised [3, S, S] float tensor, like BLIP-2's eval processor.

    Bicubic resize to S x S (no crop, aspect ratio not kept), scale to [0, 1], normalise with the
    CLIP mean and std: the official ``Blip2ImageEvalProcessor``.
    """
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"expected an HxWx3 uint8 RGB image, got shape {array.shape} dtype {array.dtype}"
        )
    resized = Image.fromarray(array, mode="RGB").resize(
        (image_size, image_size), resample=Image.Resampling.BICUBIC
    )
    tensor = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    return (tensor - mean) / std


# --------------------------------------------------------------------------------------------
# Loading the three parts
# --------------------------------------------------------------------------------------------


class MiniGPT4LoadError(ValueError):
    """A MiniGPT-4 part on disk is missing, malformed or not in the expected layout."""


#: Wrappers a BLIP-2 state dict may sit under. transformers 5.23 writes flat keys
#: (``vision_model.``, ``qformer.``, ``query_tokens``), as 4.x did; ``model.`` guards against the
#: nesting transformers 5 introduced for other multimodal models (e.g. LLaVA).
_BLIP2_WRAPPERS = ("", "model.")
_BLIP2_PARTS = ("vision_model.", "qformer.")
_QUERY_TOKENS = "query_tokens"


def _safetensors_key_files(folder: Path) -> dict[str, Path]:
    """Map every tensor name in a transformers folder to the safetensors file holding it."""
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: folder / name for key, name in weight_map.items()}
    if single.is_file():
        with safe_open(str(single), framework="pt") as handle:
            return dict.fromkeys(handle.keys(), single)
    raise MiniGPT4LoadError(
        f"{folder}: no model.safetensors or model.safetensors.index.json; expected a BLIP-2 folder "
        "written by Blip2ForConditionalGeneration.save_pretrained"
    )


def read_blip2_image_side(folder: Path) -> dict[str, torch.Tensor]:
    """Read only the vision encoder, Q-Former and query-token tensors of a BLIP-2 folder.

    Keys come back flat (``vision_model.*``, ``qformer.*``, ``query_tokens``) whatever wrapper
    the file used; shards holding only the language model are never opened.
    """
    key_files = _safetensors_key_files(folder)
    wrapper = next((w for w in _BLIP2_WRAPPERS if w + _QUERY_TOKENS in key_files), None)
    if wrapper is None:
        raise MiniGPT4LoadError(
            f"{folder}: no {_QUERY_TOKENS!r} tensor (tried prefixes {list(_BLIP2_WRAPPERS)}); "
            f"first keys: {sorted(key_files)[:5]}"
        )
    wanted: dict[Path, list[tuple[str, str]]] = {}
    for key, file in key_files.items():
        if not key.startswith(wrapper):
            continue
        name = key[len(wrapper) :]
        if name == _QUERY_TOKENS or name.startswith(_BLIP2_PARTS):
            wanted.setdefault(file, []).append((key, name))
    tensors: dict[str, torch.Tensor] = {}
    for file, names in wanted.items():
        with safe_open(str(file), framework="pt") as handle:
            for key, name in names:
                tensors[name] = handle.get_tensor(key)
    return tensors


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into a meta-device ``module``; any missing/unexpected key is an error."""
    expected = set(module.state_dict().keys())
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected)
    if missing or unexpected:
        raise MiniGPT4LoadError(
            f"{where}: state dict does not match the config: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:  # shape mismatch
        raise MiniGPT4LoadError(f"{where}: {error}") from error
    still_meta = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if still_meta:
        raise MiniGPT4LoadError(f"{where}: tensors not in the checkpoint: {still_meta[:5]}")


def load_blip2_image_side(
    folder: str | Path,
) -> tuple[Blip2Config, Blip2VisionModel, Blip2QFormerModel, torch.Tensor]:
    """Build BLIP-2's vision encoder, Q-Former and query tokens from a transformers BLIP-2 folder.

    The modules are created on the meta device and filled with the checkpoint's tensors, so the
    1B-parameter ViT-g is never randomly initialised first. Returns (config, vision, qformer,
    query_tokens) on CPU, in the checkpoint's dtypes.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise MiniGPT4LoadError(f"{folder}: no config.json; expected a transformers BLIP-2 folder")
    config = Blip2Config.from_pretrained(folder)
    state = read_blip2_image_side(folder)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    with torch.device("meta"):
        vision = Blip2VisionModel(config.vision_config)
        qformer = Blip2QFormerModel(config.qformer_config)
    _load_strict(vision, part("vision_model."), f"{folder} (vision_model.*)")
    _load_strict(qformer, part("qformer."), f"{folder} (qformer.*)")
    query_tokens = state[_QUERY_TOKENS]
    expected_shape = (1, config.num_query_tokens, config.qformer_config.hidden_size)
    if tuple(query_tokens.shape) != expected_shape:
        raise MiniGPT4LoadError(
            f"{folder}: query_tokens has shape {tuple(query_tokens.shape)}, config says "
            f"{expected_shape}"
        )
    return config, vision, qformer, query_tokens


def load_llama_proj(path: str | Path) -> dict[str, torch.Tensor]:
    """Read ``llama_proj.weight`` / ``llama_proj.bias`` from an official MiniGPT-4 ``.pth``.

    ``weights_only=True``: tensors and plain containers only, so a checkpoint that pickles
    arbitrary objects is refused instead of executed. Other keys under ``"model"`` are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise MiniGPT4LoadError(f"{path}: MiniGPT-4 checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise MiniGPT4LoadError(
            f"{path}: refused to load with weights_only=True (it pickles more than tensors and "
            f"plain containers): {error}"
        ) from error
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        found = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint)
        raise MiniGPT4LoadError(
            f"{path}: not an official MiniGPT-4 checkpoint: no 'model' state dict (found {found})"
        )
    model_state = checkpoint["model"]
    names = ("llama_proj.weight", "llama_proj.bias")
    missing = [n for n in names if n not in model_state]
    if missing:
        raise MiniGPT4LoadError(
            f"{path}: missing {missing} under 'model' (has {sorted(model_state)[:5]})"
        )
    weight, bias = (model_state[n] for n in names)
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise MiniGPT4LoadError(
            f"{path}: llama_proj has weight {tuple(weight.shape)} and bias {tuple(bias.shape)}"
        )
    return {"weight": weight, "bias": bias}


# --------------------------------------------------------------------------------------------
# The captioner
# --------------------------------------------------------------------------------------------


class MiniGPT4CaptionModel(CaptionModel):
    """MiniGPT-4 as a captioning backend: one prompt, a batch of images, one answer each."""

    def __init__(
        self,
        cfg: MiniGPT4Config,
        generation: GenerationSettings,
        device: str | None = None,
        dtype: str = "auto",
    ) -> None:
        if cfg.template not in TEMPLATES:
            raise ValueError(f"unknown MiniGPT-4 template {cfg.template!r}")
        self.cfg = cfg
        self.generation = generation
        self.template = cfg.template
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model_name = f"minigpt4-{cfg.template}" + ("-tiny" if cfg.tiny else "")

        if cfg.tiny:
            from core.captioning.minigpt4_tiny import write_tiny_minigpt4

            folder = Path(tempfile.mkdtemp(prefix="minigpt4-tiny-"))
            try:
                paths = write_tiny_minigpt4(folder, cfg.seed, cfg.template)
                self._load(paths["blip2_path"], paths["checkpoint"], paths["llm_path"])
            finally:
                # Everything is in memory now; do not leak one folder per actor.
                shutil.rmtree(folder, ignore_errors=True)
        else:
            self._load(cfg.blip2_path, cfg.checkpoint, cfg.llm_path)

    def _load(self, blip2_path: str, checkpoint: str, llm_path: str) -> None:
        """The three official parts: BLIP-2 image side, ``llama_proj`` and the LLM."""
        # Image side. transformers keeps the Q-Former and query tokens in float32 even in half
        # precision (they are small and sensitive); the vision encoder takes the requested dtype.
        blip2_config, vision, qformer, query_tokens = load_blip2_image_side(blip2_path)
        self.image_size = int(blip2_config.vision_config.image_size)
        self.vision = vision.to(self.device, self.dtype).eval()
        self.qformer = qformer.to(self.device, torch.float32).eval()
        self.query_tokens = query_tokens.to(self.device, torch.float32)

        # LLM and tokenizer.
        self.tokenizer = AutoTokenizer.from_pretrained(llm_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            # LLaMA tokenizers ship without one; padded positions are masked out anyway.
            self.tokenizer.pad_token = self.tokenizer.unk_token or self.tokenizer.eos_token
        # SDPA: PyTorch's fused attention kernels (flash / memory-efficient on GPUs).
        self.llm = AutoModelForCausalLM.from_pretrained(
            llm_path, dtype=self.dtype, attn_implementation="sdpa"
        )
        self.llm.to(self.device).eval()
        llm_hidden = self.llm.get_input_embeddings().weight.shape[1]

        # llama_proj: Q-Former hidden -> LLM hidden.
        proj = load_llama_proj(checkpoint)
        out_features, in_features = proj["weight"].shape
        if in_features != blip2_config.qformer_config.hidden_size or out_features != llm_hidden:
            raise MiniGPT4LoadError(
                f"{checkpoint}: llama_proj maps {in_features} -> {out_features}, but the Q-Former "
                f"has hidden size {blip2_config.qformer_config.hidden_size} and the LLM "
                f"{llm_hidden}"
            )
        self.llama_proj = torch.nn.Linear(in_features, out_features)
        with torch.no_grad():
            self.llama_proj.weight.copy_(proj["weight"])
            self.llama_proj.bias.copy_(proj["bias"])
        self.llama_proj.to(self.device, self.dtype).eval()
        self.num_query_tokens = int(self.query_tokens.shape[1])

    # ---------------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Images -> [B, num_query_tokens, LLM hidden]: ViT (+ ln_vision) -> Q-Former -> proj."""
        pixels = torch.stack([preprocess_image(image, self.image_size) for image in images])
        pixels = pixels.to(self.device, self.dtype)
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        query_output = self.qformer(
            query_embeds=queries,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        return self.llama_proj(query_output.to(self.dtype))

    def _embed_text(self, text: str, add_bos: bool) -> torch.Tensor:
        """Token embeddings [T, H] of ``text``; BOS in front only when ``add_bos``."""
        ids = self.tokenizer(text, add_special_tokens=add_bos, return_tensors="pt").input_ids
        return self.llm.get_input_embeddings()(ids[0].to(self.device))

    @torch.inference_mode()
    def build_inputs_embeds(
        self, images: Sequence[np.ndarray], prompt: str | Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the LLM receives: (inputs_embeds [B, T, H], attention_mask [B, T]).

        Per image: embeddings of the templated prompt before ``<ImageHere>`` (with BOS), the
        projected Q-Former outputs, then the text after it (no BOS), as the official
        ``get_context_emb``. Rows are left-padded with the pad token's embedding (mask 0) so
        generation continues right after each prompt. ``prompt`` may also be one per image.
        """
        prompts = [prompt] * len(images) if isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(images):
            raise ValueError(f"got {len(prompts)} prompts for {len(images)} images")
        image_embeds = self.encode_images(images)
        rows = []
        for text, image_embed in zip(prompts, image_embeds, strict=True):
            before, after = build_prompt(self.template, text).split(IMAGE_PLACEHOLDER)
            rows.append(
                torch.cat(
                    [self._embed_text(before, True), image_embed, self._embed_text(after, False)]
                )
            )
        length = max(row.shape[0] for row in rows)
        pad_id = torch.tensor(self.tokenizer.pad_token_id, device=self.device)
        pad_embed = self.llm.get_input_embeddings()(pad_id)
        embeds = pad_embed.expand(len(rows), length, -1).clone()
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            embeds[i, length - row.shape[0] :] = row
            mask[i, length - row.shape[0] :] = 1
        return embeds, mask

    def prompt_length(self, prompt: str) -> int:
        """Tokens the LLM receives for ``prompt`` with one image (BOS and image block included)."""
        before, after = build_prompt(self.template, prompt).split(IMAGE_PLACEHOLDER)
        head = self.tokenizer(before, add_special_tokens=True).input_ids
        tail = self.tokenizer(after, add_special_tokens=False).input_ids
        return len(head) + self.num_query_tokens + len(tail)

    @torch.inference_mode()
    def generate(self, images: Sequence[np.ndarray], prompt: str | Sequence[str]) -> list[str]:
        """Raw decoded answers (special tokens dropped), one per image, before cleanup: one
        batched ``generate`` call, rows left-padded when the prompts' lengths differ
        (:meth:`describe_each` groups them by length instead).

        With ``decoding: sample`` this draws from torch's global RNG; :meth:`describe` seeds each
        image on its own.
        """
        embeds, mask = self.build_inputs_embeds(images, prompt)
        # Given only inputs_embeds, a repetition penalty sees just the generated tokens (as in the
        # official demo, which also generates from embeddings); transformers warns about it.
        output = self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            **self.generation.generate_kwargs(),
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            stop_strings=list(STOP_STRINGS),
            tokenizer=self.tokenizer,
        )
        # Given only inputs_embeds, a decoder-only generate returns just the new tokens.
        return self.tokenizer.batch_decode(output, skip_special_tokens=True)

    def describe(
        self, ids: Sequence[str], images: Sequence[np.ndarray], prompt: str
    ) -> list[list[str]]:
        """One cleaned answer per image, as a one-element list (list splitting happens later).

        Sampling is seeded per (image id, prompt), see :func:`generate_rows`.
        """
        if len(ids) != len(images):
            raise ValueError(f"got {len(ids)} ids for {len(images)} images")
        if len(images) == 0:
            return []
        texts = generate_rows(
            ids,
            [prompt] * len(ids),
            self.generation,
            self.device,
            lambda rows: self.generate([images[i] for i in rows], prompt),
        )
        return [[clean_answer(text)] for text in texts]

    def describe_each(
        self, images: Sequence[np.ndarray], prompts: Sequence[str], ids: Sequence[str]
    ) -> list[str]:
        """One cleaned answer per (image, prompt) pair. Greedy and beam search run one batch per
        prompt length, shortest first (:func:`generate_by_length`), so no row is padded; answers
        come back in the pairs' order. Sampling is seeded per (id, prompt) as in :meth:`describe`.
        """
        if not len(images) == len(prompts) == len(ids):
            raise ValueError(f"{len(images)} images, {len(prompts)} prompts, {len(ids)} ids")
        known = {p: self.prompt_length(p) for p in set(prompts)}
        texts = generate_rows(
            ids,
            prompts,
            self.generation,
            self.device,
            lambda rows: self.generate([images[i] for i in rows], [prompts[i] for i in rows]),
            lengths=[known[p] for p in prompts],
        )
        return [clean_answer(text) for text in texts]
