"""Run a command that starts its own Ray, isolated from the test session and from other users.

Why each setting:

- ``RAY_TMPDIR`` → a fresh short folder: the new Ray's sessions, sockets and its
  ``ray_current_cluster`` address file live there, so a plain ``ray.init()`` elsewhere on this
  machine (the session fixture, another developer's tests) never discovers and joins it. Short,
  because Unix socket paths are limited to ~107 bytes.
- ``RAY_AUTH_MODE=token`` + a random ``RAY_AUTH_TOKEN``: in Ray 2.60 a new local cluster from
  ``ray.init()`` has token authentication on by default (writing ``~/.ray/auth_token`` if there
  is none), ``ray start --head`` turns it on when a token exists, and clients (``ray job submit``,
  the job SDK) send the token only when ``RAY_AUTH_MODE=token`` is in their environment. Setting
  both here makes every server and client of the child agree, token file or not.
- no ``RAY_ADDRESS``: the child must not connect to whatever cluster the parent was told about.
- The temp folder's path appears on every command line of that Ray's processes, so leftovers can
  be found and ended by pid after the run without touching any other Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class IsolatedRay:
    """Environment for processes that start or talk to one private Ray instance."""

    tmpdir: str
    token: str
    env: dict[str, str] = field(default_factory=dict)

    def processes(self) -> list[int]:
        """Pids of live processes whose command line mentions this instance's temp folder."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                cmdline = Path("/proc", entry, "cmdline").read_bytes()
            except OSError:  # exited meanwhile, or not ours to read
                continue
            if self.tmpdir.encode() in cmdline:
                pids.append(int(entry))
        return pids

    def wait_gone(self, timeout: float) -> list[int]:
        """Give a stopping instance ``timeout`` seconds to exit; return the pids still alive."""
        deadline = time.monotonic() + timeout
        while (pids := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return pids

    def kill_leftovers(self, grace: float = 5.0) -> list[int]:
        """End this instance's remaining processes (SIGTERM, then SIGKILL); return their pids."""
        pids = self.processes()
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        for pid in self.wait_gone(grace):
            _signal(pid, signal.SIGKILL)
        return pids


def _signal(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


@contextmanager
def isolated_ray(extra_env: dict[str, str] | None = None) -> Iterator[IsolatedRay]:
    """Yield the environment of a private Ray; on exit end what is left of it and its files."""
    tmpdir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(
        RAY_TMPDIR=tmpdir,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
        RAY_DEDUP_LOGS="0",
    )
    env.update(extra_env or {})
    iso = IsolatedRay(tmpdir=tmpdir, token=token, env=env)
    try:
        yield iso
    finally:
        iso.kill_leftovers()
        shutil.rmtree(tmpdir, ignore_errors=True)


def run_logged(
    cmd: Sequence[str], iso: IsolatedRay, log: Path, timeout: float
) -> subprocess.CompletedProcess:
    """Run ``cmd`` in the repo root with ``iso``'s environment, output to ``log``; fail the test
    with the log's tail on a non-zero exit or a timeout (the whole process group is ended)."""
    if cmd and cmd[0] == "python":
        cmd = [sys.executable, *cmd[1:]]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            cwd=REPO,
            env=iso.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            pytest.fail(f"{cmd[:4]} timed out after {timeout:.0f}s:\n{tail(log)}")
    if rc != 0:
        pytest.fail(f"{cmd[:4]} exited with {rc}:\n{tail(log)}")
    return subprocess.CompletedProcess(list(cmd), rc)


def run_isolated(
    cmd: Sequence[str], log: Path, timeout: float, extra_env: dict[str, str] | None = None
) -> None:
    """``run_logged`` inside a fresh ``isolated_ray``; nothing of that Ray survives the call."""
    with isolated_ray(extra_env) as iso:
        run_logged(cmd, iso, log, timeout)
        leftovers = iso.wait_gone(15.0)
    assert not leftovers, f"the run left Ray processes behind (now ended): {leftovers}"


def tail(path: Path, chars: int = 6000) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no output)"
    return text[-chars:]
