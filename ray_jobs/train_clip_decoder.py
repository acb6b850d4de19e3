"""Train CLIP-Decoder on the seen labels on Ray Train; evaluate zero-shot (ZSL) and GZSL.

    python -m ray_jobs.train_clip_decoder --config ray_jobs/configs/train_clip_decoder_demo.yaml

Without ``manifest`` it generates the multi-label demo under ``<storage>/multilabel_demo``.
Running it again with the same ``name`` continues from the last checkpoint.
"""

from __future__ import annotations

import math

from core import storage
from core.config import ClipDecoderTrainConfig
from core.train.engine import RunResult
from core.train.methods.clip_decoder import train_clip_decoder
from ray_jobs.cli import init_ray, parse_job_config, run_main

COLUMNS = (("mAP", "map"), ("P@3", "p3"), ("R@3", "r3"), ("F1@3", "f1_3"))
COLUMNS += (("P@5", "p5"), ("R@5", "r5"), ("F1@5", "f1_5"))


def train(cfg: ClipDecoderTrainConfig) -> RunResult:
    # Workers plus one CPU for the Ray Data tasks that decode and transform images.
    init_ray(cfg.ray, cpus_needed=cfg.run.num_workers * cfg.run.cpus_per_worker + 1)
    return train_clip_decoder(cfg)


def format_table(final: dict) -> str:
    """ZSL / GZSL rows of percentages; '-' where a metric is undefined (e.g. k > labels).

    The header names the mAP protocol, since the two differ whenever a label has no positive.
    """

    def cell(value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return f"{'-':>7}"
        return f"{100 * value:7.2f}"

    protocol = final.get("map_protocol", "skip_empty")
    rule = {
        "reference": "AP averaged over all labels, a label without positives counting 0",
        "skip_empty": "AP averaged over the labels with positives only",
    }.get(protocol, "")
    lines = [
        f"mAP protocol: {protocol} ({rule})",
        f"{'':6}" + "".join(f"{name:>7}" for name, _ in COLUMNS),
    ]
    for row in ("zsl", "gzsl"):
        lines.append(
            f"{row.upper():6}" + "".join(cell(final.get(f"{row}_{key}")) for _, key in COLUMNS)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> RunResult:
    cfg = parse_job_config(
        ClipDecoderTrainConfig, "CLIP-Decoder zero-shot training.", argv, job="train_clip_decoder"
    )
    run = train(cfg)
    final = run.final_metrics
    print(
        f"{run.name}: {run.info['num_seen']} seen / {run.info['num_unseen']} unseen labels, "
        f"test split after epoch {final.get('epoch')} of {cfg.run.epochs} (x100)"
    )
    print(format_table(final))
    print(f"  metrics: {run.run_dir}/metrics.jsonl")
    print(f"  final metrics: {run.final_metrics_path}")
    print(f"  best checkpoint ({run.checkpoint_metric}): {run.best_checkpoint}")
    print(storage.dumps_json({k: v for k, v in final.items() if k.startswith(("zsl_", "gzsl_"))}))
    return run


if __name__ == "__main__":
    run_main(main)
