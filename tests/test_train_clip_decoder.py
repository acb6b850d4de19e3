"""CLIP-Decoder training on Ray Train: outputs, 2 workers = 1 worker, unseen labels out of the loss.

Two fits in all (worker-group start-up dominates on a small machine), shared by the tests: one
worker, and two workers on a manifest whose unseen labels are flipped, with one worker killed
once mid-epoch 1. Whatever tells the second run from the first (worker count, the unseen labels,
a restart from the epoch-0 checkpoint) must leave the training loss alone. This module is where
the engine's in-run restart is tested for every method: the restart and the checkpoint it
resumes from are the engine's, and this method's state is the largest (BatchNorm statistics,
group BatchNorm across workers, the label embeddings).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from _background import Background
from _data_plan import expected_skips
from _tolerance import assert_close_rel

from core.config import ClipDecoderTrainConfig, load_config
from core.data.manifest import read_manifest, write_manifest
from core.data.multilabel_demo import generate_multilabel_demo
from core.data.nus_wide import LABEL_SPLIT_FILE, LabelSplit
from core.models.clip_decoder import build_clip_decoder
from core.train.group_batch_norm import GroupBatchNorm, sync_batch_norm
from core.train.loop_parts import FAULT_MARKER
from core.train.methods.clip_decoder import (
    FINAL_METRICS_FILE,
    group_loss_weights,
    load_clip_decoder,
    train_clip_decoder,
)
from core.train.multilabel_data import (
    MultiLabelRows,
    backbone_data_config,
    encode_labels,
    load_multilabel_splits,
    multi_hot,
)

pytestmark = pytest.mark.ray

EPOCHS = 3
UNSEEN = ("hexagon", "crescent", "heart", "pentagon", "arrow")  # 5 unseen: top-5 is defined
METRIC_KEYS = ("map", "p3", "r3", "f1_3", "p5", "r5", "f1_5")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("cd-demo")
    return generate_multilabel_demo(str(root), num_images=60, image_size=40, unseen=UNSEEN)


def _config(storage: Path, manifest: str, *overrides: str) -> ClipDecoderTrainConfig:
    return load_config(
        ClipDecoderTrainConfig,
        None,
        [
            f"storage={storage}",
            f"manifest={manifest}",
            f"run.epochs={EPOCHS}",
            "run.batch_size=8",
            "model.image_size=32",
            # Dropout masks depend on which worker draws them; without dropout the two-worker
            # run is the one-worker run up to float summation order.
            "model.dropout=0.0",
            "run.amp=false",
            "optim.encoder_lr=0.001",
            "optim.head_lr=0.001",
            "optim.warmup_epochs=0.5",
            "run.max_bad_images=2",  # the two unreadable images of with_bad_images
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def with_bad_images(demo, tmp_path_factory) -> str:
    """The demo manifest plus two training rows whose images cannot be read (a missing file and
    a text file), with the demo's label lists beside it. Both runs skip them."""
    folder = tmp_path_factory.mktemp("cd-bad")
    (folder / "notes.png").write_text("not an image")
    rows = read_manifest(demo.manifest).to_pylist()
    good = next(r for r in rows if r["split"] == "train")
    for name in ("missing.png", "notes.png"):
        rows.append({**good, "id": f"bad/{name}", "path": str(folder / name)})
    demo.label_split.save(str(folder / LABEL_SPLIT_FILE))
    return write_manifest(pa.Table.from_pylist(rows), str(folder / "manifest.parquet"))


@pytest.fixture(scope="module")
def one_worker(ray_local, with_bad_images, tmp_path_factory, two_workers_started):
    return train_clip_decoder(_config(tmp_path_factory.mktemp("w1"), with_bad_images, "name=w1"))


@pytest.fixture(scope="module")
def two_workers_started(ray_local, demo, with_bad_images, tmp_path_factory):
    """Two workers; every image's unseen labels flipped (present <-> absent), in the training
    split too; the last worker killed once in epoch 1 (the group resumes from the epoch-0
    checkpoint). Started in the background while the one-worker run trains."""
    root = tmp_path_factory.mktemp("flipped")
    table = read_manifest(with_bad_images)
    unseen = set(demo.unseen)
    flipped = [
        [x for x in labels if x not in unseen] + [u for u in demo.unseen if u not in labels]
        for labels in table.column("labels").to_pylist()
    ]
    index = table.column_names.index("labels")
    table = table.set_column(index, "labels", pa.array(flipped, type=pa.list_(pa.string())))
    manifest = write_manifest(table, str(root / "data" / "manifest.parquet"))
    demo.label_split.save(str(root / "data" / LABEL_SPLIT_FILE))
    cfg = _config(
        root,
        manifest,
        "name=flipped",
        "run.num_workers=2",
        "run.fail_at_epoch=1",
        "run.max_failures=1",
    )
    return Background(train_clip_decoder, cfg)


@pytest.fixture(scope="module")
def two_workers_flipped_killed(two_workers_started):
    return two_workers_started.result()


