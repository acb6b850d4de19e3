"""Train any registered method on Ray Train with the one engine.

    python -m ray_jobs.train --method linear_probe \
        --config ray_jobs/configs/train_linear_probe_demo.yaml

``--method`` names a method of ``core.train.registry`` (regularized, clip_decoder, linear_probe,
...); the config is that method's training config. The run lives in ``<storage>/runs/<name>``;
running it again with the same ``name`` continues from the last checkpoint. The regularized and
CLIP-Decoder jobs (``ray_jobs.train_regularized``, ``ray_jobs.train_clip_decoder``) add their own
summaries (the baseline comparison; the ZSL / GZSL table).
"""

from __future__ import annotations

import argparse
import sys

from core import storage
from core.train.engine import RunResult, fit
from core.train.launch import absolute_storage
from core.train.registry import get_method, method_names
from ray_jobs.cli import init_ray, parse_job_config, run_main


def main(argv: list[str] | None = None) -> RunResult:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--method", choices=method_names(), required=True)
    known, rest = parser.parse_known_args(argv)
    method = get_method(known.method)
    cfg = parse_job_config(
        method.config_class,
        f"Train {method.name} on Ray Train.",
        rest,
        job="train",
        method=method.name,
    )
    init_ray(cfg.ray, cpus_needed=cfg.run.num_workers * cfg.run.cpus_per_worker + 1)
    run = fit(method, cfg, absolute_storage(storage.join(cfg.storage, "runs")), cfg.name)
    print(f"{run.name} ({method.name}): {len(run.history)} epochs, {run.run_dir}")
    print(f"  best checkpoint ({run.checkpoint_metric}): {run.best_checkpoint}")
    print(storage.dumps_json(run.final))
    return run


if __name__ == "__main__":
    run_main(main)
