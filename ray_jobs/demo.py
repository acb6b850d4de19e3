"""The embedded default: every stage of both methods, end to end, on one machine.

    python -m ray_jobs.demo                          # reference descriptions
    python -m ray_jobs.demo captioner=minigpt4_tiny  # the tiny MiniGPT-4 writes them instead

Draws the demo world (:mod:`core.data.demo_world`): a pool of described images and a
classification set whose eight classes are (size, colour) pairs. It pretrains the tiny CLIP on
the pool with CLIP's contrastive loss (``ray_jobs.pretrain_clip``) and scores retrieval of
held-out pairs, then runs every stage with that CLIP: captions, the mean class descriptions from
its text tower, the baseline (alpha = 0) and the regularized model fine-tuned from its image
tower with the same seed and data order, prediction of the test split with both, and CLIP-Decoder
on the multi-label demo with its text tower's label queries. It prints the results and where
every output lies. Rerunning it resumes: finished pretraining, captions and runs are reused.
``pretrain=false`` runs the stages with a randomly initialised CLIP instead.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

from core import storage
from core.config import (
    CaptionJobConfig,
    ClassMeansJobConfig,
    DemoJobConfig,
    PredictJobConfig,
    TrainRegularizedConfig,
    TrainRunConfig,
)
from core.train.launch import absolute_storage
from ray_jobs.caption import caption
from ray_jobs.class_descriptions import class_descriptions
from ray_jobs.cli import init_ray, parse_job_config, run_main
from ray_jobs.predict import predict
from ray_jobs.train_regularized import train

log = logging.getLogger("ray_jobs.demo")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "  n/a " if math.isnan(value) else f"{value:6.3f}"
    return str(value)


def run_demo(cfg: DemoJobConfig) -> dict[str, Any]:
    """Run every stage; return the numbers and paths the summary prints."""
    start = time.monotonic()
    # Absolute from here on: manifests record image paths, and Train workers run elsewhere.
    cfg = dataclasses.replace(cfg, storage=absolute_storage(cfg.storage))
    init_ray(cfg.ray, cpus_needed=max(3, cfg.num_workers + 2))
    out: dict[str, Any] = {"storage": cfg.storage}
    manifest = world_manifest(cfg)

    if cfg.pretrain:
        log.info("[0/5] pretraining %s on the world's described images", cfg.clip.model_name)
        out["pretrain"] = pretrain_on_world(cfg)
        cfg = dataclasses.replace(
            cfg,
            clip=dataclasses.replace(cfg.clip, pretrained=out["pretrain"]["clip_pretrained"]),
        )

    log.info("[1/5] captioning the demo classes (%s)", cfg.captioner.backend)
    captions = caption(
        CaptionJobConfig(
            storage=cfg.storage,
            manifest=manifest,
            splits=["train"],
            captioner=cfg.captioner,
            demo=cfg.demo,
            ray=cfg.ray,
        )
    )
    out["manifest"], out["captions"] = captions.manifest, captions.output

    log.info("[2/5] mean class descriptions (%s text encoder)", cfg.clip.model_name)
    means = class_descriptions(
        ClassMeansJobConfig(storage=cfg.storage, manifest=manifest, clip=cfg.clip, ray=cfg.ray)
    )
    out["class_means"] = means.output

    log.info("[3/5] training baseline (alpha=0) and regularized (alpha=%g)", cfg.alpha)
    trained = train(
        TrainRegularizedConfig(
            storage=cfg.storage,
            name="demo",
            manifest=manifest,
            alpha=cfg.alpha,
            compare_baseline=True,
            clip=cfg.clip,
            optim=cfg.optim,
            run=TrainRunConfig(
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                num_workers=cfg.num_workers,
                seed=cfg.seed,
            ),
            ray=cfg.ray,
        )
    )
    out["plot"], out["comparison"] = trained.plot, trained.summary_path

    log.info("[4/5] predicting the test split with both models")
    rows = []
    for run in trained.runs:
        predicted = predict(
            PredictJobConfig(
                storage=cfg.storage, checkpoint=run.best_checkpoint or run.run_dir, ray=cfg.ray
            )
        )
        rows.append(
            {
                "model": run.name,
                "alpha": run.info["alpha"],
                "final_test_acc": run.final.get("test_acc", float("nan")),
                "best_val_epoch": _best_val_epoch(run.history),
                "predict_test_acc": predicted.accuracy,
                "run_dir": run.run_dir,
                "predictions": predicted.output,
            }
        )
    out["regularized"] = rows

    if cfg.clip_decoder:
        log.info("[5/5] CLIP-Decoder on the multi-label demo (zero-shot on unseen labels)")
        out["clip_decoder"] = _run_clip_decoder(cfg)
    out["seconds"] = round(time.monotonic() - start, 1)
    storage.write_json(storage.join(cfg.storage, "demo_summary.json"), out)
    return out


def world_manifest(cfg: DemoJobConfig) -> str:
    """The demo world's classification set under ``storage/demo`` (drawn once)."""
    from core.data.demo_world import generate_classes

    manifest = storage.join(cfg.storage, "demo", "manifest.parquet")
    if not storage.exists(manifest):
        generate_classes(
            storage.join(cfg.storage, "demo"),
            images_per_class=cfg.demo.images_per_class,
            image_size=cfg.demo.image_size,
            seed=cfg.demo.seed,
        )
    return manifest


