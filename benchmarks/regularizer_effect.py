"""Baseline (alpha = 0) vs LMM-regularized training on the demo data, over several seeds.

For each seed both models train with the real TorchTrainer (same seed, same data order), then the
test images are embedded with each final model. Printed: mean and spread of test accuracy, and
the ratio of mean within-class to mean between-class embedding distance (lower = tighter, better
separated classes), for both. Whatever the numbers show is the measurement: with a tiny random
CLIP the class means carry no real semantics, so this tests the machinery, not the paper's claim.

    python benchmarks/regularizer_effect.py [--seeds 3] [--epochs 8] [--alpha 0.1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile

import numpy as np
import torch
from PIL import Image

from core.config import TrainRegularizedConfig, load_config
from core.data.images import load_image
from core.models.clip_classifier import load_classifier
from core.train.image_data import load_splits
from core.train.methods.regularized import train_regularized
from ray_jobs.caption import caption
from ray_jobs.class_descriptions import class_descriptions


def distance_ratio(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Mean pairwise distance within classes over mean pairwise distance between classes."""
    diff = embeddings[:, None, :] - embeddings[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    return float(dist[same & off_diagonal].mean() / dist[~same].mean())


def embed_test(checkpoint: str, manifest: str) -> tuple[np.ndarray, np.ndarray]:
    model, _, transform = load_classifier(checkpoint)
    _, splits = load_splits(manifest)
    rows = splits["test"]
    images = torch.stack([transform(Image.fromarray(load_image(p))) for p in rows.paths])
    with torch.no_grad():
        _, x = model(images)
    return x.numpy(), rows.labels


def main() -> None:
    from core.config import CaptionJobConfig, ClassMeansJobConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=0.1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray

    work = tempfile.mkdtemp(prefix="reg-effect-")
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    captions = caption(load_config(CaptionJobConfig, None, [f"storage={work}", "splits=[train]"]))
    class_descriptions(load_config(ClassMeansJobConfig, None, [f"storage={work}"]))
    results: dict[str, dict[str, list[float]]] = {
        "baseline": {"acc": [], "ratio": []},
        "regularized": {"acc": [], "ratio": []},
    }
    for seed in range(args.seeds):
        cfg = load_config(
            TrainRegularizedConfig,
            "ray_jobs/configs/train_regularized_demo.yaml",
            [
                f"storage={work}",
                f"name=seed{seed}",
                f"run.seed={seed}",
                f"clip.seed={seed}",
                f"run.epochs={args.epochs}",
                f"alpha={args.alpha}",
            ],
        )
        for run in train_regularized(cfg).runs:
            x, labels = embed_test(run.latest_checkpoint, captions.manifest)
            results[run.name]["acc"].append(run.final["test_acc"])
            results[run.name]["ratio"].append(distance_ratio(x, labels))
            print(
                f"seed {seed} {run.name:<12} test_acc={run.final['test_acc']:.3f} "
                f"within/between={results[run.name]['ratio'][-1]:.3f}"
            )
    ray.shutdown()
    print(f"seeds={args.seeds} epochs={args.epochs} alpha={args.alpha}")
    for name, r in results.items():
        spread = statistics.stdev(r["acc"]) if len(r["acc"]) > 1 else 0.0
        print(
            f"{name:<12} test_acc mean={statistics.mean(r['acc']):.3f} sd={spread:.3f}  "
            f"within/between distance ratio mean={statistics.mean(r['ratio']):.3f}"
        )


if __name__ == "__main__":
    main()
