"""Training samples/s: the TorchTrainer (one worker) vs a plain PyTorch loop, and the cost of J_reg.

Same tiny CLIP classifier, same demo data, same batch size, same per-(epoch, row) augmentation,
and both evaluate on val and test after every epoch, as training runs do. Both sides are timed
per epoch after a warm-up epoch (so neither pays for process start, imports or the Ray worker
group's start-up): the trainer's own ``epoch_seconds`` (train + evaluation; the checkpoint after
it is not counted) against the loop's decode + transform + step + evaluation time. The trainer's
training phase alone (``train_seconds``) is printed too. The regularizer's overhead is the step
time (forward, loss, backward, optimizer) with alpha > 0 over alpha = 0 on a fixed batch, minus 1.

Last line: ``trainer_vs_loop=X reg_overhead=Y``.

    python benchmarks/train_throughput.py [--epochs 4] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import numpy as np
import torch

from core.config import ClipConfig, TrainRegularizedConfig, load_config
from core.data.demo import generate_demo_dataset
from core.losses import regularized_ce_loss
from core.models.clip_classifier import build_classifier
from core.models.open_clip_models import build_transforms
from core.text.class_means import ClassMeans, save_class_means
from core.train.image_data import TransformImages, load_splits, rank_train_rows
from core.train.methods.regularized import train_regularized


def _evaluate(model: torch.nn.Module, transform: TransformImages, batch: int) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(transform.paths), batch):
            chunk = np.arange(i, min(i + batch, len(transform.paths)))
            data = transform({"row": chunk, "epoch": np.full(len(chunk), -1)})
            logits, _ = model(torch.from_numpy(data["image"]))
            correct += int((logits.argmax(dim=1) == torch.from_numpy(data["label"])).sum())
    return correct / max(len(transform.paths), 1)


def plain_loop(
    manifest: str, means: torch.Tensor, epochs: int, batch: int
) -> tuple[list[float], list[float]]:
    """(train seconds, train + evaluation seconds) per epoch of a single-process loop doing what
    one trainer worker does."""
    classes, splits = load_splits(manifest)
    train_tf, eval_tf = build_transforms("tiny-vit")
    model, _ = build_classifier(ClipConfig(), len(classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    transform = TransformImages(splits["train"].table(), train_tf, seed=0)
    evals = [TransformImages(splits[s].table(), eval_tf, seed=0) for s in ("val", "test")]
    train_seconds, epoch_seconds = [], []
    for epoch in range(epochs):
        start = time.perf_counter()
        rows = rank_train_rows(len(splits["train"]), 0, epoch, batch, 0, 1)
        model.train()
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            data = transform({"row": chunk, "epoch": np.full(len(chunk), epoch)})
            logits, x = model(torch.from_numpy(data["image"]))
            terms = regularized_ce_loss(logits, x, torch.from_numpy(data["label"]), means, 1.0)
            optimizer.zero_grad()
            terms["loss"].backward()
            optimizer.step()
        train_seconds.append(time.perf_counter() - start)
        for split in evals:
            _evaluate(model, split, batch)
        epoch_seconds.append(time.perf_counter() - start)
    return train_seconds, epoch_seconds


def step_times(means: torch.Tensor, batch: int, rounds: int = 80) -> tuple[float, float]:
    """Median seconds of one optimisation step with alpha = 0 and alpha = 1 on a fixed batch.

    The two models step alternately, so drifts in machine load hit both alike.
    """
    torch.manual_seed(0)
    setups = []
    for _ in range(2):
        model, bundle = build_classifier(ClipConfig(), means.shape[0])
        setups.append((model, torch.optim.AdamW(model.parameters(), lr=1e-4)))
    images = torch.randn(batch, 3, bundle.image_size, bundle.image_size)
    labels = torch.randint(0, means.shape[0], (batch,))
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for i, alpha in enumerate((0.0, 1.0)):
            model, optimizer = setups[i]
            start = time.perf_counter()
            logits, x = model(images)
            terms = regularized_ce_loss(logits, x, labels, means, alpha)
            optimizer.zero_grad()
            terms["loss"].backward()
            optimizer.step()
            times[i].append(time.perf_counter() - start)
    return statistics.median(times[0][5:]), statistics.median(times[1][5:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images-per-class", type=int, default=120)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # one trainer worker has one CPU: give the loop the same

    import ray

    work = tempfile.mkdtemp(prefix="train-bench-")
    manifest = generate_demo_dataset(
        f"{work}/demo", images_per_class=args.images_per_class, image_size=64
    )
    classes, splits = load_splits(manifest)
    means = torch.nn.functional.normalize(torch.randn(len(classes), 32), dim=1)
    means_path = f"{work}/class_means.safetensors"
    save_class_means(means_path, ClassMeans(classes, means, [1] * len(classes), prompts=["p"]))

    loop_train, loop_epochs = plain_loop(manifest, means, args.epochs, args.batch_size)
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    cfg: TrainRegularizedConfig = load_config(
        TrainRegularizedConfig,
        None,
        [
            f"storage={work}",
            f"manifest={manifest}",
            f"class_means={means_path}",
            f"run.epochs={args.epochs}",
            f"run.batch_size={args.batch_size}",
            "alpha=1.0",
            "name=bench",
        ],
    )
    history = train_regularized(cfg).runs[0].history
    ray.shutdown()
    trainer_train = [h["train_seconds"] for h in history]
    trainer_epochs = [h["epoch_seconds"] for h in history]

    samples = (len(splits["train"]) // args.batch_size) * args.batch_size
    loop_sps = samples / statistics.mean(loop_epochs[1:])
    trainer_sps = samples / statistics.mean(trainer_epochs[1:])
    train_ratio = statistics.mean(loop_train[1:]) / statistics.mean(trainer_train[1:])
    base, reg = step_times(means, args.batch_size)

    def row(values: list[float]) -> str:
        return " ".join(f"{v:.2f}" for v in values)

    print(f"samples/epoch={samples} batch_size={args.batch_size} epochs={args.epochs}")
    print(f"plain loop  s/epoch: {row(loop_epochs)} (training alone: {row(loop_train)})")
    print(f"trainer     s/epoch: {row(trainer_epochs)} (training alone: {row(trainer_train)})")
    print(f"steady samples/s: loop {loop_sps:.1f}, trainer {trainer_sps:.1f}")
    print(f"training phase alone: trainer/loop speed {train_ratio:.2f}")
    print(f"step time: alpha=0 {base * 1e3:.2f} ms, alpha=1 {reg * 1e3:.2f} ms")
    print(f"trainer_vs_loop={trainer_sps / loop_sps:.2f} reg_overhead={reg / base - 1:.3f}")


if __name__ == "__main__":
    main()
