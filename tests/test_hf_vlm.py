"""The generic transformers vision-language backend, on a tiny random LLaVA written to disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.captioning.base import GenerationSettings
from core.captioning.devices import resolve_dtype
from core.captioning.hf_vlm import HFVLMCaptionModel, to_pil
from core.captioning.hf_vlm_tiny import IMAGE_TOKEN, NUM_IMAGE_TOKENS, write_tiny_llava
from core.captioning.tiny_tokenizer import build_tiny_tokenizer
from core.config import HFVLMConfig
from core.models.seeded_init import seeded_init_

GREEDY = GenerationSettings(max_new_tokens=8, num_beams=1)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), seed=0)


@pytest.fixture(scope="module")
def model(llava_dir: Path) -> HFVLMCaptionModel:
    return HFVLMCaptionModel(HFVLMConfig(model_path=str(llava_dir)), GREEDY, device="cpu")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [(20, 40), (64, 33), (50, 50)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_captions_one_description_per_image(model: HFVLMCaptionModel, images) -> None:
    out = model.describe(["a", "b", "c"], images, "Describe this image.")
    assert len(out) == 3
    assert all(isinstance(d, list) and len(d) == 1 and isinstance(d[0], str) for d in out)
    assert model.model_name == "tiny-llava0"  # the folder's basename
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert model.describe([], [], "Describe this image.") == []


def test_batch_is_left_padded(model: HFVLMCaptionModel, images) -> None:
    prompts = ["Hi.", "Describe this image in great detail, please."]
    inputs = model.build_inputs(images[:2], prompts)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    pad = model.tokenizer.pad_token_id
    assert (ids[0] == pad).sum() > 0 and (ids[1] == pad).sum() == 0
    for row, row_mask in zip(ids, mask, strict=True):
        n_pad = int((row_mask == 0).sum())
        assert torch.all(row[:n_pad] == pad) and torch.all(row[n_pad:] != pad)
        assert torch.all(row_mask[:n_pad] == 0) and torch.all(row_mask[n_pad:] == 1)


def test_batched_greedy_equals_one_at_a_time(model: HFVLMCaptionModel, images) -> None:
    # Prompts of different lengths force padding; with right padding the short prompt's answer
    # would follow its pad tokens and differ from the unpadded run.
    prompts = ["Hi.", "Describe this image in great detail, please.", "What is it?"]
    batched = model.describe_each(images, prompts)
    alone = [model.describe_each([im], [p])[0] for im, p in zip(images, prompts, strict=True)]
    assert batched == alone
    assert any(batched)  # the tiny model does say something
    # describe (one prompt for all) agrees with the single-image runs too.
    same_prompt = model.describe(["a", "b", "c"], images, "Hi.")
    assert same_prompt[0] == [alone[0]]


def test_prompt_follows_chat_template(model: HFVLMCaptionModel, images) -> None:
    prompt = "Give 10 semantic descriptions for the image."
    assert model.format_prompt(prompt) == f"USER: {IMAGE_TOKEN}\n{prompt} ASSISTANT:"
    # What the model receives: BOS, the turn, and the image token expanded to one per patch.
    ids = model.build_inputs(images[:1], [prompt])["input_ids"][0]
    expected = f"<s>USER: {IMAGE_TOKEN * NUM_IMAGE_TOKENS}\n{prompt} ASSISTANT:"
    assert model.tokenizer.decode(ids) == expected
    image_id = model.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert int((ids == image_id).sum()) == NUM_IMAGE_TOKENS == 16


def test_same_seed_same_weights_and_captions(tmp_path: Path, images) -> None:
    a = HFVLMCaptionModel(HFVLMConfig(tiny=True, seed=3), GREEDY, device="cpu")
    b = HFVLMCaptionModel(HFVLMConfig(tiny=True, seed=3), GREEDY, device="cpu")
    c = HFVLMCaptionModel(HFVLMConfig(tiny=True, seed=4), GREEDY, device="cpu")
    assert a.model_name == "llava-tiny"
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    prompt = "Describe this image."
    assert a.describe(["x", "y"], images[:2], prompt) == b.describe(["x", "y"], images[:2], prompt)
    # Writing the folder does not disturb the caller's random state.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    write_tiny_llava(tmp_path / "w", seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_beam_search_runs(llava_dir: Path, images) -> None:
    beams = GenerationSettings(max_new_tokens=5, num_beams=2)
    model = HFVLMCaptionModel(HFVLMConfig(model_path=str(llava_dir)), beams, device="cpu")
    out = model.describe(["a", "b"], images[:2], "Describe this image.")
    assert len(out) == 2 and all(len(d) == 1 and isinstance(d[0], str) for d in out)


def test_sampling_is_seeded_by_id_and_needs_ids(llava_dir: Path, images) -> None:
    settings = GenerationSettings(max_new_tokens=6, decoding="sample", seed=2)
    model = HFVLMCaptionModel(HFVLMConfig(model_path=str(llava_dir)), settings, device="cpu")
    prompts = ["Hi.", "Describe this image in great detail, please.", "What is it?"]
    batched = model.describe_each(images, prompts, ids=["a", "b", "c"])
    alone = model.describe_each(images[2:], prompts[2:], ids=["c"])
    assert alone == batched[2:]
    # Same image and prompt under another id: another seed, another draw.
    assert model.describe_each(images[2:], prompts[2:], ids=["z"]) != alone
    with pytest.raises(ValueError, match="pass ids"):
        model.describe_each(images, prompts)
    with pytest.raises(ValueError, match="3 images but 2 ids"):
        model.describe_each(images, prompts, ids=["a", "b"])


def test_bad_images_and_dtype_are_rejected() -> None:
    with pytest.raises(ValueError, match="HxWx3"):
        to_pil(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        to_pil(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", torch.device("cpu"))
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16


def test_empty_folder_is_rejected_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    with pytest.raises(ValueError, match="not-a-model"):
        HFVLMCaptionModel(HFVLMConfig(model_path=str(folder)), GREEDY, device="cpu")


def test_text_only_model_is_rejected_by_name(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "text-only-llama"
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    seeded_init_(LlamaForCausalLM(config), seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with pytest.raises(ValueError, match="text-only-llama") as info:
        HFVLMCaptionModel(HFVLMConfig(model_path=str(folder)), GREEDY, device="cpu")
    assert "not a vision-language model" in str(info.value)
