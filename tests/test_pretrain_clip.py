"""Contrastive CLIP pretraining (``pretrain_clip``): its loss against open_clip's, its data, the
demo world it learns from, the engine's guarantee that 2 workers train as 1, and its weights
loading through ``clip.pretrained`` in every job's model builder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pyarrow as pa
import pytest
import torch
from _background import Background
from safetensors.torch import load_file

from core.config import ClipConfig, load_config
from core.data.demo_world import generate_classes, generate_pool, world_classes
from core.data.manifest import read_manifest
from core.train.methods.pretrain_clip import (
    PRETRAINED_FILE,
    PretrainClipConfig,
    _caption_pairs,
    _masked_ce,
)

EPOCHS = 2


def _features(n: int, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    return image, text


def _loss(image: torch.Tensor, text: torch.Tensor, scale: float, keep: torch.Tensor):
    per_image, per_text = open_clip.ClipLoss().get_logits(image, text, torch.tensor(scale))
    labels = torch.arange(len(image))
    return (_masked_ce(per_image, labels, keep) + _masked_ce(per_text, labels, keep)) / 2


def test_with_every_pair_valid_the_loss_is_open_clips() -> None:
    image, text = _features(6)
    ours = _loss(image, text, 10.0, torch.ones(6, dtype=torch.bool))
    theirs = open_clip.ClipLoss()(image, text, torch.tensor(10.0))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


def test_an_unreadable_pair_takes_part_in_no_row_and_no_column() -> None:
    """Leaving pair 2 out equals open_clip's loss on the five other pairs, computed by hand."""
    image, text = _features(6, seed=1)
    keep = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
    ours = _loss(image, text, 5.0, keep)
    rows = keep.nonzero().squeeze(1)
    logits = 5.0 * image[rows] @ text[rows].T
    labels = torch.arange(len(rows))
    by_hand = (
        -torch.log_softmax(logits, 1)[labels, labels].mean()
        - torch.log_softmax(logits.T, 1)[labels, labels].mean()
    ) / 2
    assert ours.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_world_classes_are_stated_by_their_descriptions_and_the_pool_is_apart(tmp_path) -> None:
    classes = read_manifest(generate_classes(str(tmp_path / "c"), images_per_class=4, seed=3))
    pool = read_manifest(generate_pool(str(tmp_path / "p"), pairs=16, val_pairs=8, seed=3))
    assert sorted(set(classes.column("label").to_pylist())) == sorted(world_classes())
    assert len(world_classes()) == 8
    for label, text in zip(
        classes.column("label").to_pylist(), classes.column("description").to_pylist(), strict=True
    ):
        size, colour = label.split("_")
        assert text.startswith(f"a {size} {colour} "), (label, text)
    assert pool.column("split").to_pylist() == ["train"] * 16 + ["val"] * 8
    # Disjoint random streams: no pool image repeats a classification image.
    digest = {Path(p).read_bytes() for p in classes.column("path").to_pylist()}
    assert not digest & {Path(p).read_bytes() for p in pool.column("path").to_pylist()}
    # Drawn the same way twice from the same seed.
    again = read_manifest(generate_pool(str(tmp_path / "q"), pairs=16, val_pairs=8, seed=3))
    assert again.column("description").to_pylist() == pool.column("description").to_pylist()


