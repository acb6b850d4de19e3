"""A tiny random LLaVA written to a folder, for tests and the tiny demo preset.

The real backend loads checkpoints from a folder through ``AutoProcessor`` and
``AutoModelForImageTextToText``; writing a tiny model the same way lets the tests and the demo
exercise exactly that loading path offline, in well under a second. The weights come from
:func:`core.models.seeded_init.seeded_init_`, not from transformers' init defaults, which change
between releases.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from core.captioning.tiny_tokenizer import build_tiny_tokenizer
from core.models.seeded_init import seeded_init_

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 32
PATCH_SIZE = 8
#: Image tokens per image: one per patch; the CLS token is dropped ("default" feature strategy).
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2

# A LLaVA-1.5-like conversation format: "USER: <image>\n<text> ASSISTANT:". Images come first in a
# turn, then its text; the generation prompt opens the assistant's turn.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | upper }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] }}{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% if not loop.last %}{{ ' ' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)


def write_tiny_llava(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random LLaVA (model + processor) to ``folder`` and return the folder.

    Same seed, same weights: the global RNG is forked, so callers' random state is untouched.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tiny_tokenizer(extra_special_tokens=(IMAGE_TOKEN,))
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=32,
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token_id,
        image_seq_length=NUM_IMAGE_TOKENS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    # transformers' own init draws from the global RNG before seeded_init_ overwrites it.
    with torch.random.fork_rng(devices=[]):
        model = seeded_init_(LlavaForConditionalGeneration(config), seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(folder)

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=TINY_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    processor.save_pretrained(folder)
    return folder
