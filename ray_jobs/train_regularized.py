"""Train a CLIP image encoder + linear head with the LMM description regularizer on Ray Train.

    python -m ray_jobs.train_regularized --config ray_jobs/configs/train_regularized_demo.yaml

Needs the manifest and the class means (``python -m ray_jobs.class_descriptions``). Running it
again with the same ``name`` continues from the last checkpoint.
"""

from __future__ import annotations

from core import storage
from core.config import TrainRegularizedConfig
from core.train.methods.regularized import TrainSummary, train_regularized
from ray_jobs.cli import init_ray, parse_job_config, run_main


def train(cfg: TrainRegularizedConfig) -> TrainSummary:
    # Workers plus one CPU for the Ray Data tasks that decode and transform images.
    init_ray(cfg.ray, cpus_needed=cfg.run.num_workers * cfg.run.cpus_per_worker + 1)
    return train_regularized(cfg)


def main(argv: list[str] | None = None) -> TrainSummary:
    cfg = parse_job_config(
        TrainRegularizedConfig, "LMM-regularized CLIP training.", argv, job="train_regularized"
    )
    summary = train(cfg)
    for run in summary.runs:
        final = run.final
        print(
            f"{run.name}: alpha={run.info['alpha']:g} epochs={len(run.history)} "
            f"test_acc={final.get('test_acc', float('nan')):.4f} "
            f"val_acc={final.get('val_acc', float('nan')):.4f}"
        )
        print(f"  metrics: {run.run_dir}/metrics.jsonl")
        print(f"  best checkpoint: {run.best_checkpoint}")
    if summary.plot:
        print(f"test accuracy plot: {summary.plot}")
        print(f"comparison: {summary.summary_path}")
    print(storage.dumps_json({r.name: r.final for r in summary.runs}))
    return summary


if __name__ == "__main__":
    run_main(main)
