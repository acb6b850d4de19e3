"""What every entrypoint shares: ``--config`` + dotted overrides, ``--debug``, logging, connecting
to Ray, and one error line (not a traceback) for failures the user can fix."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from core.config import ConfigError, RayConfig, load_config

T = TypeVar("T")

#: Set by ``--debug``: failures then end with their full traceback instead of one line.
DEBUG = False

#: Failures a user causes and fixes (bad data, checkpoint, config, a missing file): reported as
#: one line. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,
)


def parse_job_config(
    cls: type[T],
    description: str,
    argv: list[str] | None = None,
    *,
    job: str | None = None,
    method: str = "",
) -> T:
    """Parse ``--config FILE [--debug] key=value ...``; a bad setting exits with one line naming
    the key.

    With ``job`` (and ``method`` for ``train``) the job's check runs next, before Ray starts
    (:func:`check_job`); ``--skip-check`` skips it.
    """
    global DEBUG
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML preset (see ray_jobs/configs/)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a failure")
    if job:
        parser.add_argument(
            "--skip-check",
            action="store_true",
            help="emergencies only: start without the check every job runs before Ray (the "
            "preset's models built on the meta device, agreeing parts, the files it reads, "
            "memory per worker; as `python -m ray_jobs.check --require-files`)",
        )
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. captioner.batch_size=16"
    )
    args = parser.parse_args(argv)
    DEBUG = DEBUG or args.debug
    try:
        cfg = load_config(cls, args.config, args.overrides)
    except ConfigError as exc:
        if DEBUG:
            raise
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if job and not args.skip_check:
        check_job(cfg, job, method, args.config)
    elif job:
        logging.getLogger("ray_jobs.cli").warning("--skip-check: the job's check did not run")
    return cfg


#: The cluster the check at start plans memory for (uploaded with the code by ``ray job submit``).
CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def check_job(cfg: Any, job: str, method: str = "", preset: str | None = None) -> None:
    """The job's check at start (``core.check.start``), before Ray: its report goes to the log;
    a mismatch or a missing input ends the job with one line ``check: failed: <reason>`` (exit
    status 1). An input the check cannot read (a broken ``meta.json``) is the job's own error
    (one ``error:`` line from :func:`run_main`). A memory estimate above the ``cluster.yaml``
    GPU is a warning only."""
    from core.check.start import CheckFailed, check_at_start

    try:
        check_at_start(cfg, job, method, preset, CLUSTER_YAML)
    except CheckFailed as exc:
        if DEBUG:
            raise
        print(f"check: failed: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as exc:
        if not isinstance(root_cause(exc), _user_errors()):
            logging.getLogger("ray_jobs.cli").error(
                "the check at start crashed (a bug in the check; --skip-check starts the job "
                "without it)"
            )
        raise


class _StderrHandler(logging.StreamHandler):
    """Logs to whatever ``sys.stderr`` is when a record is written, not when the handler was
    made: a job run in-process twice (tests, notebooks) never writes to a stream closed since."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ sets it; ignored
        pass


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[_StderrHandler()],
        force=True,
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


def _user_errors() -> tuple[type[BaseException], ...]:
    from core.ray_internals import UnsupportedRayVersion

    return (*USER_ERRORS, UnsupportedRayVersion)


def root_cause(exc: BaseException) -> BaseException:
    """The error the user's code raised, out of Ray's wrappers.

    Ray Train 2.60 raises ``ray.train.WorkerGroupError`` (a ``TrainingFailedError``) whose
    ``worker_failures`` maps each failed rank to its exception, and ``ControllerError`` with
    ``controller_failure``; Ray tasks and actors raise ``RayTaskError`` with ``cause``. (Ray
    Data keeps only the text of an error raised in a ``map_batches`` function, which is why jobs
    check their inputs on the driver.) Among several failed ranks, the first one with a user
    error wins (the others often only saw their peer vanish).
    """
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        failures = getattr(exc, "worker_failures", None)
        if isinstance(failures, dict) and failures:
            ranked = [failures[rank] for rank in sorted(failures)]
            causes = [root_cause(e) for e in ranked]
            user = [c for c in causes if isinstance(c, _user_errors())]
            return (user or causes)[0]
        inner = getattr(exc, "controller_failure", None) or getattr(exc, "cause", None)
        if isinstance(inner, BaseException):
            exc = inner
            continue
        break
    return exc


def one_line(exc: BaseException) -> str:
    """The error's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def run_main(main: Callable[[], Any]) -> None:
    """Run a job's main; a failure the user can fix ends it with one line and exit status 1.

    With ``--debug`` (anywhere on the command line) the failure's traceback is shown instead.
    Errors that are not the user's (bugs) keep their traceback.
    """
    setup_logging()
    try:
        main()
    except Exception as exc:
        cause = root_cause(exc)
        if DEBUG or "--debug" in sys.argv[1:] or not isinstance(cause, _user_errors()):
            raise
        print(f"error: {one_line(cause)}", file=sys.stderr)
        raise SystemExit(1) from None
