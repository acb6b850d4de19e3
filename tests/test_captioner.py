"""The batch-to-rows captioner: prompts, numbered lists, error rows, per-image retry; decoding
settings and per-image sampling seeds."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from core.captioning.base import (
    CaptionModel,
    GenerationSettings,
    generate_by_length,
    generate_rows,
    row_seed,
    split_numbered_list,
)
from core.captioning.captioner import CAPTION_SCHEMA, Captioner, build_caption_model
from core.captioning.reference import ReferenceCaptionModel
from core.config import (
    CaptionerConfig,
    CaptionJobConfig,
    ConfigError,
    HFVLMConfig,
    ReferenceConfig,
    load_config,
)


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("1. a red ball 2. on grass 3. sunny", ["a red ball", "on grass", "sunny"]),
        ("1) first line\n2) second line\n", ["first line", "second line"]),
        ("Here you go:\n1. one,\n2. two;", ["one", "two"]),
        ("a plain sentence with 2 numbers 3. in it", ["a plain sentence with 2 numbers 3. in it"]),
        ("", []),
    ],
)
def test_split_numbered_list(text: str, items: list[str]) -> None:
    assert split_numbered_list(text) == items


class FakeModel(CaptionModel):
    """Describes by id; raises for ids in ``bad``; records the batch sizes it saw."""

    model_name = "fake"

    def __init__(self, bad=(), empty=()) -> None:
        self.bad, self.empty, self.calls = set(bad), set(empty), []

    def describe(self, ids, images, prompt):
        self.calls.append(len(ids))
        if self.bad & set(ids):
            raise RuntimeError("boom")
        return [
            [] if i in self.empty else [f"1. {i} {prompt} 2. shape {im.shape[0]}"]
            for i, im in zip(ids, images, strict=True)
        ]


def _batch(n: int, load_errors: dict[int, str] | None = None) -> dict:
    images = np.empty(n, dtype=object)
    images[:] = [np.zeros((k + 2, 3, 3), np.uint8) for k in range(n)]
    errors = [(load_errors or {}).get(k, "") for k in range(n)]
    return {
        "id": np.array([f"img{k}" for k in range(n)]),
        "label": np.array(["c"] * n),
        "image": images,
        "error": np.array(errors),
    }


def test_rows_per_prompt_and_numbered_split() -> None:
    cfg = CaptionerConfig(prompts=["p1", "p2"], split_numbered=True)
    out = Captioner(cfg, model=FakeModel())(_batch(2))
    assert out.schema == CAPTION_SCHEMA
    rows = out.to_pylist()
    assert [(r["id"], r["prompt"], r["caption"]) for r in rows] == [
        ("img0", "p1", "img0 p1"),
        ("img0", "p1", "shape 2"),
        ("img0", "p2", "img0 p2"),
        ("img0", "p2", "shape 2"),
        ("img1", "p1", "img1 p1"),
        ("img1", "p1", "shape 3"),
        ("img1", "p2", "img1 p2"),
        ("img1", "p2", "shape 3"),
    ]
    assert {r["model"] for r in rows} == {"fake"} and {r["error"] for r in rows} == {""}


def test_load_errors_and_model_failures_become_single_error_rows() -> None:
    model = FakeModel(bad={"img2"}, empty={"img3"})
    cfg = CaptionerConfig(prompts=["p1", "p2"])
    out = Captioner(cfg, model=model)(_batch(5, load_errors={0: "file not found [x.png]"}))
    by_id: dict[str, list] = {}
    for r in out.to_pylist():
        by_id.setdefault(r["id"], []).append(r)
    assert [r["error"] for r in by_id["img0"]] == ["file not found [x.png]"]
    assert len(by_id["img2"]) == 1 and by_id["img2"][0]["error"].startswith(
        "captioning failed: RuntimeError: boom"
    )
    assert [r["error"] for r in by_id["img3"]] == ["the model returned no description"]
    assert [r["prompt"] for r in by_id["img1"]] == ["p1", "p2"]
    assert [r["prompt"] for r in by_id["img4"]] == ["p1", "p2"]
    # The loaded images went as one batch of 4, failed, then were retried one by one.
    assert model.calls[:5] == [4, 1, 1, 1, 1]


def test_reference_from_column_and_file(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["img0", "img1"], "description": ["a cat", None]}), manifest)
    cap = Captioner(CaptionerConfig(), manifest_path=str(manifest))
    rows = cap(_batch(2)).to_pylist()
    assert rows[0]["caption"] == "a cat" and rows[0]["model"] == "reference"
    assert "no reference description for id 'img1'" in rows[1]["error"]

    listing = tmp_path / "refs.csv"
    listing.write_text("id,caption\nimg0,first\nimg0,second\nimg1,third\n")
    model = ReferenceCaptionModel(ReferenceConfig(file=str(listing)), manifest_path="")
    assert model.describe(["img0", "img1"], [None, None], "any") == [["first", "second"], ["third"]]
    with pytest.raises(ValueError, match="no column 'nope' for reference descriptions"):
        ReferenceCaptionModel(ReferenceConfig(column="nope"), manifest_path=str(manifest))


def test_block_rows_balance_overhead_and_spread() -> None:
    from core.captioning.stage import plan_block_rows

    # Long job: the configured number of batches per block.
    assert plan_block_rows(10_000, 8, 8, 4) == 64
    # Short job: blocks shrink so that each of 2 actors gets two blocks ...
    assert plan_block_rows(100, 8, 8, 2) == 25
    # ... but never below one batch.
    assert plan_block_rows(10, 8, 8, 4) == 8
    assert plan_block_rows(0, 8, 8, 1) == 8


# --------------------------------------------------------------------------------------------
# Decoding settings
# --------------------------------------------------------------------------------------------


def test_greedy_kwargs_are_the_old_ones_and_sampling_is_the_official_demo() -> None:
    # Greedy passes exactly what it always did: no sampling knob, no repetition penalty.
    assert GenerationSettings(max_new_tokens=7, num_beams=2).generate_kwargs() == {
        "max_new_tokens": 7,
        "num_beams": 2,
        "do_sample": False,
        "use_cache": True,  # the KV cache, whatever the checkpoint's own configs say
    }
    rp = GenerationSettings(repetition_penalty=1.05).generate_kwargs()
    assert rp["repetition_penalty"] == 1.05 and rp["do_sample"] is False
    # MiniGPT-4's Chat.answer_prepare: do_sample, top_p 0.9, temperature 1.0, num_beams 1,
    # repetition_penalty 1.05, min_length 1, max_new_tokens 300; top_k is transformers' 50.
    official = GenerationSettings(
        max_new_tokens=300, decoding="sample", repetition_penalty=1.05
    ).generate_kwargs()
    assert official == {
        "max_new_tokens": 300,
        "num_beams": 1,
        "do_sample": True,
        "top_p": 0.9,
        "top_k": 50,
        "temperature": 1.0,
        "repetition_penalty": 1.05,
        "min_new_tokens": 1,
        "use_cache": True,
    }


def test_row_seed_depends_on_seed_id_and_prompt_only() -> None:
    base = row_seed(0, "cat/1.png", "Describe.")
    assert base == row_seed(0, "cat/1.png", "Describe.")
    others = {
        row_seed(1, "cat/1.png", "Describe."),
        row_seed(0, "cat/2.png", "Describe."),
        row_seed(0, "cat/1.png", "Describe it."),
    }
    assert base not in others and len(others) == 3
    assert all(0 <= s < 2**63 for s in others | {base})
    # A fixed value: a hash of the text, the same in every process (PYTHONHASHSEED plays no part).
    digest = hashlib.sha256(b"0\x00cat/1.png\x00Describe.").digest()
    assert base == int.from_bytes(digest[:8], "little") & (2**63 - 1)


def test_generate_rows_batches_greedy_and_seeds_each_sampled_row() -> None:
    calls: list[list[int]] = []

    def fake(rows: list[int]) -> list[str]:
        calls.append(rows)
        return [f"{torch.randint(0, 10**9, ()).item()}" for _ in rows]

    cpu = torch.device("cpu")
    greedy = GenerationSettings()
    assert len(generate_rows(["a", "b", "c"], ["p"] * 3, greedy, cpu, fake)) == 3
    assert calls == [[0, 1, 2]]
    calls.clear()
    sample = GenerationSettings(decoding="sample", seed=4)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    abc = generate_rows(["a", "b", "c"], ["p"] * 3, sample, cpu, fake)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is left alone
    assert calls == [[0], [1], [2]]
    # Row "b" draws the same alone, first, or between other ids.
    assert generate_rows(["b"], ["p"], sample, cpu, fake) == [abc[1]]
    assert generate_rows(["c", "b"], ["p"] * 2, sample, cpu, fake) == [abc[2], abc[1]]
    assert generate_rows(["b"], ["q"], sample, cpu, fake) != [abc[1]]


def test_decoding_settings_reach_the_backend_and_are_validated() -> None:
    cfg = load_config(
        CaptionerConfig,
        None,
        ["decoding=sample", "top_p=0.8", "temperature=0.7", "repetition_penalty=1.1", "seed=5"],
    )
    model = build_caption_model(
        dataclasses.replace(cfg, backend="hf_vlm", hf_vlm=HFVLMConfig(tiny=True)), device="cpu"
    )
    assert model.generation == GenerationSettings(
        max_new_tokens=64,
        decoding="sample",
        top_p=0.8,
        temperature=0.7,
        repetition_penalty=1.1,
        seed=5,
    )
    for bad in ("top_p=0", "top_p=1.5", "temperature=0", "top_k=-1", "repetition_penalty=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(CaptionerConfig, None, [bad])
    with pytest.raises(ConfigError, match="decoding"):
        load_config(CaptionerConfig, None, ["decoding=beam"])


@pytest.mark.parametrize(
    ("path", "section"),
    [
        ("caption_minigpt4.yaml", "captioner"),
        ("captioner/minigpt4_vicuna7b.yaml", ""),
    ],
)
def test_minigpt4_presets_sample_as_the_official_demo(path: str, section: str) -> None:
    """The paper captions with MiniGPT-4's demo, which samples: its presets do too."""
    config_dir = Path(__file__).resolve().parents[1] / "ray_jobs" / "configs"
    if section:
        cfg = load_config(CaptionJobConfig, config_dir / path).captioner
    else:
        cfg = load_config(CaptionerConfig, config_dir / path)
    official = (cfg.decoding, cfg.top_p, cfg.top_k, cfg.temperature, cfg.repetition_penalty)
    assert official == ("sample", 0.9, 50, 1.0, 1.05)
    assert (cfg.num_beams, cfg.max_new_tokens) == (1, 300)


