"""The captioning job on a local Ray: every image captioned, resume, bad images, partial runs."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from core import storage
from core.captioning.stage import read_captions
from core.config import CaptionJobConfig, load_config
from core.data.manifest import read_manifest, write_manifest
from ray_jobs import caption as caption_job

pytestmark = pytest.mark.ray


def _config(storage_root: Path, manifest: str, *overrides: str) -> CaptionJobConfig:
    return load_config(
        CaptionJobConfig,
        None,
        [
            f"storage={storage_root}",
            f"manifest={manifest}",
            "splits=[]",
            "progress_seconds=0.5",
            *overrides,
        ],
    )


def _all_rows(output: str) -> list[dict]:
    return storage.read_parquet(output).to_pylist()


def test_reference_captions_resume_and_limit(ray_local, demo_dataset, tmp_path) -> None:
    ids = set(read_manifest(demo_dataset).column("id").to_pylist())
    # A first, partial run (as if the job had died) ...
    first = caption_job.caption(_config(tmp_path, demo_dataset, "limit=10", "flush_rows=4"))
    assert (first.captioned, first.skipped, first.failed) == (10, 0, 0)
    # ... and a leftover temporary file from an interrupted write, which must be ignored.
    (tmp_path / "captions" / ".deadbeef.tmp").write_bytes(b"half a parquet file")
    second = caption_job.caption(_config(tmp_path, demo_dataset))
    assert (second.captioned, second.skipped, second.failed) == (len(ids) - 10, 10, 0)
    rows = _all_rows(str(tmp_path / "captions"))
    assert sorted(r["id"] for r in rows) == sorted(ids)  # each image exactly once
    descriptions = dict(
        zip(
            read_manifest(demo_dataset).column("id").to_pylist(),
            read_manifest(demo_dataset).column("description").to_pylist(),
            strict=True,
        )
    )
    assert all(r["caption"] == descriptions[r["id"]] and r["error"] == "" for r in rows)
    third = caption_job.caption(_config(tmp_path, demo_dataset))
    assert (third.captioned, third.skipped, third.failed, third.caption_rows) == (0, len(ids), 0, 0)
    assert len(_all_rows(str(tmp_path / "captions"))) == len(ids)
    assert storage.read_json(str(tmp_path / "captions" / "_summary.json"))["skipped"] == len(ids)


def _with_bad_images(demo_manifest: str, root: Path) -> str:
    """Copy the demo, add 3 corrupt files and 3 odd-but-valid ones; return the new manifest."""
    table = read_manifest(demo_manifest)
    images = root / "images"
    shutil.copytree(Path(table.column("path")[0].as_py()).parents[1], images)
    rows = table.to_pylist()
    for r in rows:
        r["path"] = str(images / r["id"])
    jpeg = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(jpeg, format="JPEG")
    bad = {
        "circle/zero.png": b"",
        "circle/garbage.png": b"this is not an image at all",
        "square/truncated.jpg": jpeg.getvalue()[:100],
    }
    odd = {
        "square/gray.png": Image.new("L", (30, 20), 90),
        "ring/cmyk.jpg": Image.new("CMYK", (30, 20), (0, 120, 120, 0)),
        "star/alpha.png": Image.new("RGBA", (30, 20), (0, 0, 255, 100)),
    }
    for rel, data in bad.items():
        (images / rel).write_bytes(data)
    for rel, image in odd.items():
        image.save(images / rel)
    for rel in [*bad, *odd]:
        rows.append(
            {
                "id": rel,
                "path": str(images / rel),
                "label": rel.split("/")[0],
                "split": "train",
                "description": f"a {rel}",
            }
        )
    return write_manifest(pa.Table.from_pylist(rows), str(root / "manifest.parquet"))


def test_bad_images_become_error_rows(ray_local, demo_dataset, tmp_path) -> None:
    manifest = _with_bad_images(demo_dataset, tmp_path / "data")
    n = read_manifest(manifest).num_rows
    summary = caption_job.caption(_config(tmp_path, manifest))
    assert (summary.captioned, summary.failed) == (n - 3, 3)
    table = storage.read_parquet(str(tmp_path / "captions"))
    errors = table.filter(pc.not_equal(table.column("error"), "")).to_pylist()
    assert sorted(r["id"] for r in errors) == [
        "circle/garbage.png",
        "circle/zero.png",
        "square/truncated.jpg",
    ]
    reasons = {r["id"]: r["error"] for r in errors}
    assert reasons["circle/zero.png"].startswith("empty file")
    assert reasons["circle/garbage.png"].startswith("not a recognised image format")
    assert reasons["square/truncated.jpg"].startswith("corrupt or truncated")
    assert read_captions(str(tmp_path / "captions")).num_rows == n - 3
    # A rerun neither retries the errors nor duplicates anything ...
    again = caption_job.caption(_config(tmp_path, manifest))
    assert (again.captioned, again.failed, again.skipped) == (0, 0, n)
    # ... unless asked to retry them; a file restored in between now captions.
    Image.new("RGB", (10, 10)).save(
        tmp_path / "data" / "images" / "circle" / "zero.png", format="PNG"
    )
    retry = caption_job.caption(_config(tmp_path, manifest, "retry_errors=true"))
    assert (retry.captioned, retry.failed, retry.skipped) == (1, 2, n - 3)


def test_hf_vlm_tiny_through_the_job(ray_local, demo_dataset, tmp_path) -> None:
    summary = caption_job.caption(
        _config(
            tmp_path,
            demo_dataset,
            "captioner=hf_vlm_tiny",
            "captioner.max_new_tokens=4",
            "limit=12",
        )
    )
    assert (summary.captioned, summary.failed) == (12, 0)
    rows = _all_rows(str(tmp_path / "captions"))
    assert {r["model"] for r in rows} == {"llava-tiny"}
    assert all(r["prompt"] == "Describe this image in detail." for r in rows)


def test_missing_manifest_is_a_clear_error(ray_local, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet: no such file"):
        caption_job.caption(_config(tmp_path, str(tmp_path / "nope.parquet")))


def test_minigpt4_tiny_job_bar(ray_local, demo_dataset, tmp_path) -> None:
    """The issue's bar with the tiny MiniGPT-4: all captioned, rerun adds nothing, 3 bad files."""
    manifest = _with_bad_images(demo_dataset, tmp_path / "data")
    n = read_manifest(manifest).num_rows
    overrides = ("captioner=minigpt4_tiny", "captioner.max_new_tokens=3", "captioner.batch_size=8")
    summary = caption_job.caption(_config(tmp_path, manifest, *overrides))
    assert (summary.captioned, summary.failed, summary.skipped) == (n - 3, 3, 0)
    table = storage.read_parquet(str(tmp_path / "captions"))
    assert table.num_rows == n
    assert set(table.column("model").to_pylist()) == {"minigpt4-vicuna-tiny"}
    errors = table.filter(pc.not_equal(table.column("error"), ""))
    assert sorted(errors.column("id").to_pylist()) == [
        "circle/garbage.png",
        "circle/zero.png",
        "square/truncated.jpg",
    ]
    again = caption_job.caption(_config(tmp_path, manifest, *overrides))
    assert (again.captioned, again.failed, again.skipped) == (0, 0, n)
    assert storage.read_parquet(str(tmp_path / "captions")).num_rows == n


def test_several_prompts_give_one_row_per_prompt(ray_local, demo_dataset, tmp_path) -> None:
    prompts = ["Describe the shape.", "What colour is it?"]
    summary = caption_job.caption(
        _config(
            tmp_path,
            demo_dataset,
            "captioner=minigpt4_tiny",
            "captioner.max_new_tokens=2",
            f"captioner.prompts=[{', '.join(repr(p) for p in prompts)}]",
            "limit=6",
        )
    )
    assert summary.captioned == 6
    rows = _all_rows(str(tmp_path / "captions"))
    assert len(rows) == 12
    by_prompt = {p: sorted(r["id"] for r in rows if r["prompt"] == p) for p in prompts}
    assert by_prompt[prompts[0]] == by_prompt[prompts[1]] and len(by_prompt[prompts[0]]) == 6
