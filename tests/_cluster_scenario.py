"""One cluster run shared by ``test_multinode.py`` and ``test_s3_storage.py``, made at most once.

The run (``_cluster_pipeline.py``: a 3-node ``ray.cluster_utils.Cluster`` running caption,
class_descriptions and a 2-worker train_regularized with every output on ``s3://``) costs about
a minute on 2 cores, mostly Ray and Train start-up; both files check a different side of the
same run (where the work ran; what landed on S3) instead of paying for it twice. It is also the
realistic combination: on more than one node, Train's ``storage_path`` must be shared storage.

The run is cached here, per process: ``conftest`` starts it in the background when the suite
reaches its single-core stretch (if either module is selected), and the first module to need it
waits for it; a failed run is remembered and reported to the second module instead of being
repeated. The S3 server is a moto server on 127.0.0.1 that lives until the test process exits.
Without a usable moto the run uses a local folder, so the placement checks still run and the S3
checks skip.
"""

from __future__ import annotations

import atexit
import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _background import Background
from _isolated_ray import run_isolated

BUCKET = "lmm-clip"
RUN_TIMEOUT = 480.0
DRIVER = Path(__file__).with_name("_cluster_pipeline.py")


@dataclass
class S3Server:
    """A running S3-compatible endpoint and the environment that points clients at it."""

    env: dict[str, str]
    bucket: str = BUCKET


@dataclass
class ClusterRun:
    root: str  # storage root of every job: s3://BUCKET/run, or a local folder without moto
    s3: S3Server | None
    result: dict[str, Any]
    log: Path


@dataclass
class _Cache:
    server: S3Server | None = None
    server_reason: str = ""
    run: ClusterRun | None = None
    run_failure: str = ""
    pending: Background | None = None  # the run, started


_cache = _Cache()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_server() -> tuple[S3Server | None, str]:
    """The shared moto S3 server (started on first call), or ``None`` and the reason."""
    if _cache.server or _cache.server_reason:
        return _cache.server, _cache.server_reason
    try:
        import moto
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        _cache.server_reason = f"needs moto[server] (the [dev] extra): {exc}"
        return None, _cache.server_reason
    if moto.__version__ in ("5.2.0", "5.2.1"):
        _cache.server_reason = (
            f"moto {moto.__version__} answers CompleteMultipartUpload with a root tag pyarrow "
            "rejects (getmoto/moto#10055): install moto[server]>=5.2.2"
        )
        return None, _cache.server_reason
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a log line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    atexit.register(server.stop)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never wait for an instance-metadata service
    }
    boto3.client(
        "s3",
        region_name=env["AWS_DEFAULT_REGION"],
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=BUCKET)
    _cache.server = S3Server(env=env)
    return _cache.server, ""


def start_cluster_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Start the shared run in the background (once per process).

    It runs in its own Ray, in a child process, so it can overlap the tests before the modules
    that use it (``conftest`` starts it): most of its minute is processes starting up.
    """
    if _cache.pending is not None:
        return
    server, _ = s3_server()
    workdir = tmp_path_factory.mktemp("cluster_run")
    root = f"s3://{server.bucket}/run" if server else str(workdir / "storage")
    result_path, log = workdir / "result.json", workdir / "pipeline.log"

    def run() -> ClusterRun:
        run_isolated(
            ["python", str(DRIVER), root, str(result_path)],
            log=log,
            timeout=RUN_TIMEOUT,
            extra_env=server.env if server else None,
        )
        result = json.loads(result_path.read_text())
        return ClusterRun(root=root, s3=server, result=result, log=log)

    _cache.pending = Background(run)


def cluster_run(tmp_path_factory: pytest.TempPathFactory) -> ClusterRun:
    """The shared run's result (started on the first call in this process, if not before)."""
    if _cache.run is not None:
        return _cache.run
    if _cache.run_failure:
        pytest.fail(f"the shared cluster run failed earlier in this session:\n{_cache.run_failure}")
    start_cluster_run(tmp_path_factory)
    try:
        _cache.run = _cache.pending.result()
    except pytest.fail.Exception as exc:
        _cache.run_failure = str(exc)
        raise
    return _cache.run
