"""Predict a manifest's images with a trained classifier checkpoint on a Ray Data actor pool.

    python -m ray_jobs.predict --config ray_jobs/configs/predict_demo.yaml \
        checkpoint=outputs/runs/demo/regularized/checkpoint_...

Writes predictions.parquet (id, label, predicted, top-k classes and probabilities, error) and
accuracy.json (overall and per class) next to the run, or under ``output``.
"""

from __future__ import annotations

from core import storage
from core.config import PredictJobConfig
from core.predict import (
    PredictionSummary,
    check_checkpoint,
    resolve_checkpoint,
    run_prediction,
)
from ray_jobs.cli import init_ray, parse_job_config, run_main


def predict(cfg: PredictJobConfig) -> PredictionSummary:
    check_checkpoint(resolve_checkpoint(cfg.checkpoint))  # one line, before Ray starts
    init_ray(cfg.ray, cpus_needed=cfg.num_actors + 1)
    return run_prediction(cfg)


def main(argv: list[str] | None = None) -> PredictionSummary:
    cfg = parse_job_config(
        PredictJobConfig, "Batch prediction with a trained classifier.", argv, job="predict"
    )
    summary = predict(cfg)
    print(
        f"predicted {summary.images} images ({summary.failed} failed): "
        f"accuracy {summary.accuracy:.4f} in {summary.seconds:.1f}s"
    )
    print(f"predictions: {summary.output}")
    print(f"accuracy: {summary.accuracy_path}")
    print(storage.dumps_json(summary.as_dict()))
    return summary


if __name__ == "__main__":
    run_main(main)
