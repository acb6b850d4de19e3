"""MiniGPT-4 assembled from transformers parts, checked against a hand-built forward pass.

The tests write tiny random weights in the three official layouts themselves (a BLIP-2 folder from
``Blip2ForConditionalGeneration.save_pretrained``, the official ``.pth`` with ``llama_proj`` under
``"model"``, a LLaMA folder with a tokenizer), load them through ``MiniGPT4CaptionModel`` and
compare what the LLM really receives with an embedding sequence assembled by hand from the
in-memory weights that were saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _tolerance import assert_close_rel
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
)

from core.captioning.base import GenerationSettings
from core.captioning.minigpt4 import (
    MiniGPT4CaptionModel,
    MiniGPT4LoadError,
    build_prompt,
    clean_answer,
    load_llama_proj,
)
from core.captioning.minigpt4_tiny import write_tiny_minigpt4
from core.captioning.tiny_tokenizer import build_tiny_tokenizer
from core.config import MiniGPT4Config
from core.models.seeded_init import seeded_init_

# The official repo's CONV_VISION_Vicuna0 / CONV_VISION_LLama2 after Chat.upload_img,
# Chat.ask("Describe it.") and Chat.answer (which opens the assistant's turn), written out.
SYSTEM = (
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once "
    "I provide it to you. Please answer my questions."
)
EXPECTED_PROMPTS = {
    "vicuna": SYSTEM + "###Human: <Img><ImageHere></Img> Describe it.###Assistant: ",
    "llama2": SYSTEM + "<s>[INST] <Img><ImageHere></Img> Describe it. [/INST] ",
}
# The same prompts cut at the image placeholder, for the hand assembly.
EXPECTED_HALVES = {
    "vicuna": (SYSTEM + "###Human: <Img>", "</Img> {text}###Assistant: "),
    "llama2": (SYSTEM + "<s>[INST] <Img>", "</Img> {text} [/INST] "),
}

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
IMAGE_SIZE = 24
NUM_QUERY = 3
QFORMER_HIDDEN = 32
LLM_HIDDEN = 40
SEED = 1234


class Parts:
    """The in-memory modules whose weights were written to disk, plus the three paths."""

    def __init__(self, root: Path) -> None:
        vision = Blip2VisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=6,
        )
        qformer = Blip2QFormerConfig(
            hidden_size=QFORMER_HIDDEN,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            encoder_hidden_size=16,
            cross_attention_frequency=1,
            vocab_size=50,
            max_position_embeddings=16,
        )
        text = OPTConfig(
            vocab_size=50,
            hidden_size=8,
            ffn_dim=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            word_embed_proj_dim=8,
            max_position_embeddings=16,
        )
        # Weights from the project's own seeded init, not transformers' defaults (which changed:
        # transformers 5 starts the BLIP-2 vision tower at std 1e-10, every image alike).
        self.blip2 = seeded_init_(
            Blip2ForConditionalGeneration(
                Blip2Config(
                    vision_config=vision.to_dict(),
                    qformer_config=qformer.to_dict(),
                    text_config=text.to_dict(),
                    num_query_tokens=NUM_QUERY,
                )
            ),
            SEED,
        ).eval()
        self.blip2_path = root / "blip2"
        self.blip2.save_pretrained(self.blip2_path)

        generator = torch.Generator().manual_seed(SEED)
        self.proj_weight = torch.randn(LLM_HIDDEN, QFORMER_HIDDEN, generator=generator) * 0.2
        self.proj_bias = torch.randn(LLM_HIDDEN, generator=generator) * 0.2
        self.checkpoint = root / "minigpt4.pth"
        torch.save(
            {
                "model": {
                    "llama_proj.weight": self.proj_weight,
                    "llama_proj.bias": self.proj_bias,
                    "some_other_module.weight": torch.ones(2, 2),
                },
                "epoch": 3,
            },
            self.checkpoint,
        )

        self.tokenizer = build_tiny_tokenizer()
        self.llm = seeded_init_(
            LlamaForCausalLM(
                LlamaConfig(
                    vocab_size=len(self.tokenizer),
                    hidden_size=LLM_HIDDEN,
                    intermediate_size=64,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    max_position_embeddings=512,
                    bos_token_id=self.tokenizer.bos_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            ),
            SEED,
        ).eval()
        self.llm_path = root / "llm"
        self.llm.save_pretrained(self.llm_path)
        self.tokenizer.save_pretrained(self.llm_path)

    def config(self, template: str = "vicuna", **paths: str) -> MiniGPT4Config:
        values = {
            "blip2_path": str(self.blip2_path),
            "checkpoint": str(self.checkpoint),
            "llm_path": str(self.llm_path),
        }
        values.update(paths)
        return MiniGPT4Config(template=template, **values)

    # ----- the hand assembly ---------------------------------------------------------------

    def image_tokens(self, image: np.ndarray) -> torch.Tensor:
        """[NUM_QUERY, LLM_HIDDEN]: eval preprocessing -> ViT -> Q-Former -> linear, by hand."""
        resized = Image.fromarray(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
        pixels = (np.asarray(resized).astype(np.float32) / 255.0 - MEAN) / STD
        pixels = torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None]
        with torch.no_grad():
            patches = self.blip2.vision_model(pixel_values=pixels).last_hidden_state
            queries = self.blip2.qformer(
                query_embeds=self.blip2.query_tokens,
                encoder_hidden_states=patches,
                encoder_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long),
            ).last_hidden_state
            return queries[0] @ self.proj_weight.T + self.proj_bias

    def text_tokens(self, text: str, bos: bool) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if bos:
            ids = [self.tokenizer.bos_token_id, *ids]
        with torch.no_grad():
            return self.llm.model.embed_tokens.weight[torch.tensor(ids)]

    def expected_row(self, template: str, text: str, image: np.ndarray) -> torch.Tensor:
        before, after = EXPECTED_HALVES[template]
        return torch.cat(
            [
                self.text_tokens(before, bos=True),
                self.image_tokens(image),
                self.text_tokens(after.format(text=text), bos=False),
            ]
        )


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Parts:
    return Parts(tmp_path_factory.mktemp("minigpt4_parts"))


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(64, 20, 3), dtype=np.uint8),
    ]


def capture_llm_inputs(
    model: MiniGPT4CaptionModel,
) -> tuple[dict, torch.utils.hooks.RemovableHandle]:
    """Record the kwargs of the LLM's first forward call (the full prompt)."""
    seen: dict = {}

    def hook(module, args, kwargs):
        if not seen:
            seen["inputs_embeds"] = kwargs["inputs_embeds"].detach().clone()
            # transformers 5.23's generate drops an all-ones mask before the forward call.
            mask = kwargs.get("attention_mask")
            seen["attention_mask"] = None if mask is None else mask.detach().clone()
            seen["input_ids"] = kwargs.get("input_ids")

    return seen, model.llm.register_forward_pre_hook(hook, with_kwargs=True)