def test_captions_become_pairs_and_errors_are_left_out(tmp_path) -> None:
    manifest = pa.table(
        {
            "id": ["a", "b", "c"],
            "path": ["/x/a.png", "/x/b.png", "/x/c.png"],
            "label": ["l", "l", "m"],
            "split": ["train", "val", "train"],
        }
    )
    captions = tmp_path / "captions.parquet"
    pa.parquet.write_table(
        pa.table(
            {
                "id": ["c", "a", "a", "b"],
                "caption": ["three", "one", "uno", ""],
                "error": ["", "", "", "decode failed"],
            }
        ),
        captions,
    )
    pairs = _caption_pairs(str(captions), manifest)
    assert pairs.column("text").to_pylist() == ["three", "one", "uno"]
    assert pairs.column("path").to_pylist() == ["/x/c.png", "/x/a.png", "/x/a.png"]
    assert pairs.column("split").to_pylist() == ["train", "train", "train"]
    pa.parquet.write_table(pa.table({"id": ["zz"], "caption": ["?"]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match=r"other\.parquet: ids not in the manifest"):
        _caption_pairs(str(tmp_path / "other.parquet"), manifest)


def test_a_manifest_without_the_text_column_is_named(tmp_path, demo_dataset) -> None:
    from core.train.methods.pretrain_clip import read_pairs

    cfg = load_config(PretrainClipConfig, None, [f"manifest={demo_dataset}", "text_column=caption"])
    with pytest.raises(ValueError, match=r"text_column: .*has no column 'caption'"):
        read_pairs(cfg)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> str:
    """48 training and 16 held-out pairs at 32 pixels."""
    root = tmp_path_factory.mktemp("pool")
    return generate_pool(str(root), pairs=48, val_pairs=16, image_size=32, seed=0)


def _config(storage: Path, manifest: str, *overrides: str) -> PretrainClipConfig:
    return load_config(
        PretrainClipConfig,
        None,
        [
            f"storage={storage}",
            f"manifest={manifest}",
            f"run.epochs={EPOCHS}",
            "run.batch_size=16",
            "optim.warmup_epochs=0.5",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def two_workers_started(ray_local, pool, tmp_path_factory):
    """Two workers, started in the background while the one-worker run trains. (A killed
    worker resumed from its checkpoint is the engine's, tested in the CLIP-Decoder module.)"""
    from ray_jobs.pretrain_clip import pretrain

    cfg = _config(tmp_path_factory.mktemp("w2"), pool, "name=w2", "run.num_workers=2")
    return Background(pretrain, cfg)


@pytest.fixture(scope="module")
def one_worker(ray_local, pool, tmp_path_factory, two_workers_started):
    from ray_jobs.pretrain_clip import pretrain

    return pretrain(_config(tmp_path_factory.mktemp("w1"), pool, "name=w1"))


@pytest.fixture(scope="module")
def two_workers(two_workers_started):
    return two_workers_started.result()


@pytest.mark.ray
def test_two_workers_train_like_one(one_worker, two_workers) -> None:
    """Same global batch (16 = 2 x 8) and seed, features gathered with their gradients: the same
    global loss every epoch up to float summation order, and the same held-out retrieval."""
    for run in (one_worker, two_workers):
        lines = (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == list(range(EPOCHS))
    for a, b in zip(one_worker.history, two_workers.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["logit_scale"] == pytest.approx(b["logit_scale"], rel=1e-5)
        assert (a["val_i2t"], a["val_t2i"], a["val_pairs"]) == (
            b["val_i2t"],
            b["val_t2i"],
            b["val_pairs"],
        )
    assert one_worker.history[-1]["val_pairs"] == 16
    # The checkpoint's meta.json is strict JSON: no test split, so its retrieval is null.
    best = Path(one_worker.final_metrics["from_checkpoint"])

    def refuse(constant: str) -> None:
        raise AssertionError(f"meta.json holds {constant}")

    meta = json.loads((best / "meta.json").read_text(), parse_constant=refuse)
    assert meta["method"] == "pretrain_clip" and meta["metrics"]["test_i2t"] is None


@pytest.mark.ray
def test_its_weights_load_through_clip_pretrained_in_every_job(one_worker) -> None:
    """The class-means job's text encoder, every classifier (training and prediction) and
    CLIP-Decoder's label queries all build their CLIP from ``clip.pretrained``."""
    from core.models.clip_classifier import build_classifier
    from core.text.encode import TextEncoder
    from core.text.label_prompts import embed_label_prompts
    from core.train.registry import get_method

    path = one_worker.final_metrics["clip_pretrained"]
    assert path == str(Path(one_worker.run_dir) / PRETRAINED_FILE)
    saved = load_file(path)
    best = one_worker.final_metrics["from_checkpoint"]
    loaded = get_method("pretrain_clip").load_checkpoint(best)
    assert all(torch.equal(value, saved[k]) for k, value in loaded.state_dict().items())
    clip = ClipConfig(model_name="tiny-vit", pretrained=path, seed=123)  # seed: ignored

    classifier, _ = build_classifier(clip, num_classes=3)
    visual = {k.removeprefix("visual."): v for k, v in saved.items() if k.startswith("visual.")}
    for name, value in classifier.encoder.state_dict().items():
        assert torch.equal(value, visual[name]), name

    encoder = TextEncoder(clip, device="cpu")
    text_keys = [k for k in saved if not k.startswith("visual.")]
    state = encoder.model.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in text_keys)

    # The same prompts through a model built from the saved state by hand.
    from core.models.open_clip_models import build_clip

    reference = build_clip("tiny-vit", seed=7)
    reference.model.load_state_dict(saved)
    prompts = ["a small red circle on a beige background", "a large blue star"]
    expected = reference.model.encode_text(reference.tokenizer(prompts)).detach().numpy()
    assert np.allclose(encoder(prompts), expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    labels = embed_label_prompts(build_clip("tiny-vit", path), None, ["star"], ["a {label}."])
    by_hand = reference.model.encode_text(reference.tokenizer(["a star."])).detach()
    by_hand = torch.nn.functional.normalize(by_hand, dim=-1)
    assert torch.allclose(labels.reshape(by_hand.shape).float(), by_hand, atol=1e-5)


def test_a_finished_run_started_again_asks_for_no_stream(monkeypatch) -> None:
    """Rerunning a finished run (a demo or pipeline rerun) resumes at epoch == epochs: the
    worker must not ask Ray Train for a stream that was never planned."""
    import ray.train

    from core.train.loop_parts import train_epochs

    def no_stream(name: str):
        raise AssertionError(f"asked for {name}")

    monkeypatch.setattr(ray.train, "get_dataset_shard", no_stream)
    assert list(train_epochs(0, 3, 3, 4, 2)) == []


def test_the_check_at_start_reads_the_pairs_before_ray(demo_dataset) -> None:
    """A wrong text column fails in the job's check, before Ray starts, naming the key."""
    from core.check.start import check_at_start

    good = load_config(PretrainClipConfig, None, [f"manifest={demo_dataset}"])
    assert check_at_start(good, "train", "pretrain_clip").last_line.startswith("check: ok")
    bad = load_config(PretrainClipConfig, None, [f"manifest={demo_dataset}", "text_column=nope"])
    with pytest.raises(ValueError, match=r"text_column: .*has no column 'nope'"):
        check_at_start(bad, "train", "pretrain_clip")
