"""The tiny captioning presets look at the image: their random weights come from the project's
seeded init, survive the save/load round trip, and different images reach the LLM differently.

Margin for "different image embeddings": ``||a - b|| > 0.05 * max(||a||, ||b||)`` over the whole
image block at the LLM's input, for every pair of the images below. Rounding noise is ~1e-7 of
the norm. With transformers 5's own init (BLIP-2's vision tower at std 1e-10) the MiniGPT-4
blocks of these images agreed to 1e-9 - 2e-7 of their norm and all captions were identical, so a
collapsed image path fails by orders of magnitude. Under the seeded init the ratios measured
0.43 - 1.45 (MiniGPT-4) and 0.82 - 1.41 (LLaVA) over seeds 0-3, so 0.05 leaves a wide margin for
other seeds and small architecture changes without letting a nearly constant image path through."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from _tolerance import assert_close_rel
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
)

from core.captioning.base import GenerationSettings
from core.captioning.hf_vlm import HFVLMCaptionModel
from core.captioning.hf_vlm_tiny import IMAGE_TOKEN, write_tiny_llava
from core.captioning.minigpt4 import IMAGE_PLACEHOLDER, MiniGPT4CaptionModel, build_prompt
from core.captioning.minigpt4_tiny import write_tiny_minigpt4
from core.config import HFVLMConfig, MiniGPT4Config
from core.models.seeded_init import seeded_init_

PRESETS = ["minigpt4-vicuna", "minigpt4-llama2", "llava"]
PROMPT = "Describe this image in detail."  # the tiny caption presets' prompt
MARGIN = 0.05
SETTINGS = GenerationSettings(max_new_tokens=16)  # what the tiny caption presets generate


def clearly_different_images(size: int = 48) -> list[np.ndarray]:
    """Solid red, solid blue, a checkerboard, a colour ramp, noise, a yellow disc on black."""
    yy, xx = np.mgrid[0:size, 0:size]
    checker = (((yy // 8 + xx // 8) % 2) * 255).astype(np.uint8)
    ramp = np.stack([xx, yy, size - 1 - xx], axis=-1) * (255 // (size - 1))
    disc = np.zeros((size, size, 3), np.uint8)
    disc[(yy - size // 2) ** 2 + (xx - size // 2) ** 2 < (size // 3) ** 2] = (255, 255, 0)
    return [
        np.full((size, size, 3), (220, 30, 30), np.uint8),
        np.full((size, size, 3), (30, 30, 220), np.uint8),
        np.repeat(checker[..., None], 3, axis=-1),
        ramp.astype(np.uint8),
        np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8),
        disc,
    ]


IMAGES = clearly_different_images()


@pytest.fixture(scope="module")
def captioners() -> dict[str, MiniGPT4CaptionModel | HFVLMCaptionModel]:
    """The three tiny presets as the caption job builds them (default seed 0)."""
    return {
        "minigpt4-vicuna": MiniGPT4CaptionModel(
            MiniGPT4Config(template="vicuna", tiny=True), SETTINGS, device="cpu"
        ),
        "minigpt4-llama2": MiniGPT4CaptionModel(
            MiniGPT4Config(template="llama2", tiny=True), SETTINGS, device="cpu"
        ),
        "llava": HFVLMCaptionModel(HFVLMConfig(tiny=True), SETTINGS, device="cpu"),
    }


def image_blocks_at_llm_input(captioner, images: list[np.ndarray]) -> torch.Tensor:
    """[B, tokens, hidden]: the image positions of what the LLM's first forward call receives."""
    seen: dict[str, torch.Tensor] = {}

    def hook(module, args, kwargs):
        if "embeds" not in seen:  # later calls decode one new token each
            seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    if isinstance(captioner, MiniGPT4CaptionModel):
        llm = captioner.llm
        before = build_prompt(captioner.template, PROMPT).split(IMAGE_PLACEHOLDER)[0]
        start = len(captioner.tokenizer(before, add_special_tokens=True).input_ids)
        positions = torch.arange(start, start + captioner.num_query_tokens)
    else:
        llm = captioner.model.model.language_model
        ids = captioner.build_inputs(images[:1], [PROMPT])["input_ids"][0]
        positions = torch.nonzero(ids == captioner.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
        positions = positions.flatten()
    handle = llm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        captioner.describe([str(i) for i in range(len(images))], images, PROMPT)
    finally:
        handle.remove()
    return seen["embeds"][:, positions]


@pytest.mark.parametrize("preset", PRESETS)
def test_different_images_reach_the_llm_differently(captioners, preset: str) -> None:
    blocks = image_blocks_at_llm_input(captioners[preset], IMAGES)
    assert blocks.shape[0] == len(IMAGES) and blocks.shape[1] > 0
    if preset.startswith("minigpt4"):  # the positions are right: the block is encode_images'
        assert_close_rel(blocks, captioners[preset].encode_images(IMAGES), rel=1e-5)
    for i, j in itertools.combinations(range(len(IMAGES)), 2):
        a, b = blocks[i], blocks[j]
        ratio = float((a - b).norm() / max(a.norm(), b.norm()))
        assert ratio > MARGIN, f"{preset}: images {i} and {j} differ by only {ratio:.2e}"


@pytest.mark.parametrize("preset", PRESETS)
def test_captions_depend_on_the_image(captioners, preset: str) -> None:
    captions = [d[0] for d in captioners[preset].describe(list("abcdef"), IMAGES, PROMPT)]
    assert len(set(captions)) > 1, f"{preset}: one caption for every image: {captions[0]!r}"


# --------------------------------------------------------------------------------------------
# The written folders hold seeded_init_'s weights, and loading them re-initialises nothing
# --------------------------------------------------------------------------------------------


def assert_same_state(actual: torch.nn.Module, expected: torch.nn.Module) -> None:
    sa, se = actual.state_dict(), expected.state_dict()
    assert sa.keys() == se.keys()
    for key, value in se.items():
        assert torch.equal(sa[key], value), key


def test_minigpt4_parts_are_seeded_init_after_loading(tmp_path: Path) -> None:
    seed = 2
    paths = write_tiny_minigpt4(tmp_path, seed=seed, template="llama2")
    cfg = MiniGPT4Config(template="llama2", **{k: str(v) for k, v in paths.items()})
    captioner = MiniGPT4CaptionModel(cfg, SETTINGS, device="cpu", dtype="float32")

    blip2 = seeded_init_(
        Blip2ForConditionalGeneration(Blip2Config.from_pretrained(paths["blip2_path"])), seed
    )
    assert_same_state(captioner.vision, blip2.vision_model)
    assert_same_state(captioner.qformer, blip2.qformer)
    assert torch.equal(captioner.query_tokens, blip2.query_tokens.detach())

    llm, info = LlamaForCausalLM.from_pretrained(paths["llm_path"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_same_state(captioner.llm, seeded_init_(LlamaForCausalLM(llm.config), seed))

    shape = captioner.llama_proj.weight.shape
    proj = torch.nn.ModuleDict({"llama_proj": torch.nn.Linear(shape[1], shape[0])})
    assert_same_state(captioner.llama_proj, seeded_init_(proj, seed)["llama_proj"])


def test_llava_is_seeded_init_after_loading(tmp_path: Path) -> None:
    seed = 2
    folder = write_tiny_llava(tmp_path, seed=seed)
    loaded, info = LlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_same_state(loaded, seeded_init_(LlavaForConditionalGeneration(loaded.config), seed))
    captioner = HFVLMCaptionModel(HFVLMConfig(model_path=str(folder)), SETTINGS, device="cpu")
    assert_same_state(captioner.model, loaded)


# --------------------------------------------------------------------------------------------
# Sampling (decoding: sample) is seeded per image: batch, instance and order play no part
# --------------------------------------------------------------------------------------------

SAMPLED = {
    "minigpt4-vicuna": {"backend": "minigpt4", "minigpt4": {"tiny": True, "template": "vicuna"}},
    "llava": {"backend": "hf_vlm", "hf_vlm": {"tiny": True}},
}


def sampling_captioner(preset: str, seed: int):
    """The job's path: a CaptionerConfig with the official sampling settings -> Captioner."""
    from core.captioning.captioner import Captioner
    from core.config import CaptionerConfig, config_from_dict

    values = {
        **SAMPLED[preset],
        "prompts": [PROMPT],
        "max_new_tokens": 16,
        "decoding": "sample",
        "repetition_penalty": 1.05,
        "seed": seed,
    }
    return Captioner(config_from_dict(CaptionerConfig, values), device="cpu")


def caption_batch(captioner, ids: list[str], images: list[np.ndarray]) -> dict[str, str]:
    """Caption one batch as map_batches hands it over; id -> caption."""
    column = np.empty(len(images), dtype=object)
    for k, image in enumerate(images):
        column[k] = image
    batch = {
        "id": np.array(ids),
        "label": np.array(["x"] * len(ids)),
        "image": column,
        "error": np.array([""] * len(ids)),
    }
    rows = captioner(batch).to_pylist()
    assert all(not r["error"] for r in rows), rows
    return {r["id"]: r["caption"] for r in rows}


@pytest.mark.parametrize("preset", list(SAMPLED))
def test_sampling_is_seeded_per_image(preset: str) -> None:
    ids = ["cls/red.png", "cls/blue.png", "cls/checker.png"]
    images = IMAGES[:3]
    first = sampling_captioner(preset, seed=0)
    together = caption_batch(first, ids, images)
    alone: dict[str, str] = {}
    for image_id, image in zip(ids, images, strict=True):
        alone.update(caption_batch(first, [image_id], [image]))
    assert together == alone  # batch of 3 = batches of 1
    second = sampling_captioner(preset, seed=0)  # another instance (another actor)
    reversed_order = caption_batch(second, ids[::-1], images[::-1])
    assert reversed_order == together
    other_seed = caption_batch(sampling_captioner(preset, seed=1), ids, images)
    assert sum(other_seed[i] != together[i] for i in ids) >= 2, (together, other_seed)


@pytest.mark.parametrize("preset", ["minigpt4-vicuna", "llava"])
def test_mixed_prompts_sorted_by_length_keep_each_rows_answer(captioners, preset: str) -> None:
    """One prompt per image, of different lengths: the batch runs shortest prompt first, one
    generate per length (no padding), and each image gets the answer it gets alone."""
    captioner = captioners[preset]
    prompts = [PROMPT, "What is it?", PROMPT + " Name every object.", "What is it?"]
    images = IMAGES[: len(prompts)]
    lengths = [captioner.prompt_length(p) for p in prompts]
    assert len(set(lengths)) == 3
    ids = [str(i) for i in range(len(images))]
    batched = captioner.describe_each(images, prompts, ids=ids)
    alone = [
        captioner.describe_each([im], [p], ids=[i])[0]
        for im, p, i in zip(images, prompts, ids, strict=True)
    ]
    assert batched == alone