# --------------------------------------------------------------------------------------------
# 1. What the LLM receives equals the hand assembly
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["vicuna", "llama2"])
def test_llm_receives_prefix_image_suffix(parts: Parts, images, template: str) -> None:
    model = MiniGPT4CaptionModel(
        parts.config(template), GenerationSettings(max_new_tokens=3), device="cpu"
    )
    assert model.num_query_tokens == NUM_QUERY
    seen, handle = capture_llm_inputs(model)
    try:
        answers = model.describe(["a", "b"], images, "Describe it.")
    finally:
        handle.remove()
    assert len(answers) == 2

    received = seen["inputs_embeds"]
    assert seen["input_ids"] is None or seen["input_ids"].numel() == 0
    assert received.dtype == torch.float32
    for i, image in enumerate(images):
        expected = parts.expected_row(template, "Describe it.", image)
        assert received.shape[1] == expected.shape[0]  # one prompt: no padding needed
        # The same maths in another batch and order: float32 rounding stays far below 1e-5.
        assert_close_rel(received[i], expected, rel=1e-5)
    mask = seen["attention_mask"]
    assert mask is None or bool(mask.all())
    _, direct_mask = model.build_inputs_embeds(images, "Describe it.")
    assert torch.equal(direct_mask, torch.ones(2, received.shape[1], dtype=torch.long))

    # The image block sits right after the prefix and has one embedding per query token.
    before, _ = EXPECTED_HALVES[template]
    start = 1 + len(parts.tokenizer(before, add_special_tokens=False).input_ids)
    for i, image in enumerate(images):
        block = received[i, start : start + NUM_QUERY]
        assert_close_rel(block, parts.image_tokens(image), rel=1e-5)
    # Different images, different image blocks (by a margin, see test_tiny_captioners.py); the
    # text around them is shared.
    first, second = (received[i, start : start + NUM_QUERY] for i in range(2))
    assert (first - second).norm() > 0.05 * max(first.norm(), second.norm())
    torch.testing.assert_close(received[0, :start], received[1, :start], atol=0, rtol=0)


