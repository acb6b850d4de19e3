"""Checks of the captioning job: MiniGPT-4 (BLIP-2 image side + ``llama_proj`` + a LLaMA-family
chat LLM) and transformers vision-language models (LLaVA), built at real size on fake tensors.

Each part's architecture comes from its weight folder's ``config.json`` (or the checkpoint's own
``llama_proj``) when the file is there, else from the published configuration of the model the
path names (``core/models/published``), and the report says which.
"""

from __future__ import annotations

import contextlib
import functools
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.captioning.minigpt4 import IMAGE_PLACEHOLDER, build_prompt, load_llama_proj
from core.check import fake_device, files, memory, meta_build, published
from core.check.context import Context, device_of
from core.check.gpus import GIB

#: Bytes per token of English under LLaMA's SentencePiece vocabulary is about 3.5-4; 3 keeps
#: the prompt-length estimate (and so the KV cache) on the safe side when no tokenizer is at hand.
BYTES_PER_TOKEN = 3
DEFAULT_LLM = {"vicuna": "vicuna-7b-v0", "llama2": "llama-2-7b-chat"}
DEFAULT_PROJ = {"vicuna": "minigpt4-vicuna0-7b", "llama2": "minigpt4-llama2-7b"}


@dataclass
class LLMSpec:
    """The LLM's config values and what is known of its chat format and tokenizer."""

    name: str
    values: dict[str, Any]
    chat_format: str  # vicuna / llama2 / llava / "" (unknown)
    source: str
    folder: str = ""  # the weight folder, when present (its tokenizer counts prompt tokens)
    tokenizer: str = ""  # the published tokenizer family, when no folder tells


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars while the tiny presets write their weights (they take milliseconds)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _dtype(name: str, device: torch.device) -> torch.dtype:
    from core.captioning.devices import resolve_dtype

    return resolve_dtype(name, device)


