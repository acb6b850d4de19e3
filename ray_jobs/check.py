"""Check a job's preset before the cluster: real-size models, agreeing parts, memory per worker.

    python -m ray_jobs.check --config ray_jobs/configs/train_regularized_vitl14.yaml
    python -m ray_jobs.check --config ray_jobs/configs/caption_minigpt4.yaml \
        captioner.minigpt4.template=llama2 llm=llama-2-7b-chat
    python -m ray_jobs.check --job train --method linear_probe --config my_probe.yaml

Without reading any weights (and without a GPU) it builds the job's models at their real
architecture on torch's meta device, checks every place where two parts must agree (class-means
width and the training CLIP, ``llama_proj`` and the Q-Former / LLM, ML-Decoder queries and the
CLIP text width, the conversation template and the LLM), estimates one worker's peak accelerator
memory at the configured batch and compares it with the GPU the job would get on ``cluster.yaml``.
Weight files are checked for existence only; where they are absent the architecture comes from
the named model's published configuration (``core/models/published``), and ``--require-files``
makes a missing file an error. Besides the job's own ``key=value`` overrides it takes the check's
keys (``means_clip=``, ``means_preset=``, ``train_preset=``, ``num_classes=``, ``num_labels=``,
``nus_wide_root=``, ``llm=``, ``node_type=``).

Last line: ``check: ok params=<millions> peak_gib=<X> gpu=<name> fits=yes|no max_batch=<N>``, or
``check: failed: <reason>`` with exit status 1 (2 for a config error).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core.check.context import CHECK_KEYS, Context
from core.check.gpus import read_node_types
from core.check.presets import JOBS, config_class, job_of, run_check, split_keys
from core.check.report import Report
from core.config import ConfigError, load_config

DEFAULT_CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


def check(argv: list[str] | None = None) -> tuple[int, str]:
    """Run the check; returns (exit status, report text ending in the ``check:`` line)."""
    parser = argparse.ArgumentParser(
        description="Check a job preset: real-size models on the meta device, memory per worker.",
        epilog="check keys: " + "; ".join(f"{k}= {v}" for k, v in CHECK_KEYS.items()),
    )
    parser.add_argument("--config", required=True, help="the job's YAML preset")
    parser.add_argument("--job", choices=JOBS, help="the job, when the file name does not say it")
    parser.add_argument("--method", help="the training method, with --job train")
    parser.add_argument("--cluster", default=str(DEFAULT_CLUSTER), help="cluster launcher YAML")
    parser.add_argument("--require-files", action="store_true", help="a missing file fails")
    parser.add_argument("overrides", nargs="*", help="job overrides and check keys (key=value)")
    args = parser.parse_args(argv)
    report = Report()
    try:
        job, method = (args.job, args.method or "") if args.job else job_of(args.config)
        if job == "train" and not method:
            raise ValueError("--job train needs --method NAME")
        overrides, keys = split_keys(args.overrides)
        cfg = load_config(config_class(job, method), args.config, overrides)
        ctx = Context(report, read_node_types(args.cluster), Path(args.config), keys)
        run_check(ctx, job, method, cfg)
    except ConfigError as exc:
        return 2, "\n".join([*report.lines, f"check: failed: config error: {exc}"])
    except (ValueError, FileNotFoundError, OSError) as exc:
        reason = " ".join(str(exc).split())
        return 1, "\n".join([*report.lines, f"check: failed: {reason}"])
    text = report.text(args.require_files)
    return (1 if text.rsplit("\n", 1)[-1].startswith("check: failed") else 0), text


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    status, text = check(argv)
    *lines, last = text.split("\n")
    for line in lines:
        print(line)
    print(f"time: {time.perf_counter() - start:.1f} s")
    print(last)
    return status


if __name__ == "__main__":
    sys.exit(main())