def test_left_padding_for_prompts_of_different_lengths(parts: Parts, images) -> None:
    model = MiniGPT4CaptionModel(parts.config(), GenerationSettings(max_new_tokens=2))
    prompts = ["Short.", "Give 10 semantic descriptions for the image."]
    seen, handle = capture_llm_inputs(model)
    try:
        model.generate(images, prompts)
    finally:
        handle.remove()
    embeds, mask = seen["inputs_embeds"], seen["attention_mask"]
    direct_embeds, direct_mask = model.build_inputs_embeds(images, prompts)
    torch.testing.assert_close(embeds, direct_embeds, atol=0, rtol=0)
    assert torch.equal(mask, direct_mask)

    rows = [parts.expected_row("vicuna", p, im) for p, im in zip(prompts, images, strict=True)]
    length = max(r.shape[0] for r in rows)
    assert embeds.shape == (2, length, LLM_HIDDEN)
    pad = parts.llm.model.embed_tokens.weight[parts.tokenizer.pad_token_id].detach()
    for i, row in enumerate(rows):
        n_pad = length - row.shape[0]
        # zeros on the left only, then ones to the end
        assert mask[i].tolist() == [0] * n_pad + [1] * row.shape[0]
        assert_close_rel(embeds[i, n_pad:], row, rel=1e-5)
        torch.testing.assert_close(embeds[i, :n_pad], pad.expand(n_pad, -1), atol=0, rtol=0)
    assert mask[0, 0] == 0 and mask[1].all()  # the short prompt was padded, the long one not

    # Left padding with a 0 mask changes nothing: the padded row's next-token logits equal those
    # of the same row run alone.
    with torch.no_grad():
        batch_logits = model.llm(inputs_embeds=embeds, attention_mask=mask).logits[0, -1]
        alone = model.build_inputs_embeds(images[:1], prompts[:1])[0]
        alone_logits = model.llm(inputs_embeds=alone).logits[0, -1]
    assert_close_rel(batch_logits, alone_logits, rel=1e-4)


def test_sharded_and_wrapped_blip2_layouts_load_the_same(parts: Parts, images, tmp_path) -> None:
    reference = MiniGPT4CaptionModel(parts.config(), GenerationSettings(max_new_tokens=1))
    expected = reference.encode_images(images)

    sharded = tmp_path / "sharded"
    parts.blip2.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    model = MiniGPT4CaptionModel(
        parts.config(blip2_path=str(sharded)), GenerationSettings(max_new_tokens=1)
    )
    torch.testing.assert_close(model.encode_images(images), expected, atol=0, rtol=0)

    # The same tensors nested under "model." (the wrapper transformers 5 uses for other
    # multimodal models) load the same.
    wrapped = tmp_path / "wrapped"
    wrapped.mkdir()
    (wrapped / "config.json").write_text((parts.blip2_path / "config.json").read_text())
    state = load_file(parts.blip2_path / "model.safetensors")
    save_file(
        {f"model.{k}": v.contiguous() for k, v in state.items()}, wrapped / "model.safetensors"
    )
    model = MiniGPT4CaptionModel(
        parts.config(blip2_path=str(wrapped)), GenerationSettings(max_new_tokens=1)
    )
    torch.testing.assert_close(model.encode_images(images), expected, atol=0, rtol=0)