@pytest.mark.parametrize("path", ["caption_minigpt4_tiny.yaml", "caption_demo.yaml"])
def test_tiny_and_demo_presets_stay_greedy(path: str) -> None:
    config_dir = Path(__file__).resolve().parents[1] / "ray_jobs" / "configs"
    assert load_config(CaptionJobConfig, config_dir / path).captioner.decoding == "greedy"


def test_rows_sorted_by_prompt_length_come_back_in_their_order() -> None:
    """Greedy rows with prompts of different lengths: one generate per length, shortest first,
    no row padded; every answer lands on its own row."""
    calls: list[list[int]] = []
    prompts = ["a longer prompt", "short", "a longer prompt", "mid one", "short"]
    lengths = [len(p.split()) for p in prompts]

    def fake(rows: list[int]) -> list[str]:
        calls.append(rows)
        assert len({lengths[i] for i in rows}) == 1  # one length per call: nothing to pad
        return [f"answer to row {i}" for i in rows]

    cpu = torch.device("cpu")
    ids = [str(i) for i in range(5)]
    out = generate_rows(ids, prompts, GenerationSettings(), cpu, fake, lengths=lengths)
    assert out == [f"answer to row {i}" for i in range(5)]
    assert calls == [[1, 4], [3], [0, 2]]
    calls.clear()
    one_length = generate_by_length([7, 7, 7], lambda rows: calls.append(rows) or ["x"] * 3)
    assert one_length == ["x"] * 3 and calls == [[0, 1, 2]]  # one length: one call, all rows
    with pytest.raises(ValueError, match="prompt lengths"):
        generate_rows(ids, prompts, GenerationSettings(), cpu, fake, lengths=[1])
