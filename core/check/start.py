"""The check every job runs at its start, before Ray: the same check as ``python -m
ray_jobs.check --require-files``, on the config the job already parsed, so a wrong preset (class
means of another CLIP, a missing weight file, a projection of another LLM) fails in seconds
instead of after the cluster has started its workers.

Its report goes to the log at INFO. A mismatch, or a missing file the job reads, is a failure;
a memory estimate that exceeds the ``cluster.yaml`` GPU is only a warning (the job may run on
other hardware).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("core.check")


class CheckFailed(Exception):
    """The check at start found a mismatch or a missing file; the message is the reason."""


@dataclass(frozen=True)
class StartCheck:
    """What the check at start found: its last line and whether the estimate fits the GPU."""

    last_line: str
    fits: bool | None  # None: no memory estimate (e.g. a method without a check)
    seconds: float


def check_at_start(
    cfg: Any,
    job: str,
    method: str = "",
    preset: str | Path | None = None,
    cluster: str | Path | None = None,
) -> StartCheck:
    """Check ``cfg`` (as the job parsed it) for ``job`` (and ``method`` for ``train``).

    ``preset`` is the YAML the config came from, or None for a job run with overrides only;
    ``cluster`` is the cluster launcher YAML the memory estimate plans for (absent: no GPU is
    known, and the memory verdict is a warning). Missing files are errors (``--require-files``).
    Raises :class:`CheckFailed` with the reason on one line when the check finds a problem
    (a mismatch, a missing file); an input it cannot read (a broken ``meta.json``) raises the
    job's own error (``ValueError`` / ``OSError`` naming the file).
    """
    import time

    from core.check.context import Context
    from core.check.gpus import read_node_types
    from core.check.presets import run_check
    from core.check.report import Report

    start = time.perf_counter()
    nodes = read_node_types(cluster) if cluster and Path(cluster).is_file() else []
    report = Report()
    ctx = Context(report, nodes, Path(preset) if preset else None, {})
    try:
        run_check(ctx, job, method, cfg)
    except (ValueError, OSError) as exc:
        _log_lines(report.lines)
        if report.missing:  # what the check could not go on without: the file it lacks
            raise CheckFailed(f"missing file {report.missing[0]}") from exc
        # An input the job reads is unusable (a broken meta.json, a manifest without labels):
        # the check read it with the job's own readers, so this is the job's own error, a
        # moment earlier; it is reported as the job reports it.
        raise
    _log_lines(report.lines)
    last = report.last_line(require_files=True, hint="")
    seconds = time.perf_counter() - start
    if last.startswith("check: failed: "):
        raise CheckFailed(last.removeprefix("check: failed: "))
    fits = None if report.placement is None else report.fits
    if fits is False:
        log.warning(
            "%s: the memory estimate does not fit the GPU of %s; starting anyway (the job may "
            "run on other hardware)",
            last,
            Path(cluster).name if cluster else "the cluster",
        )
    else:
        log.info("%s (%.1f s)", last, seconds)
    return StartCheck(last, fits, seconds)


def _log_lines(lines: list[str]) -> None:
    for line in lines:
        log.info("%s", line)
