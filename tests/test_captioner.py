"""The batch-to-rows captioner: prompts, numbered lists, error rows, per-image retry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from core.captioning.base import CaptionModel, split_numbered_list
from core.captioning.captioner import CAPTION_SCHEMA, Captioner
from core.captioning.reference import ReferenceCaptionModel
from core.config import CaptionerConfig, ReferenceConfig


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
