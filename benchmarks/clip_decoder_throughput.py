"""Training samples/s of CLIP-Decoder: Ray Train's TorchTrainer (1 worker) vs a plain PyTorch loop.

Same tiny model (TResNet-tiny + zero-shot ML-Decoder, tiny CLIP label embeddings), same multi-label
demo images, batch size, data order, per-image augmentation and torch thread count, measured in
one run. Both sides are timed per epoch: the training steps (data loading included: the
trainer's Ray Data stream decodes and transforms in parallel tasks, the plain loop does it inline)
and the ZSL/GZSL evaluation on val and test after them, as a training run does. Epoch 0 is left
out on both sides as warm-up, so neither pays for process start, imports, the worker group,
model building or the first Ray Data execution. The trainer's numbers are the ``epoch_seconds``
its worker records (the checkpoint after the evaluation is not counted); the training phase
alone (``train_seconds``) is printed too, but the trainer's stream decodes the next epoch's
images while it evaluates, so that phase alone flatters it.

Last line: ``trainer_vs_loop=X`` (steady-state trainer samples/s over plain-loop samples/s).

    python benchmarks/clip_decoder_throughput.py [--images 600] [--epochs 5] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from typing import Any

import numpy as np
import torch

from core.config import ClipDecoderTrainConfig, load_config
from core.data.multilabel_demo import generate_multilabel_demo
from core.models.clip_decoder import seen_label_loss
from core.train.image_data import rank_train_rows, steps_per_epoch
from core.train.methods.clip_decoder import (
    DEMO_UNSEEN,
    build_model,
    compute_label_embeddings,
    score_split,
    zsl_gzsl_metrics,
)
from core.train.multilabel_data import (
    TransformMultiLabelImages,
    backbone_data_config,
    build_multilabel_transforms,
    load_multilabel_splits,
)
from core.train.schedule import build_scheduler


def _eval_batches(decode: TransformMultiLabelImages, num_rows: int, batch: int) -> Any:
    for i in range(0, num_rows, batch):
        chunk = np.arange(i, min(i + batch, num_rows))
        out = decode({"row": chunk, "epoch": np.full(len(chunk), -1)})
        yield {key: torch.from_numpy(value) for key, value in out.items()}


def plain_loop(
    cfg: ClipDecoderTrainConfig, manifest: str, threads: int
) -> tuple[list[float], list[float]]:
    """(train seconds, train + evaluation seconds) per epoch of the same run in one process,
    batches decoded inline."""
    torch.set_num_threads(threads)
    labels, splits = load_multilabel_splits(manifest)
    embeddings = torch.as_tensor(compute_label_embeddings(cfg, labels))
    label_sets = [embeddings[labels.unseen_idx], embeddings]
    evals = [s for s in ("val", "test") if len(splits[s])]
    train_tf, eval_tf = build_multilabel_transforms(
        backbone_data_config(cfg.model.backbone), cfg.model.image_size
    )
    decode = TransformMultiLabelImages(splits["train"], train_tf, cfg.run.seed)
    eval_decode = {s: TransformMultiLabelImages(splits[s], eval_tf, cfg.run.seed) for s in evals}
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg, int(embeddings.shape[1]))
    backbone = {id(p) for p in model.backbone.parameters()}
    optimizer = torch.optim.AdamW(
        [
            {"params": list(model.backbone.parameters()), "lr": cfg.optim.encoder_lr},
            {
                "params": [p for p in model.parameters() if id(p) not in backbone],
                "lr": cfg.optim.head_lr,
            },
        ],
        weight_decay=cfg.optim.weight_decay,
    )
    n = len(splits["train"])
    steps = steps_per_epoch(n, cfg.run.batch_size)
    scheduler = build_scheduler(
        optimizer, round(cfg.optim.warmup_epochs * steps), cfg.run.epochs * steps, 0.0
    )
    seen_idx = labels.seen_idx
    train_seconds, epoch_seconds = [], []
    for epoch in range(cfg.run.epochs):
        start = time.perf_counter()
        model.train()
        rows = rank_train_rows(n, cfg.run.seed, epoch, cfg.run.batch_size, 0, 1)
        for step in range(steps):
            chunk = rows[step * cfg.run.batch_size : (step + 1) * cfg.run.batch_size]
            batch = decode({"row": chunk, "epoch": np.full(len(chunk), epoch)})
            images = torch.from_numpy(batch["image"])
            targets = torch.from_numpy(batch["targets"])
            terms, _ = seen_label_loss(
                model,
                images,
                embeddings,
                targets,
                seen_idx,
                cfg.alpha,
                cfg.beta,
                temperature=cfg.temperature,
                gamma_neg=cfg.gamma_neg,
                gamma_pos=cfg.gamma_pos,
                asl_clip=cfg.asl_clip,
                cls_reduction=cfg.cls_reduction,
            )
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            scheduler.step()
        train_seconds.append(time.perf_counter() - start)
        for split in evals:
            batches = _eval_batches(eval_decode[split], len(splits[split]), cfg.run.batch_size)
            part = score_split(model, batches, label_sets, torch.device("cpu"), False)
            zsl_gzsl_metrics(part["scores0"], part["scores1"], part["targets"], labels.unseen_idx)
        epoch_seconds.append(time.perf_counter() - start)
    return train_seconds, epoch_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (epoch 0 is the warm-up)")
    logging.basicConfig(level=logging.WARNING)

    import ray

    from core.train.methods.clip_decoder import train_clip_decoder

    work = tempfile.mkdtemp(prefix="clip-decoder-bench-")
    demo = generate_multilabel_demo(f"{work}/data", num_images=args.images, unseen=DEMO_UNSEEN)
    cfg = load_config(
        ClipDecoderTrainConfig,
        None,
        [
            f"storage={work}",
            f"manifest={demo.manifest}",
            "name=bench",
            f"run.epochs={args.epochs}",
            f"run.batch_size={args.batch_size}",
            f"model.image_size={args.image_size}",
            # Ray sets OMP_NUM_THREADS from the worker's CPUs.
            f"run.cpus_per_worker={args.threads}",
            "run.amp=false",
        ],
    )
    ray.init(num_cpus=args.threads + 2, include_dashboard=False, log_to_driver=False)
    loop_train, loop_seconds = plain_loop(cfg, demo.manifest, args.threads)
    start = time.perf_counter()
    run = train_clip_decoder(cfg)
    fit_seconds = time.perf_counter() - start
    ray.shutdown()
    trainer_train = [h["train_seconds"] for h in run.history]
    trainer_seconds = [h["epoch_seconds"] for h in run.history]
    assert len(trainer_seconds) == args.epochs, run.history

    n_train = len(load_multilabel_splits(demo.manifest)[1]["train"])
    samples = steps_per_epoch(n_train, args.batch_size) * args.batch_size
    loop_sps = samples / float(np.mean(loop_seconds[1:]))
    trainer_sps = samples / float(np.mean(trainer_seconds[1:]))
    print(
        f"images={args.images} train={n_train} batch_size={args.batch_size} "
        f"samples/epoch={samples} image_size={args.image_size} threads={args.threads} "
        f"epochs={args.epochs} (epoch 0 excluded)"
    )
    print(f"{'':18} {'s/epoch (each)':>32} {'steady samples/s':>17}")
    for name, secs, sps in (
        ("plain loop", loop_seconds, loop_sps),
        ("TorchTrainer (1)", trainer_seconds, trainer_sps),
    ):
        each = " ".join(f"{s:.2f}" for s in secs)
        print(f"{name:18} {each:>32} {sps:17.1f}")
    train_ratio = float(np.mean(loop_train[1:]) / np.mean(trainer_train[1:]))
    print(f"training phase alone: trainer/loop speed {train_ratio:.2f}")
    print(f"trainer fit() wall time, start-up and evaluation included: {fit_seconds:.1f} s")
    print(f"trainer_vs_loop={trainer_sps / loop_sps:.2f}")


if __name__ == "__main__":
    main()