def pretrain_on_world(cfg: DemoJobConfig) -> dict[str, Any]:
    """Contrastive pretraining on the world's pool; its held-out retrieval and weights."""
    from core.data.demo_world import generate_pool
    from core.train.methods.pretrain_clip import PretrainClipConfig
    from ray_jobs.pretrain_clip import pretrain

    pool = storage.join(cfg.storage, "world", "pool", "manifest.parquet")
    if not storage.exists(pool):
        generate_pool(
            storage.join(cfg.storage, "world", "pool"),
            pairs=cfg.pretrain_pairs,
            image_size=cfg.demo.image_size,
            seed=cfg.demo.seed,
        )
    run = pretrain(
        PretrainClipConfig(
            storage=cfg.storage,
            name="pretrain_clip",
            manifest=pool,
            clip=cfg.clip,
            optim=cfg.pretrain_optim,
            run=TrainRunConfig(
                epochs=cfg.pretrain_epochs,
                batch_size=128,
                num_workers=cfg.num_workers,
                seed=cfg.seed,
                keep_checkpoints=1,
            ),
            ray=cfg.ray,
        )
    )
    final = run.final
    return {
        "clip_pretrained": run.final_metrics["clip_pretrained"],
        "run_dir": run.run_dir,
        "epochs": len(run.history),
        "val_i2t": final.get("val_i2t", float("nan")),
        "val_t2i": final.get("val_t2i", float("nan")),
        "val_pairs": final.get("val_pairs", 0),
    }


def _best_val_epoch(history: list[dict[str, Any]]) -> int:
    scored = [h for h in history if not math.isnan(h.get("val_acc", float("nan")))]
    return max(scored, key=lambda h: h["val_acc"])["epoch"] if scored else -1


def _run_clip_decoder(cfg: DemoJobConfig) -> dict[str, Any]:
    from core.config import ClipDecoderTrainConfig, load_config
    from ray_jobs.train_clip_decoder import train as train_clip_decoder

    preset = Path(__file__).parent / "configs" / "train_clip_decoder_demo.yaml"
    decoder_cfg = load_config(
        ClipDecoderTrainConfig,
        str(preset),
        [
            f"storage={cfg.storage}",
            f"run.epochs={cfg.clip_decoder_epochs}",
            f"run.seed={cfg.seed}",
        ],
    )
    decoder_cfg.clip = cfg.clip
    decoder_cfg.ray = cfg.ray
    return train_clip_decoder(decoder_cfg).as_dict()


def print_summary(out: dict[str, Any]) -> None:
    pre = out.get("pretrain")
    print()
    if pre:
        pairs = pre["val_pairs"]
        print(f"CLIP pretraining on the demo world's described images ({pre['epochs']} epochs)")
        print(
            f"held-out retrieval over {pairs} pairs: image->text {pre['val_i2t']:.3f}, "
            f"text->image {pre['val_t2i']:.3f} (chance {1 / max(pairs, 1):.3f})"
        )
        print()
    which = "pretrained tiny CLIP" if pre else "tiny random CLIP"
    print(f"LMM-regularized CLIP on the demo world's (size, colour) classes ({which})")
    print("test acc: last epoch, from training; predict acc: the best-val checkpoint, predicted")
    print(f"{'model':<12} {'alpha':>6} {'test acc':>9} {'predict acc':>12} {'best val epoch':>15}")
    for row in out["regularized"]:
        print(
            f"{row['model']:<12} {row['alpha']:>6g} {_fmt(row['final_test_acc']):>9} "
            f"{_fmt(row['predict_test_acc']):>12} {row['best_val_epoch']:>15}"
        )
    decoder = out.get("clip_decoder")
    if decoder:
        metrics = decoder.get("final_metrics", decoder)
        print()
        print("CLIP-Decoder on the multi-label demo (test split)")
        header = ["mAP", "P@3", "R@3", "F1@3", "P@5", "R@5", "F1@5"]
        print(f"{'':<6} " + " ".join(f"{h:>7}" for h in header))
        keys = ["map", "p3", "r3", "f1_3", "p5", "r5", "f1_5"]
        for setting in ("zsl", "gzsl"):
            values = [
                metrics.get(f"test_{setting}_{k}", metrics.get(f"{setting}_{k}")) for k in keys
            ]
            cells = " ".join(f"{v:7.3f}" if isinstance(v, float) else f"{'n/a':>7}" for v in values)
            print(f"{setting.upper():<6} {cells}")
    print()
    print("outputs:")
    if pre:
        print(f"  {'pretrained':<12} {pre['clip_pretrained']}")
    for key in ("manifest", "captions", "class_means", "plot", "comparison"):
        if out.get(key):
            print(f"  {key:<12} {out[key]}")
    for row in out["regularized"]:
        print(f"  {row['model']:<12} {row['run_dir']}  (predictions: {row['predictions']})")
    if decoder and decoder.get("run_dir"):
        print(f"  {'clip_decoder':<12} {decoder['run_dir']}")
    print(f"  {'summary':<12} {storage.join(out['storage'], 'demo_summary.json')}")
    print(f"done in {out['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse_job_config(DemoJobConfig, "Both methods end to end on the demo data.", argv)
    out = run_demo(cfg)
    print_summary(out)
    return out


if __name__ == "__main__":
    run_main(main)
