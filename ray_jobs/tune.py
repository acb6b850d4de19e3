"""Ray Tune sweep over one training method: alpha, learning rates, prompts; ASHA stops the weak.

    python -m ray_jobs.tune --config ray_jobs/configs/tune_regularized_demo.yaml
    python -m ray_jobs.tune --config ray_jobs/configs/tune_clip_decoder_demo.yaml

Each trial is one TorchTrainer run of the training job's own code. Outputs go to
``<storage>/tune/<name>``: results.parquet / results.csv (one row per trial), a plot of the
validation metric against alpha, and best.yaml, a preset the training job takes as it is.
Running the same command again continues an interrupted sweep.
"""

from __future__ import annotations

from core.tune.config import TuneJobConfig
from core.tune.sweep import SweepSummary, run_sweep
from ray_jobs.cli import init_ray, parse_job_config, run_main


def sweep(cfg: TuneJobConfig) -> SweepSummary:
    run = cfg.training_config().run
    # Each running trial: its workers, plus one CPU for its Ray Data tasks; plus the driver.
    per_trial = run.num_workers * run.cpus_per_worker + 1
    init_ray(cfg.ray, cpus_needed=cfg.max_concurrent_trials * per_trial + 1)
    return run_sweep(cfg)


def main(argv: list[str] | None = None) -> SweepSummary:
    cfg = parse_job_config(
        TuneJobConfig, "Ray Tune sweep over a training method.", argv, job="tune"
    )
    summary = sweep(cfg)
    done = len(summary.records)
    stopped = sum(r["stopped_early"] for r in summary.records)
    errors = sum(r["status"] == "ERROR" for r in summary.records)
    print(
        f"{cfg.name}: {done}/{summary.expected_trials} trials ended "
        f"({stopped} stopped early by the scheduler, {errors} errors)"
        + (" (resumed)" if summary.resumed else "")
    )
    if summary.interrupted:
        print("  interrupted: run the same command again to continue the sweep")
    if summary.best is not None:
        best = summary.best
        print(
            f"  best trial {best['trial_id']}: {summary.metric}="
            f"{best['metrics'][summary.metric]:.4f} with "
            + ", ".join(f"{k}={v}" for k, v in best["config"].items())
        )
    if summary.best_preset:
        print(f"  best preset: {summary.best_preset}")
    if summary.table_parquet:
        print(f"  table: {summary.table_parquet} (and .csv)")
        print(f"  plot: {summary.plot}")
    return summary


if __name__ == "__main__":
    run_main(main)