@functools.cache
def tokenizer_of(folder: str) -> Any:
    """The tokenizer of a weight folder, or None when it has no tokenizer files."""
    if not folder or not Path(folder, "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def prompt_tokens(text: str, folder: str) -> tuple[int, str]:
    """Token count of ``text``: exact with the LLM folder's tokenizer, else an upper estimate."""
    tokenizer = tokenizer_of(folder)
    if tokenizer is not None:
        return len(tokenizer(text).input_ids), "its tokenizer"
    return math.ceil(len(text.encode()) / BYTES_PER_TOKEN), f"{BYTES_PER_TOKEN} bytes per token"


def tokenizer_family(llm: LLMSpec) -> str:
    """``llama`` for a LLaMA-family model whose tokenizer starts sequences with ``<s>`` (what
    both MiniGPT-4 templates write out), else what it is instead."""
    model_type = str(llm.values.get("model_type", "llama"))
    tokenizer = tokenizer_of(llm.folder)
    if tokenizer is None:
        return llm.tokenizer or model_type
    bos = tokenizer.bos_token
    return model_type if bos == "<s>" else f"{model_type} (BOS {bos!r})"


def _chat_format_of_folder(folder: str) -> str:
    """vicuna / llama2 from a real LLM folder's chat template or name; "" when it does not say."""
    config = meta_build.read_json(str(Path(folder, "tokenizer_config.json"))) or {}
    template = str(config.get("chat_template") or "")
    if "[INST]" in template:
        return "llama2"
    name = Path(folder.rstrip("/")).name.lower()
    if "vicuna" in name:
        return "vicuna"
    if "llama-2" in name or "llama2" in name:
        return "llama2"
    return ""


def llm_spec(ctx: Context, path: str, template: str) -> LLMSpec:
    """The LLM's architecture: its folder's config.json, else ``llm=``, else the published
    model its path names, else the template's usual LLM."""
    values = meta_build.read_json(str(Path(path, "config.json"))) if path else None
    ctx.report.file("captioner.minigpt4.llm_path", path, values is not None)
    if values is not None and "llm" not in ctx.keys:
        return LLMSpec(
            Path(path).name, values, _chat_format_of_folder(path), f"{path}/config.json", path
        )
    name = ctx.keys.get("llm") or published.match(path, "llm") or DEFAULT_LLM[template]
    spec = published.load(name)
    why = "llm=" if "llm" in ctx.keys else "published configuration "
    return LLMSpec(
        name, spec["config"], spec.get("chat_format", ""), f"{why}{name}", "", spec["tokenizer"]
    )


def _llm_shapes(values: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """(hidden, layers, kv heads, head dim, vocab) of a LLaMA-style config."""
    hidden = int(values["hidden_size"])
    heads = int(values["num_attention_heads"])
    kv = int(values.get("num_key_value_heads") or heads)
    head_dim = int(values.get("head_dim") or hidden // heads)
    return hidden, int(values["num_hidden_layers"]), kv, head_dim, int(values["vocab_size"])


def generation_peak(
    llm: nn.Module,
    values: dict[str, Any],
    mode: Any,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    dtype: torch.dtype,
) -> tuple[int, int, int]:
    """(prefill live peak, KV cache at the last token, decoding temporaries) for one call of
    ``generate`` on ``batch`` sequences: the prefill runs on fake tensors; the cache holds
    keys and values of every layer for prompt + new tokens."""
    hidden, layers, kv, head_dim, vocab = _llm_shapes(values)
    device = next(llm.parameters()).device

    def prefill() -> Any:
        embeds = fake_device.fake_tensor(mode, (batch, prompt_len, hidden), dtype, device)
        return llm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)

    key = ("prefill", type(llm).__name__, memory.config_key(values), batch, prompt_len)
    peak_live = _fake_peak_once(key, mode, prefill, dtype, device)
    item = torch.empty((), dtype=dtype).element_size()
    per_layer = 2 * batch * (prompt_len + new_tokens) * kv * head_dim * item
    # Growing the cache copies one layer's keys and values; logits and scores are float32.
    temporaries = per_layer + 2 * batch * vocab * 4
    return peak_live, layers * per_layer, temporaries


def _fake_peak_once(
    key: tuple[Any, ...], mode: Any, run: Any, dtype: torch.dtype, device: torch.device
) -> int:
    """Peak live bytes of ``run()`` on fake tensors, measured once per process for ``key``
    (what the model and shapes are) in ``dtype`` on ``device``."""

    def measure() -> int:
        with mode, fake_device.gpu_attention(), torch.no_grad():
            return memory.measure_forward(run).peak_live

    return memory.measured_once((*key, str(dtype), str(device)), measure)


def _context(r: Any, llm: str, prompt: tuple[int, str, int], new: int, limit: int) -> None:
    """Prompt (text + image tokens) plus the new tokens must fit the LLM's positions."""
    text, how, image = prompt
    total = text + image + new
    if total > limit:
        r.fail(
            f"context: prompt {text + image} + max_new_tokens {new} = {total} tokens but {llm} "
            f"has {limit} positions"
        )
    else:
        r.note(
            f"context: prompt {text + image} tokens ({text} text by {how} + {image} image) + "
            f"{new} new = {total} <= {limit} positions"
        )


# --------------------------------------------------------------------------------------------
# MiniGPT-4
# --------------------------------------------------------------------------------------------


def _blip2_values(ctx: Context, path: str) -> tuple[dict[str, Any], str]:
    values = meta_build.read_json(str(Path(path, "config.json"))) if path else None
    ctx.report.file("captioner.minigpt4.blip2_path", path, values is not None)
    if values is not None:
        return values, f"{path}/config.json"
    name = published.match(path, "blip2_image_side") or "blip2-flan-t5-xxl"
    return published.load(name), f"published configuration {name}"


def _llama_proj(ctx: Context, path: str, template: str) -> tuple[int, int, str, str]:
    """(in, out, source, template it was trained for, "" if unknown) of ``llama_proj``."""
    found = bool(path) and files.exists(path)
    ctx.report.file("captioner.minigpt4.checkpoint", path, found)
    name_says = "llama2" if "llama2" in Path(path).name.lower() else ""
    if found:
        weight = load_llama_proj(path)["weight"]
        return int(weight.shape[1]), int(weight.shape[0]), path, name_says
    name = published.match(path, "minigpt4_checkpoint") or DEFAULT_PROJ[template]
    spec = published.load(name)
    proj = spec["llama_proj"]
    return proj["in_features"], proj["out_features"], f"published {name}", spec["template"]


def check_minigpt4(ctx: Context, cfg: Any) -> None:
    """The three parts agree (ViT → Q-Former → llama_proj → LLM, template ↔ LLM), and one
    actor's generation fits. The tiny preset writes its parts first and is checked the same way."""
    m = cfg.captioner.minigpt4
    if not m.tiny:
        paths = {"blip2_path": m.blip2_path, "checkpoint": m.checkpoint, "llm_path": m.llm_path}
        return _check_minigpt4(ctx, cfg, paths)
    from core.captioning.minigpt4_tiny import write_tiny_minigpt4

    with tempfile.TemporaryDirectory(prefix="check-minigpt4-tiny-") as folder, _quiet():
        written = write_tiny_minigpt4(Path(folder), m.seed, m.template)
        ctx.report.note("tiny: the tiny MiniGPT-4 parts written to a temporary folder")
        return _check_minigpt4(ctx, cfg, {k: str(v) for k, v in written.items()})


def _check_minigpt4(ctx: Context, cfg: Any, paths: dict[str, str]) -> None:
    cap = cfg.captioner
    template = cap.minigpt4.template
    blip2, blip2_source = _blip2_values(ctx, paths["blip2_path"])
    proj = _llama_proj(ctx, paths["checkpoint"], template)
    llm = llm_spec(ctx, paths["llm_path"], template)
    side = meta_build.blip2_image_side(blip2)
    _minigpt4_agreements(ctx, template, side, blip2_source, proj, llm)
    before, after = build_prompt(template, max(cap.prompts, key=len)).split(IMAGE_PLACEHOLDER)
    text_tokens, how = prompt_tokens(before + after, llm.folder)
    queries = int(side.query_tokens.shape[1])
    limit = int(llm.values.get("max_position_embeddings", 2048))
    _context(ctx.report, llm.name, (text_tokens, how, queries), cap.max_new_tokens, limit)
    _minigpt4_memory(ctx, cap, side, proj[:2], llm, text_tokens + queries)


def _minigpt4_agreements(
    ctx: Context,
    template: str,
    side: meta_build.Blip2ImageSide,
    blip2_source: str,
    proj: tuple[int, int, str, str],
    llm: LLMSpec,
) -> None:
    """Every joint of MiniGPT-4, each as one agree / mismatch line."""
    r = ctx.report
    proj_in, proj_out, proj_source, proj_template = proj
    q_cfg = side.qformer.config
    hidden, _, _, _, vocab = _llm_shapes(llm.values)
    r.agree(
        "Q-Former cross-attention input",
        (f"vision width ({blip2_source})", side.vision.config.hidden_size),
        ("qformer encoder_hidden_size", q_cfg.encoder_hidden_size),
    )
    r.agree(
        "llama_proj input",
        (f"llama_proj in ({proj_source})", proj_in),
        (f"Q-Former hidden ({blip2_source})", q_cfg.hidden_size),
    )
    r.agree(
        "llama_proj output",
        (f"llama_proj out ({proj_source})", proj_out),
        (f"LLM hidden ({llm.source})", hidden),
    )
    if llm.chat_format:
        r.agree(
            "conversation template",
            ("captioner.minigpt4.template", template),
            (f"chat format of {llm.name}", llm.chat_format),
        )
    else:
        r.note(f"conversation template: {llm.name} does not say its chat format: not checked")
    if proj_template:
        r.agree(
            "llama_proj checkpoint",
            ("captioner.minigpt4.template", template),
            (f"LLM the projection was trained for ({proj_source})", proj_template),
        )
    r.agree(
        "tokenizer family",
        (f"the {template} template (LLaMA chat: <s> BOS, SentencePiece)", "llama"),
        (f"tokenizer of {llm.name}", tokenizer_family(llm)),
    )
    tokenizer = tokenizer_of(llm.folder)
    if tokenizer is not None and len(tokenizer) > vocab:
        r.fail(f"tokenizer of {llm.name} has {len(tokenizer)} tokens but the LLM embeds {vocab}")


def _minigpt4_memory(
    ctx: Context,
    cap: Any,
    side: meta_build.Blip2ImageSide,
    proj_shape: tuple[int, int],
    llm: LLMSpec,
    prompt_len: int,
) -> None:
    """One actor: weights in the backend's dtypes, image encoding, prefill and KV cache."""
    placement = ctx.placement(cap.num_gpus)
    device = device_of(placement)
    dtype = _dtype(cap.dtype, device)
    with meta_build.META:
        proj = nn.Linear(*proj_shape).to(dtype)
    parts = nn.ModuleDict(
        {
            "vision": side.vision.to(dtype),
            "qformer": side.qformer,  # kept in float32, as transformers and the backend do
            "proj": proj,
            "llm": meta_build.causal_lm(llm.values).to(dtype),
        }
    )
    parts.register_parameter("query_tokens", side.query_tokens)
    mode = fake_device.new_mode()
    fake_device.to_fake(parts, mode, device)
    parts.eval()
    weights = memory.tensor_bytes([*parts.parameters(), *parts.buffers()])
    ctx.report.params = memory.parameter_count(parts)
    counts = {k: memory.parameter_count(v) / 1e6 for k, v in parts.items()}
    ctx.report.note(
        "params: MiniGPT-4: vision {vision:.1f}M + Q-Former {qformer:.1f}M + llama_proj "
        "{proj:.2f}M + LLM {llm:.1f}M".format(**counts)
    )

    configs = [memory.config_key(m.config.to_dict()) for m in (side.vision, side.qformer)]
    images_key = ("minigpt4 images", *configs, tuple(side.query_tokens.shape), proj_shape)

    def encode(batch: int) -> int:
        def run() -> torch.Tensor:
            size = side.image_size
            pixels = fake_device.fake_tensor(mode, (batch, 3, size, size), dtype, device)
            feats = parts["vision"](pixel_values=pixels).last_hidden_state
            out = parts["qformer"](
                query_embeds=parts.query_tokens.expand(batch, -1, -1),
                encoder_hidden_states=feats,
                encoder_attention_mask=torch.ones(
                    feats.shape[:-1], dtype=torch.long, device=device
                ),
            ).last_hidden_state
            return parts["proj"](out.to(dtype))

        return _fake_peak_once((*images_key, batch), mode, run, dtype, device)

    def peak_at(batch: int) -> tuple[int, str]:
        images = encode(batch)
        prefill, cache, temps = generation_peak(
            parts["llm"],
            llm.values,
            mode,
            batch * cap.num_beams,
            prompt_len,
            cap.max_new_tokens,
            dtype,
        )
        return weights + max(images, prefill, cache + temps), (
            f"weights {weights / GIB:.2f} + max(images {images / GIB:.2f}, prefill "
            f"{prefill / GIB:.2f}, KV cache {cache / GIB:.2f} + decoding {temps / GIB:.2f}) GiB"
        )

    _generation_report(ctx, peak_at, cap, dtype, placement)


def _generation_report(
    ctx: Context,
    peak_at: Callable[[int], tuple[int, str]],
    cap: Any,
    dtype: torch.dtype,
    placement: Any,
) -> None:
    # Sampling generates one image per call (each seeded on its own, core.captioning.base), so
    # its memory does not grow with captioner.batch_size; greedy and beam search batch.
    sample = getattr(cap, "decoding", "greedy") == "sample"
    per_call = 1 if sample else cap.batch_size
    peak_at = functools.cache(peak_at)
    peak, parts_text = peak_at(per_call)
    r = ctx.report
    r.peak = peak
    beams = f" x {cap.num_beams} beams" if cap.num_beams > 1 else ""
    how = f"decoding: sample, one image per call (batch_size {cap.batch_size})" if sample else ""
    r.note(
        f"memory per actor: batch {per_call}{beams}{' (' + how + ')' if how else ''}, "
        f"{cap.max_new_tokens} new tokens, {str(dtype).removeprefix('torch.')} on "
        f"{placement.device}: {parts_text} -> peak {peak / GIB:.2f} GiB"
    )
    r.note(f"gpu: {placement.describe()}")
    if r.mismatches:
        return  # the check fails anyway: no search for the largest batch
    r.max_batch = memory.max_batch(lambda b: peak_at(b)[0], cap.batch_size, placement.usable_bytes)
    if sample:
        r.note(
            "largest batch: any captioner.batch_size fits with decoding: sample; with greedy "
            f"decoding (batched), up to {r.max_batch}"
        )
    else:
        r.note(f"largest captioner.batch_size that fits: {r.max_batch}")


# --------------------------------------------------------------------------------------------
# transformers vision-language models (LLaVA)
# --------------------------------------------------------------------------------------------


def check_hf_vlm(ctx: Context, cfg: Any) -> None:
    """A LLaVA-style model: vision tower → projector → LLM widths, image tokens, generation."""
    cap = cfg.captioner
    if cap.hf_vlm.tiny:
        from core.captioning.hf_vlm_tiny import write_tiny_llava

        with tempfile.TemporaryDirectory(prefix="check-llava-tiny-") as folder, _quiet():
            write_tiny_llava(Path(folder), cap.hf_vlm.seed)
            ctx.report.note("tiny: the tiny LLaVA written to a temporary folder")
            return _check_hf_vlm(ctx, cfg, folder)
    return _check_hf_vlm(ctx, cfg, cap.hf_vlm.model_path)


def _check_hf_vlm(ctx: Context, cfg: Any, path: str) -> None:
    cap = cfg.captioner
    values = meta_build.read_json(str(Path(path, "config.json"))) if path else None
    ctx.report.file("captioner.hf_vlm.model_path", path, values is not None)
    folder, source = path, f"{path}/config.json"
    if values is None:
        name = published.match(path, "hf_vlm") or "llava-1.5-7b-hf"
        values, folder, source = published.load(name)["config"], "", f"published {name}"
    if values.get("model_type") != "llava":
        raise ValueError(
            f"{source}: model_type {values.get('model_type')!r}: the check builds LLaVA-style "
            "models only"
        )
    model = meta_build.llava(values)
    image_tokens = _llava_agreements(ctx, model, source)
    text = f"USER: <image>\n{max(cap.prompts, key=len)} ASSISTANT:"
    text_tokens, how = prompt_tokens(text, folder)
    limit = int(model.config.text_config.max_position_embeddings)
    _context(ctx.report, "the LLM", (text_tokens, how, image_tokens), cap.max_new_tokens, limit)
    _llava_memory(ctx, cap, model, source, text_tokens + image_tokens)


def _llava_agreements(ctx: Context, model: nn.Module, source: str) -> int:
    """Vision tower → projector → LLM widths and the image-token count; returns the latter."""
    r = ctx.report
    config = model.config
    v, t = config.vision_config, config.text_config
    patches = (v.image_size // v.patch_size) ** 2
    tokens = patches if config.vision_feature_select_strategy == "default" else patches + 1
    if getattr(config, "image_seq_length", None):
        r.agree(
            "image tokens per image",
            (f"vision tower ({v.image_size}/{v.patch_size})^2", tokens),
            (f"image_seq_length ({source})", config.image_seq_length),
        )
    projector = model.model.multi_modal_projector
    r.agree(
        "projector input",
        ("vision tower width", v.hidden_size),
        ("multi_modal_projector in", projector.linear_1.in_features),
    )
    r.agree(
        "projector output",
        ("multi_modal_projector out", projector.linear_2.out_features),
        ("LLM hidden", t.hidden_size),
    )
    if config.image_token_index >= t.vocab_size:
        r.fail(
            f"image token id {config.image_token_index} is outside the LLM's "
            f"{t.vocab_size}-token vocabulary"
        )
    return tokens


def _llava_memory(ctx: Context, cap: Any, model: nn.Module, source: str, prompt_len: int) -> None:
    """One actor: the whole model in the backend's dtype, image encoding, prefill, KV cache."""
    placement = ctx.placement(cap.num_gpus)
    device = device_of(placement)
    dtype = _dtype(cap.dtype, device)
    model = model.to(dtype)
    mode = fake_device.new_mode()
    fake_device.to_fake(model, mode, device)
    model.eval()
    weights = memory.tensor_bytes([*model.parameters(), *model.buffers()])
    ctx.report.params = memory.parameter_count(model)
    ctx.report.note(f"params: llava ({source}): {ctx.report.params / 1e6:.1f}M")
    size = model.config.vision_config.image_size
    lm_values = model.config.text_config.to_dict()
    images_key = ("llava images", memory.config_key(model.config.to_dict()))

    def encode(batch: int) -> int:
        def run() -> Any:
            pixels = fake_device.fake_tensor(mode, (batch, 3, size, size), dtype, device)
            return model.model.get_image_features(pixel_values=pixels)

        return _fake_peak_once((*images_key, batch), mode, run, dtype, device)

    def peak_at(batch: int) -> tuple[int, str]:
        images = encode(batch)
        prefill, cache, temps = generation_peak(
            model, lm_values, mode, batch * cap.num_beams, prompt_len, cap.max_new_tokens, dtype
        )
        return weights + max(images, prefill, cache + temps), (
            f"weights {weights / GIB:.2f} + max(images {images / GIB:.2f}, prefill "
            f"{prefill / GIB:.2f}, KV cache {cache / GIB:.2f} + decoding {temps / GIB:.2f}) GiB"
        )

    _generation_report(ctx, peak_at, cap, dtype, placement)


def check_caption(ctx: Context, cfg: Any) -> None:
    """Dispatch on the backend; ``reference`` runs no model."""
    backend = cfg.captioner.backend
    if backend == "minigpt4":
        check_minigpt4(ctx, cfg)
    elif backend == "hf_vlm":
        check_hf_vlm(ctx, cfg)
    else:
        ctx.placement(cfg.captioner.num_gpus)
        ctx.report.note("captioner: reference descriptions: no model, nothing to build")
        ctx.report.max_batch = cfg.captioner.batch_size
    if cfg.manifest:
        ctx.report.file("manifest", cfg.manifest, files.exists(cfg.manifest))
    else:
        ctx.report.note("manifest: none: the job generates the demo dataset")
