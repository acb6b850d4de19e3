"""Regularized training on Ray Train: distributed equivalence, bad images skipped, outputs."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from _background import Background
from _data_plan import expected_skips

from core.config import TrainRegularizedConfig, load_config
from core.data.manifest import read_manifest
from core.text.class_means import ClassMeans, save_class_means
from core.train.methods.regularized import train_regularized

pytestmark = pytest.mark.ray

EPOCHS = 3


@pytest.fixture(scope="module")
def means_file(demo_dataset, tmp_path_factory) -> str:
    """Random unit-norm class means of the tiny CLIP's dimension (32), in manifest class order."""
    classes = sorted(set(read_manifest(demo_dataset).column("label").to_pylist()))
    generator = torch.Generator().manual_seed(0)
    means = torch.nn.functional.normalize(torch.randn(len(classes), 32, generator=generator), dim=1)
    path = str(tmp_path_factory.mktemp("means") / "class_means.safetensors")
    save_class_means(path, ClassMeans(classes, means, [1] * len(classes), prompts=["p"]))
    return path


@pytest.fixture(scope="module")
def with_bad_images(demo_dataset, tmp_path_factory) -> str:
    """The demo manifest plus three training rows whose images cannot be read: a missing file,
    a zero-byte file and a text file. Training skips them, the same way with any worker count."""
    import pyarrow as pa

    from core.data.manifest import write_manifest

    folder = tmp_path_factory.mktemp("bad")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    rows = read_manifest(demo_dataset).to_pylist()
    good = next(r for r in rows if r["split"] == "train")
    for name in ("missing.png", "empty.png", "notes.png"):
        rows.append({**good, "id": f"bad/{name}", "path": str(folder / name)})
    return write_manifest(pa.Table.from_pylist(rows), str(folder / "manifest.parquet"))


BAD_REASONS = {"missing.png": "file not found", "empty.png": "empty file", "notes.png": "not a"}


def _assert_skipped_the_bad_images(run, manifest: str) -> None:
    """Each epoch skipped exactly the unreadable images it drew, and the run lists all three."""
    from core.train.image_data import load_splits

    num_train = len(load_splits(manifest)[1]["train"])
    assert [h["skipped_images"] for h in run.history] == expected_skips(num_train, 3, 8, EPOCHS)
    listed = {Path(b["path"]).name: b["reason"] for b in run.bad_images if b["split"] == "train"}
    assert listed.keys() == BAD_REASONS.keys()
    for name, start in BAD_REASONS.items():
        assert listed[name].startswith(start), listed[name]
    saved = json.loads(Path(run.bad_images_path).read_text())["skipped"]
    assert sorted(b["path"] for b in saved) == sorted(b["path"] for b in run.bad_images)