def test_blip2_missing_or_unexpected_keys_name_the_folder(parts: Parts, tmp_path) -> None:
    state = load_file(parts.blip2_path / "model.safetensors")
    config = (parts.blip2_path / "config.json").read_text()

    def write(name: str, tensors: dict[str, torch.Tensor]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(config)
        save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors")
        return folder

    dropped = "qformer.encoder.layer.1.crossattention.attention.key.weight"
    missing = write("missing", {k: v for k, v in state.items() if k != dropped})
    with pytest.raises(MiniGPT4LoadError, match="missing") as info:
        MiniGPT4CaptionModel(parts.config(blip2_path=str(missing)), GenerationSettings())
    assert str(missing) in str(info.value) and dropped.removeprefix("qformer.") in str(info.value)

    extra = write("unexpected", {**state, "vision_model.extra_head.weight": torch.zeros(2)})
    with pytest.raises(MiniGPT4LoadError, match="unexpected") as info:
        MiniGPT4CaptionModel(parts.config(blip2_path=str(extra)), GenerationSettings())
    assert str(extra) in str(info.value) and "extra_head.weight" in str(info.value)

    no_queries = write("no_queries", {k: v for k, v in state.items() if k != "query_tokens"})
    with pytest.raises(MiniGPT4LoadError, match="query_tokens") as info:
        MiniGPT4CaptionModel(parts.config(blip2_path=str(no_queries)), GenerationSettings())
    assert str(no_queries) in str(info.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(config)
    with pytest.raises(MiniGPT4LoadError, match=str(empty)):
        MiniGPT4CaptionModel(parts.config(blip2_path=str(empty)), GenerationSettings())


def test_blip2_language_model_is_never_read(parts: Parts, tmp_path) -> None:
    """A shard holding only the BLIP-2 language model is not even opened (as on the hub, where
    the image side and the LM sit in different shards)."""
    folder = tmp_path / "lm_shard_broken"
    folder.mkdir()
    (folder / "config.json").write_text((parts.blip2_path / "config.json").read_text())
    state = load_file(parts.blip2_path / "model.safetensors")
    image_side = {k: v for k, v in state.items() if not k.startswith("language_")}
    assert len(image_side) < len(state)
    names = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    save_file(image_side, folder / names[0])
    (folder / names[1]).write_bytes(b"not a safetensors file")
    weight_map = {k: names[0] if k in image_side else names[1] for k in state}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    model = MiniGPT4CaptionModel(
        parts.config(blip2_path=str(folder)), GenerationSettings(max_new_tokens=1)
    )
    assert model.image_size == IMAGE_SIZE


# --------------------------------------------------------------------------------------------
# 2. Official conversation templates
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["vicuna", "llama2"])
def test_prompts_match_the_official_templates(template: str) -> None:
    assert build_prompt(template, "Describe it.") == EXPECTED_PROMPTS[template]
    before, after = EXPECTED_HALVES[template]
    assert EXPECTED_PROMPTS[template] == before + "<ImageHere>" + after.format(text="Describe it.")


def test_prompt_errors() -> None:
    with pytest.raises(ValueError, match="template"):
        build_prompt("vicuna_v1", "hi")
    with pytest.raises(ValueError, match="<ImageHere>"):
        build_prompt("vicuna", "look <ImageHere>")


def test_answer_cleanup_follows_the_official_chat() -> None:
    assert clean_answer(" A dog on grass.###Human: and then") == "A dog on grass."
    assert clean_answer("Assistant: A cat. ") == "A cat."
    assert clean_answer("###") == ""


# --------------------------------------------------------------------------------------------
# 3. The checkpoint is read with weights_only=True
# --------------------------------------------------------------------------------------------


class Payload:
    """Any non-tensor object: a weights_only load must refuse to rebuild it."""

    def __init__(self) -> None:
        self.value = 42


def test_checkpoint_with_pickled_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save(
        {
            "model": {"llama_proj.weight": torch.zeros(2, 2), "llama_proj.bias": torch.zeros(2)},
            "extra": Payload(),
        },
        path,
    )
    with pytest.raises(MiniGPT4LoadError, match="weights_only") as info:
        load_llama_proj(path)
    assert str(path) in str(info.value)


def test_checkpoint_without_model_or_llama_proj_names_the_file(parts: Parts, tmp_path) -> None:
    no_model = tmp_path / "no_model.pth"
    torch.save({"state_dict": {"llama_proj.weight": torch.zeros(2, 2)}}, no_model)
    with pytest.raises(MiniGPT4LoadError, match="'model'") as info:
        load_llama_proj(no_model)
    assert str(no_model) in str(info.value)

    no_proj = tmp_path / "no_proj.pth"
    torch.save({"model": {"llama_proj.weight": torch.zeros(2, 2)}}, no_proj)
    with pytest.raises(MiniGPT4LoadError, match=r"llama_proj\.bias") as info:
        MiniGPT4CaptionModel(parts.config(checkpoint=str(no_proj)), GenerationSettings())
    assert str(no_proj) in str(info.value)

    wrong_size = tmp_path / "wrong_size.pth"
    torch.save(
        {"model": {"llama_proj.weight": torch.zeros(7, 5), "llama_proj.bias": torch.zeros(7)}},
        wrong_size,
    )
    with pytest.raises(MiniGPT4LoadError, match="llama_proj maps 5 -> 7"):
        MiniGPT4CaptionModel(parts.config(checkpoint=str(wrong_size)), GenerationSettings())

    weights = load_llama_proj(parts.checkpoint)  # unrelated keys are ignored
    assert torch.equal(weights["weight"], parts.proj_weight)
    assert torch.equal(weights["bias"], parts.proj_bias)


# --------------------------------------------------------------------------------------------
# 4. Generation
# --------------------------------------------------------------------------------------------


def test_describe_greedy_is_deterministic_and_beam_search_runs(parts: Parts, images) -> None:
    model = MiniGPT4CaptionModel(parts.config(), GenerationSettings(max_new_tokens=6))
    first = model.describe(["a", "b"], images, "What is in the image?")
    second = model.describe(["a", "b"], images, "What is in the image?")
    assert first == second
    assert len(first) == 2
    assert all(isinstance(d, list) and len(d) == 1 and isinstance(d[0], str) for d in first)

    # Only generated tokens are decoded: given inputs_embeds alone, generate returns new tokens.
    outputs = []
    original = model.llm.generate

    def recording_generate(*args, **kwargs):
        outputs.append(original(*args, **kwargs))
        return outputs[-1]

    model.llm.generate = recording_generate
    raw = model.generate(images, "What is in the image?")
    assert outputs[0].shape[0] == 2 and outputs[0].shape[1] <= 6
    assert raw == parts.tokenizer.batch_decode(outputs[0], skip_special_tokens=True)
    assert [[clean_answer(t)] for t in raw] == first

    beam = MiniGPT4CaptionModel(parts.config(), GenerationSettings(max_new_tokens=6, num_beams=2))
    out = beam.describe(["a", "b"], images, "What is in the image?")
    assert len(out) == 2 and all(len(d) == 1 for d in out)
    assert model.describe([], [], "anything") == []
    with pytest.raises(ValueError, match="ids"):
        model.describe(["a"], images, "x")


def test_sampling_passes_the_official_settings_one_image_at_a_time(parts: Parts, images) -> None:
    """decoding=sample: the official Chat.answer_prepare arguments reach the LLM's generate, one
    image per call (its own seed), and the caller's random state is left as it was."""
    settings = GenerationSettings(max_new_tokens=6, decoding="sample", repetition_penalty=1.05)
    model = MiniGPT4CaptionModel(parts.config(), settings)
    calls: list[dict] = []
    original = model.llm.generate

    def recording_generate(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    model.llm.generate = recording_generate
    torch.manual_seed(7)
    expected_next = torch.rand(2)
    torch.manual_seed(7)
    out = model.describe(["a", "b"], images, "What is in the image?")
    assert torch.equal(torch.rand(2), expected_next)
    assert len(out) == 2 and [c["inputs_embeds"].shape[0] for c in calls] == [1, 1]
    official = {"do_sample": True, "top_p": 0.9, "top_k": 50, "temperature": 1.0}
    official |= {"repetition_penalty": 1.05, "num_beams": 1, "min_new_tokens": 1}
    for call in calls:
        assert {k: call[k] for k in official} == official
        assert call["max_new_tokens"] == 6 and call["stop_strings"] == ["###"]
    # Image "b" alone draws what it drew second in the batch.
    assert model.describe(["b"], images[1:], "What is in the image?") == out[1:]


@pytest.mark.parametrize("template", ["vicuna", "llama2"])
def test_tiny_preset_builds_and_runs(images, template: str) -> None:
    cfg = MiniGPT4Config(template=template, tiny=True, seed=3)
    model = MiniGPT4CaptionModel(cfg, GenerationSettings(max_new_tokens=4), device="cpu")
    assert model.model_name == f"minigpt4-{template}-tiny"
    out = model.describe(["a", "b"], images, "Give 10 semantic descriptions for the image.")
    assert len(out) == 2 and all(len(d) == 1 and isinstance(d[0], str) for d in out)
    assert out == model.describe(["a", "b"], images, "Give 10 semantic descriptions for the image.")


def test_tiny_writer_is_seeded(tmp_path: Path) -> None:
    a = write_tiny_minigpt4(tmp_path / "a", seed=5)
    b = write_tiny_minigpt4(tmp_path / "b", seed=5)
    c = write_tiny_minigpt4(tmp_path / "c", seed=6)
    assert set(a) == {"blip2_path", "checkpoint", "llm_path"}

    def tensors(paths: dict[str, Path]) -> dict[str, torch.Tensor]:
        found = {
            f"blip2.{k}": v for k, v in load_file(paths["blip2_path"] / "model.safetensors").items()
        }
        found.update(
            {f"llm.{k}": v for k, v in load_file(paths["llm_path"] / "model.safetensors").items()}
        )
        found.update(load_llama_proj(paths["checkpoint"]))
        return found

    ta, tb, tc = tensors(a), tensors(b), tensors(c)
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert not torch.equal(ta["weight"], tc["weight"])
    assert not torch.equal(ta["blip2.query_tokens"], tc["blip2.query_tokens"])


def test_real_model_name_and_dtype(parts: Parts) -> None:
    model = MiniGPT4CaptionModel(parts.config("llama2"), GenerationSettings(), dtype="float32")
    assert model.model_name == "minigpt4-llama2"
    assert model.llm.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        MiniGPT4CaptionModel(parts.config(), GenerationSettings(), dtype="int8")
