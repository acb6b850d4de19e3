"""``ray job submit`` of the captioning job to a real Ray head with a job server, as on a cluster.

The head is ``ray start --head --block`` in a child process with its own temp folder and free
ports, its dashboard / job server on 127.0.0.1 only, and token authentication on (Ray 2.60): the
CLI and the Python client both have to present the token. ``ray stop`` is not used for teardown
because it stops every Ray of this user on the machine; the head is ended through its own
process (``--block`` stops its Ray on SIGTERM) and leftovers by pid (see ``_isolated_ray``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from _background import Background
from _isolated_ray import REPO, IsolatedRay, isolated_ray, run_logged, tail

from core import storage
from core.data.manifest import read_manifest

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

pytestmark = pytest.mark.ray

# Uploaded with --working-dir: the code and configs, not outputs or caches (.gitignore applies too).
EXCLUDES = [".git", "outputs", "**/__pycache__", ".ruff_cache", ".pytest_cache", "*.egg-info"]
START_TIMEOUT = 120.0
JOB_TIMEOUT = 300.0


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Head:
    """A ``ray start --head --block`` process and the address of its job server."""

    def __init__(self, iso: IsolatedRay, log: Path) -> None:
        gcs, dash, client, agent, agent_grpc, env_agent, metrics = _free_ports(7)
        self.iso = iso
        self.log = log
        self.address = f"http://127.0.0.1:{dash}"
        cmd = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            f"--port={gcs}", "--num-cpus=4", "--disable-usage-stats",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
            f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={env_agent}",
            f"--metrics-export-port={metrics}",
            f"--temp-dir={iso.tmpdir}/ray",
        ]  # fmt: skip
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        # No draining on SIGTERM (nothing to hand over here): the head stops at once.
        env = {**iso.env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.iso.token}"}

    def client(self) -> JobSubmissionClient:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers=self.auth_headers())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"ray start exited with {self.proc.returncode}:\n{tail(self.log)}")
            request = urllib.request.Request(
                f"{self.address}/api/jobs/", headers=self.auth_headers()
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        pytest.fail(f"job server not up after {START_TIMEOUT:.0f}s:\n{tail(self.log)}")

    def stop(self) -> None:
        """SIGTERM to ``ray start --block`` only: it stops its own Ray processes in order (a
        signal to the whole group would stop the GCS first and stall the raylet's shutdown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()


@dataclass
class Submitted:
    """What the head and the submitted job left: the answer without the token, the job's end."""

    refused_with: int  # HTTP status of a request without the token
    status: object  # JobStatus
    logs: str
    out: Path  # the job's storage folder
    leftovers: list[int]  # head processes still alive after it was stopped


def submit_scenario(logs: Path, out: Path) -> Submitted:
    """Start the head, ask without the token, submit the caption job, wait for its end, stop."""
    with isolated_ray() as iso:
        head = Head(iso, logs / "head.log")
        try:
            head.wait_ready()
            try:
                urllib.request.urlopen(f"{head.address}/api/jobs/", timeout=10)
                refused_with = 200
            except urllib.error.HTTPError as exc:
                refused_with = exc.code
            submission_id = f"caption-{uuid.uuid4().hex[:8]}"
            submit = [
                "python", "-m", "ray.scripts.scripts", "job", "submit",
                "--address", head.address, "--submission-id", submission_id,
                "--working-dir", ".", "--runtime-env-json", json.dumps({"excludes": EXCLUDES}),
                "--no-wait", "--",
                "python", "-m", "ray_jobs.caption", "--config",
                "ray_jobs/configs/caption_demo.yaml",
                f"storage={out}", "demo.images_per_class=3", "demo.image_size=32",
            ]  # fmt: skip
            # The CLI sends the token because RAY_AUTH_MODE=token and RAY_AUTH_TOKEN are in its
            # environment.
            run_logged(submit, head.iso, logs / "submit.log", timeout=120)
            client = head.client()
            deadline = time.monotonic() + JOB_TIMEOUT
            status = client.get_job_status(submission_id)
            while not status.is_terminal() and time.monotonic() < deadline:
                time.sleep(0.25)
                status = client.get_job_status(submission_id)
            logs_text = client.get_job_logs(submission_id)
        finally:
            head.stop()
            leftovers = iso.wait_gone(15.0)
    return Submitted(refused_with, status, logs_text, out, leftovers)


def start_submit_scenario(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Start it in the background (once per process): its head and job are child processes
    with their own Ray, so it can overlap the tests before this module (``conftest``)."""
    if _pending.get("run") is None:
        logs, out = tmp_path_factory.mktemp("head"), tmp_path_factory.mktemp("submit") / "out"
        _pending["run"] = Background(submit_scenario, logs, out)


_pending: dict[str, Background] = {}


@pytest.fixture(scope="module")
def submitted(tmp_path_factory) -> Submitted:
    start_submit_scenario(tmp_path_factory)
    result = _pending["run"].result()
    assert not result.leftovers, f"the head left processes behind (now ended): {result.leftovers}"
    return result


def test_job_server_refuses_requests_without_the_token(submitted) -> None:
    assert submitted.refused_with in (401, 403)


def test_submitted_caption_job_succeeds_and_writes_parquet(submitted) -> None:
    from ray.job_submission import JobStatus

    logs, out = submitted.logs, submitted.out
    assert submitted.status == JobStatus.SUCCEEDED, f"job ended {submitted.status}:\n{logs[-6000:]}"
    assert "captioning done: captioned=24 skipped=0 failed=0" in logs

    manifest = read_manifest(str(out / "demo" / "manifest.parquet"))
    captions = storage.read_parquet(str(out / "captions"))
    assert captions.num_rows == manifest.num_rows == 24
    descriptions = manifest["description"].to_pylist()
    expected = dict(zip(manifest["id"].to_pylist(), descriptions, strict=True))
    got = dict(zip(captions["id"].to_pylist(), captions["caption"].to_pylist(), strict=True))
    assert got == expected
