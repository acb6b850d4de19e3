"""``s3://`` storage end to end, against an S3-compatible server (moto) on 127.0.0.1.

How the endpoint reaches every reader and writer: pyarrow's ``FileSystem.from_uri`` (used by
``core.storage`` and by Ray Train for ``storage_path``) reads ``AWS_ENDPOINT_URL`` and the usual
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_DEFAULT_REGION``; boto3 reads the same.
The jobs run in a child process that starts its own Ray (a 3-node simulated cluster shared with
``test_multinode.py``, see ``_cluster_scenario.py``) with that environment, so Ray Data tasks,
captioning and encoder actors and Train workers on every node inherit it; the session's Ray could
not be given it. This process reads everything back through S3.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _cluster_scenario import ClusterRun, S3Server, cluster_run, s3_server

from core import storage

pytestmark = pytest.mark.ray

EPOCHS = 2  # as in _cluster_pipeline.py


@pytest.fixture(scope="module")
def server() -> S3Server:
    server, reason = s3_server()
    if server is None:
        pytest.skip(reason)
    return server


@pytest.fixture
def s3(server, monkeypatch) -> S3Server:
    """This process talks to the test server too (environment restored after each test)."""
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    return server


@pytest.fixture(scope="module")
def run(server, tmp_path_factory) -> ClusterRun:
    run = cluster_run(tmp_path_factory)
    assert run.root == f"s3://{server.bucket}/run"
    return run


def _keys(bucket: str, prefix: str) -> list[str]:
    import boto3

    pages = (
        boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def test_storage_helpers_round_trip(s3) -> None:
    """The primitives every job uses, on real S3 requests (no Ray)."""
    import pyarrow as pa

    root = f"s3://{s3.bucket}/helpers"
    storage.write_json(storage.join(root, "a.json"), {"x": 1})
    assert storage.read_json(storage.join(root, "a.json")) == {"x": 1}
    for i in range(2):
        storage.write_parquet(pa.table({"v": [i, i]}), storage.join(root, "t", f"p{i}.parquet"))
    storage.write_bytes(storage.join(root, "t", "_summary.json"), b"{}")  # skipped by readers
    assert [p.rsplit("/", 1)[1] for p in storage.list_files(storage.join(root, "t"))] == [
        "p0.parquet",
        "p1.parquet",
    ]
    values = storage.read_parquet(storage.join(root, "t")).column("v").to_pylist()
    assert sorted(values) == [0, 0, 1, 1]
    assert storage.exists(storage.join(root, "t")) and not storage.exists(storage.join(root, "no"))
    assert "helpers/t/p0.parquet" in _keys(s3.bucket, "helpers/")


def test_every_stage_writes_its_objects(run, s3) -> None:
    keys = _keys(s3.bucket, "run/")
    images = [k for k in keys if k.startswith("run/demo/images/") and k.endswith(".png")]
    assert len(images) == 48
    expected = {
        "run/demo/manifest.parquet",
        "run/captions/_summary.json",
        "run/class_means.safetensors",
        "run/class_means.json",
        "run/runs/cluster/metrics.jsonl",
    }
    assert expected <= set(keys)
    assert any(k.startswith("run/captions/part-") and k.endswith(".parquet") for k in keys)
    parts = [k.split("/") for k in keys if k.startswith("run/runs/cluster/checkpoint_")]
    checkpoints = {p[3] for p in parts if len(p) == 5}  # folders, not the manager's snapshot
    assert len(checkpoints) == EPOCHS  # keep_checkpoints=2 keeps both epochs
    for name in checkpoints:
        for file in ("model.safetensors", "train_state.pt", "meta.json"):
            assert f"run/runs/cluster/{name}/{file}" in keys


def test_outputs_read_back_through_s3(run, s3) -> None:
    from core.captioning.stage import read_captions
    from core.data.manifest import read_manifest
    from core.models.clip_classifier import load_classifier
    from core.text.class_means import load_class_means

    root = run.root
    manifest = read_manifest(f"{root}/demo/manifest.parquet")
    assert manifest.num_rows == 48 and all(p.startswith(root) for p in manifest["path"].to_pylist())
    captions = read_captions(f"{root}/captions")
    descriptions = manifest["description"].to_pylist()
    expected = dict(zip(manifest["id"].to_pylist(), descriptions, strict=True))
    got = dict(zip(captions["id"].to_pylist(), captions["caption"].to_pylist(), strict=True))
    assert got == expected
    # The second caption run found every id already on S3 and captioned nothing.
    summary = storage.read_json(f"{root}/captions/_summary.json")
    assert (summary["captioned"], summary["skipped"]) == (0, 48)
    assert run.result["caption_again"]["skipped"] == 48

    means = load_class_means(f"{root}/class_means.safetensors")
    assert len(means.classes) == 8 and tuple(means.means.shape) == (8, 32)

    lines = storage.read_bytes(f"{root}/runs/cluster/metrics.jsonl").decode().splitlines()
    history = [json.loads(line) for line in lines]
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    assert {"train_ce", "train_reg", "val_acc", "test_acc"} <= set(history[-1])
    assert history == run.result["train_history"]

    assert f"{root}/runs/cluster/metrics.jsonl" in storage.list_files(f"{root}/runs/cluster")
    metas = [k for k in _keys(s3.bucket, "run/runs/cluster/checkpoint_") if k.endswith("meta.json")]
    model, meta, _ = load_classifier(f"s3://{s3.bucket}/{Path(sorted(metas)[-1]).parent}")
    assert meta["epoch"] == EPOCHS - 1 and model.head.out_features == 8
    # The checkpoints the job reports are URIs a later job can open as they are.
    latest = run.result["train_latest_checkpoint"]
    assert latest == f"s3://{s3.bucket}/{Path(sorted(metas)[-1]).parent}"
    assert run.result["train_best_checkpoint"].startswith(f"{root}/runs/cluster/checkpoint_")
    assert load_classifier(run.result["train_best_checkpoint"])[1]["classes"] == meta["classes"]


def test_job_output_names_the_s3_locations(run) -> None:
    text = run.log.read_text(errors="replace")
    assert f"captions: {run.root}/captions" in text
    assert f"class means: {run.root}/class_means.safetensors" in text
    assert f"metrics: {run.root}/runs/cluster/metrics.jsonl" in text
