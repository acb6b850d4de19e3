"""Pretrain (or adapt) an open_clip model on image–text pairs with CLIP's contrastive loss.

    python -m ray_jobs.pretrain_clip --config ray_jobs/configs/pretrain_clip_demo.yaml
    python -m ray_jobs.pretrain_clip manifest=my.parquet text_column=caption \
        clip.model_name=ViT-B-32 clip.pretrained=openai run.num_workers=4 run.use_gpu=true
    python -m ray_jobs.pretrain_clip manifest=outputs/demo/manifest.parquet \
        captions=outputs/captions          # adapt CLIP to the captions an LMM wrote

The texts are a manifest column (``text_column``) or a captioning job's output (``captions``);
pairs in the ``val`` split are held out and scored by retrieval. The run ends by writing
``<storage>/runs/<name>/pretrained_clip.safetensors``: give it to any job as
``clip.pretrained=<path>``. Running again with the same ``name`` continues from the last
checkpoint.
"""

from __future__ import annotations

import math

from core import storage
from core.train.engine import RunResult, fit
from core.train.launch import absolute_storage
from core.train.methods.pretrain_clip import PretrainClipConfig
from core.train.registry import get_method
from ray_jobs.cli import init_ray, parse_job_config, run_main


def pretrain(cfg: PretrainClipConfig) -> RunResult:
    """One contrastive pretraining run; ``final_metrics["clip_pretrained"]`` is its weights."""
    init_ray(cfg.ray, cpus_needed=cfg.run.num_workers * cfg.run.cpus_per_worker + 1)
    runs = absolute_storage(storage.join(cfg.storage, "runs"))
    return fit(get_method("pretrain_clip"), cfg, runs, cfg.name)


def main(argv: list[str] | None = None) -> RunResult:
    cfg = parse_job_config(
        PretrainClipConfig,
        "Contrastive image-text pretraining of CLIP.",
        argv,
        job="train",
        method="pretrain_clip",
    )
    run = pretrain(cfg)
    final = {"train_loss": math.nan, "val_i2t": math.nan, "val_t2i": math.nan, **run.final}
    print(
        f"{run.name}: {len(run.history)} epochs, train_loss={final['train_loss']:.4f} "
        f"held-out retrieval i2t={final['val_i2t']:.3f} t2i={final['val_t2i']:.3f} "
        f"over {final.get('val_pairs', 0)} pairs"
    )
    print(f"  clip.pretrained={run.final_metrics.get('clip_pretrained', '')}")
    return run


if __name__ == "__main__":
    run_main(main)
