"""Class means: numbers against numpy, per-prompt means, loud errors, the job on the demo data.

Expected values come from embeddings computed here straight from the open_clip model (tokenizer
+ ``encode_text``), averaged with numpy, never from the code under test.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from _tolerance import assert_close_rel

from core import storage
from core.captioning.captioner import CAPTION_SCHEMA
from core.config import CaptionJobConfig, ClassMeansJobConfig, ClipConfig, load_config
from core.data.manifest import read_manifest, write_manifest
from core.models.open_clip_models import build_clip
from core.text.class_means import (
    ClassMeans,
    compute_class_means,
    load_class_means,
    save_class_means,
)
from core.text.encode import ClassSumsMapper, TextEncoder

PROMPTS = ["Describe the shape.", "What colour is it?"]
CLASSES = ["bird", "cat", "dog"]
# Both sides embed the same texts with the same float32 model, batched differently: they agree to
# float32 rounding (~1e-7 relative to the largest entry); 1e-5 relative leaves 100x to spare,
# while a caption counted wrongly moves a mean by a good fraction of its size.
REL = 1e-5


@pytest.fixture(scope="module")
def embed():
    """texts -> float64 [N, D], straight from the tiny open_clip model (seed 0, as ClipConfig)."""
    bundle = build_clip("tiny-vit", "", 0)
    model = bundle.model.eval()

    def run(texts: list[str], normalize: bool) -> np.ndarray:
        with torch.no_grad():
            out = model.encode_text(bundle.tokenizer(texts)).double().numpy()
        if normalize:
            out = out / np.linalg.norm(out, axis=1, keepdims=True)
        return out

    return run


def _manifest(root: Path, extra: list[dict] = ()) -> str:
    """3 classes x 3 train images, plus 1 val image per class (its captions must not count)."""
    rows = []
    for label in CLASSES:
        for i in range(3):
            rows.append({"id": f"{label}/{i}.png", "label": label, "split": "train"})
        rows.append({"id": f"{label}/val.png", "label": label, "split": "val"})
    rows += list(extra)
    for r in rows:
        r["path"] = str(root / "images" / r["id"])
    return write_manifest(pa.Table.from_pylist(rows), str(root / "manifest.parquet"))


def _caption_rows(prompts: list[str], with_noise: bool = True) -> list[dict]:
    """Varied captions per (image, prompt); uneven counts so means are not all equal-weighted."""
    rows = []
    for c, label in enumerate(CLASSES):
        for i in range(3):
            for p, prompt in enumerate(prompts):
                for j in range(1 + (i + p + c) % 3):
                    text = f"a {['small', 'big', 'odd'][j]} {label} number {i} seen by prompt {p}"
                    rows.append(_row(f"{label}/{i}.png", label, prompt, text))
        if with_noise:
            rows.append(_row(f"{label}/val.png", label, prompts[0], f"a validation {label}"))
            rows.append(_row(f"{label}/0.png", label, prompts[0], "", error="decode failed"))
    return rows


def _row(image_id: str, label: str, prompt: str, caption: str, error: str = "") -> dict:
    return {
        "id": image_id,
        "label": label,
        "prompt": prompt,
        "caption": caption,
        "model": "test",
        "error": error,
    }


def _write_captions(folder: Path, rows: list[dict]) -> str:
    storage.write_parquet(
        pa.Table.from_pylist(rows, schema=CAPTION_SCHEMA), str(folder / "part-0.parquet")
    )
    return str(folder)


def _cfg(root: Path, *overrides: str) -> ClassMeansJobConfig:
    return load_config(
        ClassMeansJobConfig,
        None,
        [f"storage={root}", f"manifest={root / 'manifest.parquet'}", *overrides],
    )


def _expected_means(rows: list[dict], embed, normalize: bool, prompt: str = "") -> np.ndarray:
    used = [r for r in rows if not r["error"] and not r["id"].endswith("val.png")]
    if prompt:
        used = [r for r in used if r["prompt"] == prompt]
    emb = embed([r["caption"] for r in used], normalize)
    labels = np.array([r["label"] for r in used])
    return np.stack([emb[labels == c].mean(axis=0) for c in CLASSES])


@pytest.mark.ray
def test_normalized_means_match_numpy_overall_and_per_prompt(ray_local, tmp_path, embed) -> None:
    """normalize=true here; the demo-dataset job below checks normalize=false against numpy."""
    normalize = True
    _manifest(tmp_path)
    rows = _caption_rows(PROMPTS)
    _write_captions(tmp_path / "captions", rows)
    cfg = _cfg(tmp_path, "normalize=true", "batch_size=4")
    result = compute_class_means(cfg)

    path = str(tmp_path / "class_means.safetensors")
    assert result.output == path
    overall = load_class_means(path)
    assert overall.classes == CLASSES and overall.prompts == sorted(PROMPTS)
    assert overall.normalize is normalize and overall.means.dtype == torch.float32
    assert_close_rel(overall.means, _expected_means(rows, embed, normalize), rel=REL)
    train = [r for r in rows if not r["error"] and not r["id"].endswith("val.png")]
    assert overall.counts == [sum(r["label"] == c for r in train) for c in CLASSES]
    for prompt in PROMPTS:
        one = load_class_means(path, prompt)
        assert one.prompt == prompt and one.classes == CLASSES
        expected = _expected_means(rows, embed, normalize, prompt)
        assert_close_rel(one.means, expected, rel=REL, what=prompt)
        assert one.counts == [
            sum(r["label"] == c and r["prompt"] == prompt for r in train) for c in CLASSES
        ]
    # Averaged unit vectors, not renormalised: norms at most 1 (up to float32 rounding, ~1e-7),
    # below 1 when captions differ.
    norms = overall.means.norm(dim=1)
    assert torch.all(norms <= 1 + 1e-5) and torch.all(norms < 0.9999)

    summary = json.loads((tmp_path / "class_means.json").read_text())
    assert summary["captions_used"] == len(train)
    assert summary["skipped_by_reason"] == {"error": 3, "outside_splits": 3, "blank": 0}
    assert summary["captions_per_class"] == dict(zip(CLASSES, overall.counts, strict=True))
    assert set(summary["captions_per_class_per_prompt"]) == set(PROMPTS)


def test_class_without_captions_is_an_error_and_nothing_is_written(tmp_path) -> None:
    extra = [{"id": "eel/0.png", "label": "eel", "split": "train"}]
    extra.append({"id": "fox/0.png", "label": "fox", "split": "test"})
    _manifest(tmp_path, extra)
    _write_captions(tmp_path / "captions", _caption_rows(PROMPTS))
    with pytest.raises(ValueError, match=r"no usable captions for classes \['eel', 'fox'\]"):
        compute_class_means(_cfg(tmp_path))
    assert not (tmp_path / "class_means.safetensors").exists()
    assert not (tmp_path / "class_means.json").exists()


def test_unknown_caption_label_is_an_error(tmp_path) -> None:
    _manifest(tmp_path)
    rows = _caption_rows(PROMPTS[:1])
    rows.append(_row("cat/2.png", "zebra", PROMPTS[0], "a striped horse"))
    _write_captions(tmp_path / "captions", rows)
    with pytest.raises(ValueError, match=r"not among the manifest's classes: \['zebra'\].*cat/2"):
        compute_class_means(_cfg(tmp_path))
    assert not (tmp_path / "class_means.safetensors").exists()


def test_prompt_missing_a_class_is_an_error(tmp_path) -> None:
    _manifest(tmp_path)
    rows = [r for r in _caption_rows(PROMPTS) if (r["prompt"], r["label"]) != (PROMPTS[1], "dog")]
    _write_captions(tmp_path / "captions", rows)
    with pytest.raises(ValueError, match=r"prompt 'What colour is it\?' has no .*\['dog'\]"):
        compute_class_means(_cfg(tmp_path))
    assert not (tmp_path / "class_means.safetensors").exists()


def test_output_must_be_safetensors(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"output: .*means\.npy.* must end with \.safetensors"):
        compute_class_means(_cfg(tmp_path, f"output={tmp_path / 'means.npy'}"))


def test_save_load_round_trip_and_prompt_errors(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    prompts = ["p one", "p two"]
    tables = [torch.randn(3, 5, generator=gen) for _ in range(3)]

    def cm(t: torch.Tensor, counts: list[int], prompt: str) -> ClassMeans:
        return ClassMeans(CLASSES, t, counts, prompt, prompts, True, "tiny-vit", "")

    uri = f"file://{tmp_path}/sub/means.safetensors"  # through a pyarrow filesystem URI
    save_class_means(
        uri,
        cm(tables[0], [3, 4, 5], ""),
        [cm(tables[1], [1, 2, 3], "p one"), cm(tables[2], [2, 2, 2], "p two")],
    )
    loaded = load_class_means(uri)
    assert torch.equal(loaded.means, tables[0]) and loaded.counts == [3, 4, 5]
    second = load_class_means(str(tmp_path / "sub" / "means.safetensors"), "p two")
    assert torch.equal(second.means, tables[2]) and second.counts == [2, 2, 2]
    assert second.prompt == "p two" and second.prompts == prompts
    with pytest.raises(ValueError, match=r"'p three'.*available prompts: \[\"p one\", \"p two\"\]"):
        load_class_means(uri, "p three")
    missing = str(tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match=r"absent\.safetensors"):
        load_class_means(missing)


def test_mapper_emits_one_row_per_prompt_and_label(embed) -> None:
    """Streaming: 14 captions in, one row per (prompt, label) present out, sums not rows."""
    encoder = TextEncoder(ClipConfig())
    mapper = ClassSumsMapper({"model_name": "tiny-vit"}, True, CLASSES, encoder=encoder)
    keys = [(PROMPTS[i % 2], ["cat", "dog"][i % 3 == 0]) for i in range(14)]
    captions = [f"caption {i} of a {label}" for i, (_, label) in enumerate(keys)]
    batch = pa.table(
        {
            "label": [k[1] for k in keys],
            "prompt": [k[0] for k in keys],
            "caption": captions,
        }
    )
    out = mapper(batch)
    assert out.num_rows == len(set(keys)) == 4
    emb = embed(captions, True)
    dim = emb.shape[1]
    sums = out.column("sum").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    got = {
        (p, lab): (n, s)
        for p, lab, n, s in zip(
            out.column("prompt").to_pylist(),
            out.column("label").to_pylist(),
            out.column("count").to_pylist(),
            sums,
            strict=True,
        )
    }
    for key, n in Counter(keys).items():
        rows = [i for i, k in enumerate(keys) if k == key]
        assert got[key][0] == n
        assert_close_rel(got[key][1], emb[rows].sum(axis=0), rel=REL, what=str(key))
    numpy_batch = {name: np.asarray(batch.column(name).to_pylist()) for name in batch.column_names}
    assert mapper(numpy_batch).equals(out)
    assert mapper(batch.slice(0, 0)).num_rows == 0


@pytest.mark.ray
def test_job_on_demo_dataset_counts_train_captions(
    ray_local, demo_dataset, tmp_path, embed
) -> None:
    """Caption every split, then average the train split's captions with the job's default
    (raw embeddings, not normalised)."""
    from ray_jobs import caption as caption_job
    from ray_jobs import class_descriptions

    caption_job.caption(
        load_config(
            CaptionJobConfig,
            None,
            [f"storage={tmp_path}", f"manifest={demo_dataset}", "splits=[]"],
        )
    )
    result = class_descriptions.main(
        [
            f"storage={tmp_path}",
            f"manifest={demo_dataset}",
            "batch_size=8",
        ]
    )
    manifest = read_manifest(demo_dataset)
    train_rows = read_manifest(demo_dataset, ["train"])
    train = Counter(train_rows.column("label").to_pylist())
    classes = sorted(set(manifest.column("label").to_pylist()))
    loaded = load_class_means(str(tmp_path / "class_means.safetensors"))
    assert loaded.classes == classes == result.classes
    assert loaded.counts == [train[c] for c in classes]
    assert result.captions_per_class == {c: train[c] for c in classes}
    assert result.skipped_by_reason["outside_splits"] == manifest.num_rows - sum(train.values())
    assert len(loaded.prompts) == 1 and not loaded.normalize

    # Independently: the train images' captions, embedded without normalising, numpy mean.
    captions = storage.read_parquet(str(tmp_path / "captions")).to_pylist()
    train_ids = set(train_rows.column("id").to_pylist())
    used = [r for r in captions if r["id"] in train_ids]
    emb = embed([r["caption"] for r in used], False)
    labels = np.array([r["label"] for r in used])
    expected = np.stack([emb[labels == c].mean(axis=0) for c in classes])
    assert_close_rel(loaded.means, expected, rel=REL)
    assert loaded.means.norm(dim=1).min() > 1.01  # really unnormalised (tiny-CLIP norms ~ 5)
    with pytest.raises(ValueError, match="available prompts"):
        load_class_means(result.output, "no such prompt")


# --------------------------------------------------------------------------------------------
# Both sides of ||x - C[label]||^2 at the same scale
# --------------------------------------------------------------------------------------------


def _demo_sides(demo_dataset: str, normalize: bool, normalize_embedding: bool):
    """(x [N, D], C[label] [N, D], logits) on the demo's train images: class means of their
    descriptions (through the job's mapper) and the tiny classifier's embedding x."""
    from PIL import Image

    from core.models.clip_classifier import build_classifier

    train = read_manifest(demo_dataset, ["train"]).to_pylist()
    classes = sorted({r["label"] for r in train})
    mapper = ClassSumsMapper(ClipConfig(), normalize, classes)
    sums = mapper(
        pa.table(
            {
                "label": [r["label"] for r in train],
                "prompt": [""] * len(train),
                "caption": [r["description"] for r in train],
            }
        )
    ).to_pylist()
    means = {r["label"]: np.asarray(r["sum"]) / r["count"] for r in sums}
    model, bundle = build_classifier(ClipConfig(), len(classes), normalize_embedding)
    images = torch.stack(
        [bundle.eval_transform(Image.open(r["path"]).convert("RGB")) for r in train]
    )
    with torch.no_grad():
        logits, x = model.eval()(images)
    targets = torch.tensor(np.stack([means[r["label"]] for r in train]), dtype=torch.float32)
    return x, targets, logits


def _mean_norm_ratio(x: torch.Tensor, targets: torch.Tensor) -> float:
    return float((x.norm(dim=1) / targets.norm(dim=1)).mean())


def test_default_means_and_x_have_comparable_norms(demo_dataset) -> None:
    """The default (raw text embeddings averaged, raw x) puts both sides of the regularizer at
    one scale: mean ||x|| / ||C[label]|| within [0.5, 2] (tiny CLIP: 0.98). The normalised
    option is consistent with a unit-norm x (1.07); normalised means against the raw x, the old
    default, are several times apart (6.4), which this margin catches."""
    assert ClassMeansJobConfig().normalize is False
    x, targets, logits = _demo_sides(demo_dataset, normalize=False, normalize_embedding=False)
    assert 0.5 <= _mean_norm_ratio(x, targets) <= 2.0

    x_unit, unit_means, logits_unit = _demo_sides(
        demo_dataset, normalize=True, normalize_embedding=True
    )
    assert torch.allclose(x_unit.norm(dim=1), torch.ones(len(x_unit)), atol=1e-5)
    assert torch.all(unit_means.norm(dim=1) <= 1 + 1e-5)
    assert 0.5 <= _mean_norm_ratio(x_unit, unit_means) <= 2.0
    # Normalising x changes only what the regularizer sees, never the logits.
    assert torch.equal(logits_unit, logits)
    assert_close_rel(x_unit, torch.nn.functional.normalize(x, dim=1), rel=1e-6)

    assert _mean_norm_ratio(x, unit_means) > 2.0  # the mismatch the defaults avoid
