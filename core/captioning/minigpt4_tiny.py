"""Tiny random MiniGPT-4 parts written in the three official on-disk layouts.

Real MiniGPT-4 comes as three separate things: a transformers BLIP-2 folder (vision encoder,
Q-Former, query tokens), the official ``.pth`` checkpoint holding ``llama_proj`` under ``"model"``,
and a transformers LLM folder (Vicuna or LLaMA-2-chat). Writing tiny random versions of exactly
those layouts lets tests and the tiny demo preset go through the real loading code offline, in
well under a second. Every weight comes from :func:`core.models.seeded_init.seeded_init_`, not
from transformers' init defaults, which change between releases (transformers 5 started BLIP-2's
vision tower at std 1e-10, so every image gave the same image tokens).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
)

from core.captioning.tiny_tokenizer import build_tiny_tokenizer
from core.models.seeded_init import seeded_init_

IMAGE_SIZE = 32
PATCH_SIZE = 8
VISION_HIDDEN = 24
QFORMER_HIDDEN = 32
LLM_HIDDEN = 48
#: Real MiniGPT-4 has 32. With 16, the image block weighs enough against the ~60 tokens of the
#: official prompt for a random LLM's greedy answer to depend on the image.
NUM_QUERY_TOKENS = 16

#: File names the official repo uses for its released checkpoints, per template.
CHECKPOINT_NAMES = {
    "vicuna": "prerained_minigpt4_7b.pth",
    "llama2": "pretrained_minigpt4_llama2_7b.pth",
}


def _write_blip2(folder: Path, seed: int) -> None:
    """A tiny BLIP-2 (with a tiny OPT language model) saved by ``save_pretrained``.

    The language model is only there because that is what BLIP-2 folders contain; MiniGPT-4 never
    loads it.
    """
    vision = Blip2VisionConfig(
        hidden_size=VISION_HIDDEN,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    qformer = Blip2QFormerConfig(
        hidden_size=QFORMER_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        encoder_hidden_size=VISION_HIDDEN,
        vocab_size=64,
        max_position_embeddings=32,
    )
    text = OPTConfig(
        vocab_size=64,
        hidden_size=16,
        ffn_dim=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        word_embed_proj_dim=16,
        max_position_embeddings=32,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
    )
    model = seeded_init_(Blip2ForConditionalGeneration(config), seed)
    model.save_pretrained(folder)


def _write_llm(folder: Path, seed: int) -> int:
    """A tiny LLaMA (the Vicuna / LLaMA-2-chat architecture) plus the offline tokenizer."""
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=LLM_HIDDEN,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = seeded_init_(LlamaForCausalLM(config), seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return LLM_HIDDEN


def write_tiny_minigpt4(folder: Path, seed: int = 0, template: str = "vicuna") -> dict[str, Path]:
    """Write tiny random MiniGPT-4 parts to ``folder`` in the official layouts.

    Returns ``{"blip2_path": ..., "checkpoint": ..., "llm_path": ...}``, the three paths a
    ``MiniGPT4Config`` needs. Same seed, same weights; the global RNG is forked, so the caller's
    random state is untouched.
    """
    if template not in CHECKPOINT_NAMES:
        raise ValueError(f"template must be one of {sorted(CHECKPOINT_NAMES)}, got {template!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "blip2_path": folder / "blip2",
        "checkpoint": folder / CHECKPOINT_NAMES[template],
        "llm_path": folder / f"llm-{template}",
    }
    # The libraries' own init still draws from the global RNG before seeded_init_ overwrites it.
    with torch.random.fork_rng(devices=[]):
        _write_blip2(paths["blip2_path"], seed)
        llm_hidden = _write_llm(paths["llm_path"], seed)
        proj = seeded_init_(
            torch.nn.ModuleDict({"llama_proj": torch.nn.Linear(QFORMER_HIDDEN, llm_hidden)}), seed
        )
    # The official training checkpoint: trainable weights under "model", plus bookkeeping.
    torch.save({"model": dict(proj.state_dict()), "epoch": 4}, paths["checkpoint"])
    return paths