def test_one_worker_writes_each_epoch_once_and_final_metrics(one_worker) -> None:
    run = one_worker
    lines = (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(EPOCHS))
    assert [h["epoch"] for h in run.history] == list(range(EPOCHS))
    for h in run.history:
        assert math.isclose(h["train_loss"], h["train_clip"] + h["train_cls"], rel_tol=1e-9)
        for split in ("val", "test"):
            for setting in ("zsl", "gzsl"):
                assert 0.0 <= h[f"{split}_{setting}_map"] <= 1.0
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    final = json.loads((Path(run.run_dir) / FINAL_METRICS_FILE).read_text())
    assert final["split"] == "test" and final["epoch"] == EPOCHS - 1
    assert (final["num_seen"], final["num_unseen"]) == (7, 5)
    for setting in ("zsl", "gzsl"):
        for key in METRIC_KEYS:
            value = final[f"{setting}_{key}"]
            assert 0.0 <= value <= 1.0, (setting, key, value)
            assert value == run.history[-1][f"test_{setting}_{key}"]
    assert run.checkpoint_metric == "val_zsl_map"
    assert run.best_checkpoint and run.latest_checkpoint


def test_checkpoint_reloads_and_scores_like_the_run(one_worker, demo) -> None:
    """The last checkpoint's model gives the run's final test ZSL mAP, computed independently
    here with sklearn on scores of the unseen labels only."""
    from PIL import Image
    from sklearn.metrics import average_precision_score

    from core.data.images import load_image
    from core.train.multilabel_data import build_multilabel_transforms

    model, meta, embeddings = load_clip_decoder(one_worker.latest_checkpoint)
    assert meta["unseen"] == list(UNSEEN) and embeddings.shape == (12, 32)
    labels, splits = load_multilabel_splits(demo.manifest)
    _, eval_tf = build_multilabel_transforms(model.data_config, 32)
    test = splits["test"]
    images = torch.stack([eval_tf(Image.fromarray(load_image(p))) for p in test.paths])
    with torch.no_grad():
        scores = model(images, embeddings[len(meta["seen"]) :]).logits.numpy()
    targets = test.targets[:, labels.unseen_idx]
    aps = [
        average_precision_score(targets[:, j], scores[:, j])
        for j in range(targets.shape[1])
        if targets[:, j].any()
    ]
    assert float(np.mean(aps)) == pytest.approx(one_worker.final_metrics["zsl_map"], abs=1e-6)


def test_two_workers_reach_the_one_worker_loss(
    one_worker, two_workers_flipped_killed, with_bad_images
) -> None:
    """Same global batch (8 = 2 x 4), seed and data order. BatchNorm statistics are taken over
    both workers and the loss weights make DDP's average the one-worker gradient, so every
    epoch's loss matches up to float summation order (measured: ~1e-7 relative; 1e-5 allowed).
    The unseen labels, flipped in this run, do not enter the loss (flipping them with them in
    would move it by far more than 1e-5; bit for bit in ``test_clip_decoder_model``); they do
    enter the ZSL metrics, which change."""
    two = two_workers_flipped_killed.history
    assert len(two) == EPOCHS
    num_train = len(load_multilabel_splits(with_bad_images)[1]["train"])
    skips = expected_skips(num_train, 2, 8, EPOCHS)
    assert sum(skips) > 0  # the plan draws the unreadable rows
    for run in (one_worker, two_workers_flipped_killed):  # the unreadable images, skipped
        assert [h["skipped_images"] for h in run.history] == skips
        names = sorted(Path(b["path"]).name for b in run.bad_images if b["split"] == "train")
        assert names == ["missing.png", "notes.png"]
    for a, b in zip(one_worker.history, two, strict=True):
        for key in ("train_loss", "train_clip", "train_cls"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["epoch"], key)
    assert [h["test_zsl_map"] for h in two] != [h["test_zsl_map"] for h in one_worker.history]


def test_killed_worker_resumes_from_its_checkpoint(two_workers_flipped_killed) -> None:
    run = two_workers_flipped_killed
    assert (Path(run.run_dir) / FAULT_MARKER).is_file()  # the fault really happened
    assert [h["epoch"] for h in run.history] == list(range(EPOCHS))  # each epoch once


# --------------------------------------------------------------------------------------------
# Pieces, without Ray
# --------------------------------------------------------------------------------------------


def test_driver_data_config_is_the_models() -> None:
    model = build_clip_decoder(32, backbone="tresnet-tiny")
    assert backbone_data_config("tresnet-tiny") == dict(model.data_config)