def _config(storage: Path, manifest: str, means: str, *overrides: str) -> TrainRegularizedConfig:
    return load_config(
        TrainRegularizedConfig,
        None,
        [
            f"storage={storage}",
            f"manifest={manifest}",
            f"class_means={means}",
            f"run.epochs={EPOCHS}",
            "run.batch_size=8",
            "alpha=0.5",
            "optim.encoder_lr=0.001",
            "optim.head_lr=0.01",
            "optim.warmup_epochs=0.5",
            "run.max_bad_images=3",  # the three unreadable images of with_bad_images
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def one_worker(ray_local, with_bad_images, means_file, tmp_path_factory, two_workers_started):
    """Run with a RELATIVE storage root and the default class-means path under it, as the
    demo does: Train workers run in their own folder, so the driver must resolve both."""
    root = tmp_path_factory.mktemp("w1")
    shutil.copy(means_file, root / "class_means.safetensors")
    cwd = os.getcwd()
    os.chdir(root.parent)
    try:
        cfg = _config(Path(root.name), with_bad_images, "", "name=w1")
        summary = train_regularized(cfg)
    finally:
        os.chdir(cwd)
    return summary.runs[0]


def test_one_worker_run_writes_every_epoch_and_a_loadable_checkpoint(one_worker) -> None:
    history = one_worker.history
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    keys = {"train_ce", "train_reg", "train_acc", "val_acc", "test_acc", "train_loss"}
    assert keys <= set(history[0])
    for h in history:
        assert math.isclose(h["train_loss"], h["train_ce"] + 0.5 * h["train_reg"], rel_tol=1e-9)
    # The regularizer pulls the embeddings toward the class means.
    assert history[-1]["train_reg"] < history[0]["train_reg"]
    lines = (Path(one_worker.run_dir) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(EPOCHS))
    from core.models.clip_classifier import load_classifier

    model, meta, _ = load_classifier(one_worker.best_checkpoint)
    assert meta["alpha"] == 0.5 and len(meta["classes"]) == 8
    assert model.head.out_features == 8


@pytest.fixture(scope="module")
def two_workers_started(ray_local, with_bad_images, means_file, tmp_path_factory):
    """Two workers, started in the background while the one-worker run trains. (A worker killed
    mid-run and the group resumed from its checkpoint is the engine's, not the method's: the
    CLIP-Decoder module tests it, and the pipeline module kills and reruns this method's job.)"""
    cfg = _config(
        tmp_path_factory.mktemp("w2"),
        with_bad_images,
        means_file,
        "name=w2",
        "run.num_workers=2",
    )
    return Background(train_regularized, cfg)


@pytest.fixture(scope="module")
def two_workers(two_workers_started):
    return two_workers_started.result().runs[0]


def test_two_workers_reach_the_one_worker_loss(one_worker, two_workers, with_bad_images) -> None:
    """Same global batch (8 = 2 x 4) and seed: the same global batches each step, gradients
    averaged by DDP, so every epoch's loss matches up to float summation order (1e-5), and the
    three unreadable images skipped in both; each epoch written once."""
    two = two_workers.history
    assert [h["epoch"] for h in two] == list(range(EPOCHS))
    lines = (Path(two_workers.run_dir) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(EPOCHS))
    _assert_skipped_the_bad_images(one_worker, with_bad_images)
    _assert_skipped_the_bad_images(two_workers, with_bad_images)
    for a, b in zip(one_worker.history, two, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["train_acc"] == b["train_acc"]
        assert a["test_acc"] == b["test_acc"]


def test_means_for_other_classes_are_refused(ray_local, demo_dataset, tmp_path) -> None:
    path = str(tmp_path / "other.safetensors")
    save_class_means(path, ClassMeans(["a", "b"], torch.zeros(2, 32), [1, 1], prompts=["p"]))
    with pytest.raises(ValueError, match="do not match the manifest's classes"):
        train_regularized(_config(tmp_path, demo_dataset, path))


def test_means_of_another_width_are_refused_before_any_worker(demo_dataset, tmp_path) -> None:
    """Means built with another CLIP (here 16 wide, tiny-vit embeds in 32) stop the job on the
    driver: a worker's error would be retried by Ray Train to the same failure."""
    classes = sorted(set(read_manifest(demo_dataset).column("label").to_pylist()))
    path = str(tmp_path / "narrow.safetensors")
    save_class_means(path, ClassMeans(classes, torch.zeros(len(classes), 16), [1] * 8, ["p"]))
    with pytest.raises(ValueError, match=r"dimension 16 but tiny-vit embeds images in 32"):
        train_regularized(_config(tmp_path, demo_dataset, path))


def test_prediction_reproduces_the_checkpoint_test_accuracy(one_worker, demo_dataset, tmp_path):
    """The predict job on the test split gives exactly the test accuracy the trainer reported
    for that checkpoint, with a broken test image among them: it becomes an error row, left out
    of the accuracy, and the rest is predicted."""
    import pyarrow as pa

    from core.config import PredictJobConfig
    from core.data.manifest import write_manifest
    from core.predict import run_prediction

    checkpoint = one_worker.best_checkpoint
    meta = json.loads((Path(checkpoint) / "meta.json").read_text())
    rows = read_manifest(demo_dataset).to_pylist()
    test_images = sum(r["split"] == "test" for r in rows)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    rows.append({**rows[0], "id": "broken.png", "path": str(broken), "split": "test"})
    manifest = write_manifest(pa.Table.from_pylist(rows), str(tmp_path / "manifest.parquet"))
    cfg = load_config(
        PredictJobConfig,
        None,
        [f"checkpoint={one_worker.run_dir}", f"manifest={manifest}", "batch_size=8"],
    )
    cfg.checkpoint, cfg.output = checkpoint, str(tmp_path / "pred")
    summary = run_prediction(cfg)
    assert summary.failed == 1 and summary.images == test_images
    assert summary.accuracy == pytest.approx(meta["metrics"]["test_acc"], abs=1e-12)
    report = json.loads(Path(summary.accuracy_path).read_text())
    per_class = report["per_class"]
    correct = sum(round(c["accuracy"] * c["images"]) for c in per_class.values())
    assert correct / report["images"] == pytest.approx(report["accuracy"])

    table = pa.parquet.read_table(summary.output).to_pylist()
    bad = [r for r in table if r["id"] == "broken.png"]
    assert bad[0]["error"].startswith("not a recognised image format") and not bad[0]["predicted"]
    good = [r for r in table if not r["error"]]
    assert len(good) == test_images
    assert all(
        len(r["top_classes"]) == 5 and r["top_probs"] == sorted(r["top_probs"], reverse=True)
        for r in good
    )
