"""The controlled experiment: does the LMM regularizer change test accuracy on the demo world?

Settings fixed here before any result was seen, and never tuned on one:

- data: the demo world (``core.data.demo_world``), world seed 0: eight (size, colour) classes,
  40 images each (60/20/20 train/val/test), and a pool of 2,048 described images (+256 held out);
- CLIP: the tiny CLIP pretrained once on the pool with the demo's settings (16 epochs), shared by
  every run; class means from its text tower over the classes' reference descriptions
  (raw embeddings, the default);
- training: the demo's settings (8 epochs, batch 32, AdamW encoder 1e-3 / head 3e-3), one worker;
- alpha: 0 (the baseline) and 0.01, 0.1, 1.0 (log-spaced around the demo's 0.1);
- seeds 0-4: each seed sets the data order, augmentation and the head's initialisation; every
  alpha sees the same five seeds (paired);
- best alpha: the alpha > 0 with the highest mean *validation* accuracy (never chosen on test).

Every run is printed. Reported per alpha: test accuracy (last epoch) mean with a 95% confidence
interval (Student t over seeds), and the within/between-class distance ratio of the test
embeddings (lower: tighter, better separated classes). Then the paired difference, best alpha
minus baseline, with its own 95% interval. Last line:
``baseline=<mean±ci> best_alpha=<a> regularized=<mean±ci> delta=<d±ci>``.

    python benchmarks/regularizer_effect.py            # about 10 minutes on 2 CPU cores
    python benchmarks/regularizer_effect.py --seeds 3  # fewer seeds (a smaller experiment)
"""

from __future__ import annotations

import argparse
import logging
import math
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

ALPHAS = (0.0, 0.01, 0.1, 1.0)
SEEDS = 5
#: Two-sided 95% Student t quantiles by degrees of freedom.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval (0 for one value)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, 0.0
    t = T95.get(len(values) - 1, 1.96)
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


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


def prepare(work: str) -> tuple[str, str, str]:
    """World, pretrained CLIP and class means under ``work``: (manifest, weights, means)."""
    from core.config import CaptionJobConfig, ClassMeansJobConfig, ClipConfig
    from core.config.demo import DemoJobConfig
    from ray_jobs.caption import caption
    from ray_jobs.class_descriptions import class_descriptions
    from ray_jobs.demo import pretrain_on_world, world_manifest

    demo = load_config(DemoJobConfig, None, [f"storage={work}"])
    manifest = world_manifest(demo)
    weights = pretrain_on_world(demo)
    print(
        f"pretraining: held-out retrieval i2t={weights['val_i2t']:.3f} "
        f"t2i={weights['val_t2i']:.3f} over {weights['val_pairs']} pairs"
    )
    clip = ClipConfig(model_name=demo.clip.model_name, pretrained=weights["clip_pretrained"])
    caption(CaptionJobConfig(storage=work, manifest=manifest, splits=["train"]))
    means = class_descriptions(ClassMeansJobConfig(storage=work, manifest=manifest, clip=clip))
    return manifest, weights["clip_pretrained"], means.output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=SEEDS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray

    work = tempfile.mkdtemp(prefix="reg-effect-")
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    manifest, weights, means = prepare(work)
    runs: dict[float, list[dict[str, float]]] = {alpha: [] for alpha in ALPHAS}
    for seed in range(args.seeds):
        for alpha in ALPHAS:
            cfg = load_config(
                TrainRegularizedConfig,
                None,
                [
                    f"storage={work}",
                    f"name=s{seed}_a{alpha:g}",
                    f"manifest={manifest}",
                    f"class_means={means}",
                    "clip.model_name=tiny-vit",
                    f"clip.pretrained={weights}",
                    f"clip.seed={seed}",
                    f"run.seed={seed}",
                    "run.epochs=8",
                    "run.batch_size=32",
                    "optim.encoder_lr=0.001",
                    "optim.head_lr=0.003",
                    "optim.weight_decay=0.01",
                    "optim.warmup_epochs=1",
                    f"alpha={alpha}",
                    "compare_baseline=false",
                ],
            )
            (run,) = train_regularized(cfg).runs
            x, labels = embed_test(run.latest_checkpoint, manifest)
            result = {
                "test_acc": run.final["test_acc"],
                "val_acc": run.final["val_acc"],
                "ratio": distance_ratio(x, labels),
            }
            runs[alpha].append(result)
            print(
                f"seed {seed} alpha {alpha:<5g} test_acc={result['test_acc']:.3f} "
                f"val_acc={result['val_acc']:.3f} within/between={result['ratio']:.3f}",
                flush=True,
            )
    ray.shutdown()

    print(f"\n{args.seeds} seeds, 8 epochs, alphas {', '.join(f'{a:g}' for a in ALPHAS)}")
    print(f"{'alpha':>6} {'test acc (95% CI)':>20} {'val acc':>8} {'within/between':>15}")
    for alpha, results in runs.items():
        acc, ci = mean_ci([r["test_acc"] for r in results])
        val = statistics.mean(r["val_acc"] for r in results)
        ratio = statistics.mean(r["ratio"] for r in results)
        print(f"{alpha:>6g} {acc:>12.3f} ± {ci:.3f} {val:>8.3f} {ratio:>15.3f}")
    best = max(ALPHAS[1:], key=lambda a: statistics.mean(r["val_acc"] for r in runs[a]))
    base, base_ci = mean_ci([r["test_acc"] for r in runs[0.0]])
    reg, reg_ci = mean_ci([r["test_acc"] for r in runs[best]])
    paired = [r["test_acc"] - b["test_acc"] for r, b in zip(runs[best], runs[0.0], strict=True)]
    delta, delta_ci = mean_ci(paired)
    print(
        f"baseline={base:.3f}±{base_ci:.3f} best_alpha={best:g} "
        f"regularized={reg:.3f}±{reg_ci:.3f} delta={delta:+.3f}±{delta_ci:.3f}"
    )


if __name__ == "__main__":
    main()