def test_multi_hot_order_and_unknown_label() -> None:
    split = LabelSplit(("a", "b"), ("c",))
    targets = multi_hot([["c", "a"], [], ["b"]], split, "m.parquet")
    assert targets.dtype == np.float32
    assert targets.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match=r"m.parquet.*row 1 has label 'zebra'"):
        multi_hot([["a"], ["zebra"]], split, "m.parquet")
    # sparse rows made dense for any subset of rows, in any order
    offsets, columns = encode_labels([["c", "a"], [], ["b"]], split, "m.parquet")
    rows = MultiLabelRows(["x", "y", "z"], ["x", "y", "z"], offsets, columns, 3)
    for subset in ([2, 0], [1], [0, 0, 2], []):
        assert rows.dense(subset).tolist() == targets[subset].tolist()
    assert rows.has_positives([2])
    empty = MultiLabelRows([], [], offsets[:1], columns[:0], 3)
    assert not empty.has_positives([0, 1, 2])


def test_group_loss_weights_by_hand() -> None:
    # 2 workers, 3 and 1 images with a positive: worker 0 carries 3/4 of L_clip, worker 1 1/4;
    # DDP halves the sum, so the weights are 2 * alpha * share.
    assert group_loss_weights(0.5, 1.0, "sum", 3, 4, 2) == (0.75, 2.0)
    assert group_loss_weights(0.5, 1.0, "mean", 1, 4, 2) == (0.25, 1.0)
    assert group_loss_weights(0.5, 1.0, "sum", 3, 3, 1) == (0.5, 1.0)


def _bn_net() -> torch.nn.Sequential:
    """Conv -> BatchNormAct2d (ReLU) -> BatchNorm2d, seeded. The BatchNorms get random affine
    parameters: with BatchNorm's default beta = 0 the first one's gamma has no gradient (ReLU is
    homogeneous and the second BatchNorm normalises the scale away), and a comparison of two
    rounding noises checks nothing."""
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), BatchNormAct2d(4), torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        for bn in net[1:]:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return net


def _group_bn_worker(rank: int, world: int, store_path: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    net = sync_batch_norm(_bn_net(), torch.device("cpu"))
    assert isinstance(net[1], GroupBatchNorm) and isinstance(net[2], GroupBatchNorm)
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    local = x[rank * 4 : (rank + 1) * 4].clone().requires_grad_(True)
    weights = torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    # the global loss is a sum over both halves; x world because DDP averages the gradients
    loss = (net(local) * weights[rank * 4 : (rank + 1) * 4]).sum() * world
    loss.backward()
    for p in net.parameters():  # what DDP does with the gradients
        dist.all_reduce(p.grad)
        p.grad /= world
    torch.save(
        {
            "grads": [p.grad for p in net.parameters()],
            "x_grad": local.grad / world,  # undo the x world (inputs are not averaged)
            "buffers": [b.clone() for b in net.buffers()],
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


def test_group_batch_norm_on_cpu_matches_one_process(tmp_path) -> None:
    """torch's SyncBatchNorm refuses CPU tensors; GroupBatchNorm over 2 gloo processes gives the
    gradients and running statistics of plain BatchNorm on the whole batch in one process.

    Tolerances are relative to each layer's largest value: the two sides sum the same float32
    terms in a different order (measured: at most 3e-7 relative), while real errors are far
    larger (each worker's own half-batch statistics: 7e-2 to 4e-1; a biased running variance
    in place of the unbiased one, 1/127 of momentum x variance: over 1e-4 here)."""
    import torch.multiprocessing as mp

    mp.spawn(
        _group_bn_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True
    )
    net = _bn_net()
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    weights = torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    (net(x) * weights).sum().backward()
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    names = [name for name, _ in net.named_parameters()]
    for r, part in enumerate(parts):
        got = dict(zip(names, part["grads"], strict=True))
        for layer, module in enumerate(net):
            # A layer's weight and bias gradients together, on the scale of the larger: the conv
            # bias's gradient is 0 up to rounding (BatchNorm follows), summed from the same terms
            # as the conv weight's, so its rounding is on the weight gradient's scale.
            ref = torch.cat([module.weight.grad.flatten(), module.bias.grad.flatten()])
            out = torch.cat([got[f"{layer}.weight"].flatten(), got[f"{layer}.bias"].flatten()])
            assert_close_rel(out, ref, rel=1e-5, what=f"rank {r}: layer {layer} gradients")
    x_grad = torch.cat([p["x_grad"] for p in parts])
    assert_close_rel(x_grad, x.grad, rel=1e-5, what="input gradient")
    buffers = dict(zip([name for name, _ in net.named_buffers()], parts[0]["buffers"], strict=True))
    for layer in (1, 2):
        # running mean and variance on one scale (~1, the variance's): the running mean is
        # momentum x a batch mean of values centred near 0, far smaller than the values whose
        # sum it rounds
        bn = net[layer]
        ref = torch.cat([bn.running_mean, bn.running_var])
        out = torch.cat([buffers[f"{layer}.running_mean"], buffers[f"{layer}.running_var"]])
        assert_close_rel(out, ref, rel=1e-5, what=f"layer {layer} running statistics")
        assert torch.equal(buffers[f"{layer}.num_batches_tracked"], bn.num_batches_tracked)
