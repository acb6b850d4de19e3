"""What every entrypoint shares: ``--config`` + dotted overrides, logging, and connecting to Ray."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from core.config import ConfigError, RayConfig, load_config

T = TypeVar("T")


def parse_job_config(cls: type[T], description: str, argv: list[str] | None = None) -> T:
    """Parse ``--config FILE key=value ...``; a bad setting exits with one line naming the key."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML preset (see ray_jobs/configs/)")
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. captioner.batch_size=16"
    )
    args = parser.parse_args(argv)
    try:
        return load_config(cls, args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def init_ray(cfg: RayConfig, cpus_needed: float = 1.0) -> None:
    """Connect to the configured cluster, or start a local Ray with enough logical CPUs.

    Logical CPUs must cover every operator that runs at once (loading tasks, the actor pool), or
    Ray Data stalls; a local instance gets at least ``cpus_needed`` even on a 2-core machine.
    """
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address)
        return
    num_cpus = cfg.num_cpus or max(os.cpu_count() or 1, int(cpus_needed + 0.999))
    ray.init(num_cpus=num_cpus, include_dashboard=cfg.dashboard)


def run_main(main: Callable[[], Any]) -> None:
    """Run a job's main with clear one-line errors for bad input instead of a traceback wall."""
    from core.ray_internals import UnsupportedRayVersion

    setup_logging()
    try:
        main()
    except (FileNotFoundError, ValueError, UnsupportedRayVersion) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
