"""Failures a user can cause end a job with one line naming the file or field (no Ray needed).

Bad checkpoints are opened on the driver before any prediction actor starts, a checkpoint whose
unpickling would run code never runs it, Ray Train's wrapper is unwrapped to the worker's own
error, and every JSON the project writes is strict (no NaN).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from core import storage
from core.config import ClipConfig
from core.data.manifest import write_manifest
from core.models.clip_classifier import (
    LEGACY_MODEL_FILE,
    META_FILE,
    MODEL_FILE,
    build_classifier,
    load_classifier,
    save_classifier,
)
from ray_jobs import cli

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture(autouse=True)
def _quiet_cli(monkeypatch):
    """No Ray, no logging set-up, no debug flag left over from another test."""
    monkeypatch.setattr(cli, "DEBUG", False)
    monkeypatch.setattr(cli, "setup_logging", lambda: None)
    monkeypatch.setattr(sys, "argv", ["job"])
    import ray.data

    import ray_jobs.predict

    monkeypatch.setattr(ray_jobs.predict, "init_ray", lambda *a, **k: None)

    def no_actors(*args, **kwargs):
        raise AssertionError("the prediction actors started before the inputs were checked")

    monkeypatch.setattr(ray.data, "from_arrow", no_actors)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    model, _ = build_classifier(ClipConfig(), len(CLASSES))
    folder = tmp_path / "run" / "checkpoint_0"
    meta = {
        "method": "regularized",
        "clip": {"model_name": "tiny-vit", "pretrained": "", "seed": 0},
        "classes": CLASSES,
        "epoch": 0,
    }
    save_classifier(model, str(folder), meta)
    return folder


@pytest.fixture
def manifest(tmp_path: Path) -> str:
    table = pa.table(
        {
            "id": ["a", "b"],
            "path": ["/nowhere/a.png", "/nowhere/b.png"],
            "label": ["cat", "dog"],
            "split": ["train", "train"],
        }
    )
    return write_manifest(table, str(tmp_path / "manifest.parquet"))


def _predict(capsys, *args: str) -> tuple[int, list[str]]:
    """Run the predict job as ``python -m ray_jobs.predict`` would: (exit status, stderr lines)."""
    from ray_jobs.predict import main

    with pytest.raises(SystemExit) as info:
        cli.run_main(lambda: main(list(args)))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return info.value.code, [line for line in err.splitlines() if line.strip()]


def _error_line(lines: list[str]) -> str:
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


class _RunsCode:
    """Unpickling this creates ``marker``: a stand-in for any code a pickle can run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_code_payload(folder: Path, marker: Path) -> Path:
    (folder / MODEL_FILE).unlink(missing_ok=True)
    path = folder / LEGACY_MODEL_FILE
    torch.save({"head.weight": _RunsCode(str(marker))}, path)
    return path


def test_the_code_payload_really_runs_code_when_unpickled(tmp_path: Path) -> None:
    """Guards the tests below: without weights_only, loading the payload creates the marker."""
    folder = tmp_path / "c"
    folder.mkdir()
    marker = tmp_path / "ran"
    path = _write_code_payload(folder, marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("force_unsafe", [False, True])
def test_pickled_code_checkpoint_is_refused_and_never_runs(
    checkpoint, manifest, tmp_path, capsys, monkeypatch, force_unsafe
) -> None:
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code_ran"
    path = _write_code_payload(checkpoint, marker)
    code, lines = _predict(capsys, f"checkpoint={checkpoint}", f"manifest={manifest}")
    line = _error_line(lines)
    assert code == 1 and str(path) in line and "refused" in line
    assert not marker.exists()


@pytest.mark.parametrize("name", [MODEL_FILE, LEGACY_MODEL_FILE])
def test_truncated_weights_are_one_line_naming_the_file(checkpoint, manifest, capsys, name) -> None:
    path = checkpoint / name
    if name == LEGACY_MODEL_FILE:  # an older checkpoint: torch file, no safetensors
        state = load_classifier(str(checkpoint))[0].state_dict()
        (checkpoint / MODEL_FILE).unlink()
        torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, lines = _predict(capsys, f"checkpoint={checkpoint}", f"manifest={manifest}")
    line = _error_line(lines)
    assert code == 1 and str(path) in line and "not a readable" in line


@pytest.mark.parametrize(
    ("meta_text", "message"),
    [
        ('{"method": "regularized", "clip": ', "not valid JSON"),
        ('{"method": "no_such_method", "clip": {}, "classes": []}', "unknown method"),
        ('{"method": "regularized", "classes": ["a"]}', "no 'clip' entry"),
        ('{"clip": {"model_name": "no-such-clip"}, "classes": ["a"]}', "not an open_clip model"),
    ],
)
def test_bad_meta_json_is_one_line_naming_it(
    checkpoint, manifest, capsys, meta_text, message
) -> None:
    (checkpoint / META_FILE).write_text(meta_text)
    code, lines = _predict(capsys, f"checkpoint={checkpoint}", f"manifest={manifest}")
    line = _error_line(lines)
    assert code == 1 and str(checkpoint / META_FILE) in line and message in line


def test_weights_of_another_model_are_refused(checkpoint, manifest, capsys) -> None:
    other, _ = build_classifier(ClipConfig(), len(CLASSES) + 2)
    save_classifier(other, str(checkpoint), json.loads((checkpoint / META_FILE).read_text()))
    code, lines = _predict(capsys, f"checkpoint={checkpoint}", f"manifest={manifest}")
    line = _error_line(lines)
    assert code == 1 and str(checkpoint / MODEL_FILE) in line and "head.weight" in line


def test_an_older_model_pt_checkpoint_still_loads(checkpoint) -> None:
    """Checkpoints written before safetensors hold ``model.pt``: same model, same outputs."""
    model, meta, _ = load_classifier(str(checkpoint))
    (checkpoint / MODEL_FILE).unlink()
    torch.save(model.state_dict(), checkpoint / LEGACY_MODEL_FILE)
    old, old_meta, _ = load_classifier(str(checkpoint))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert old_meta == meta
    assert torch.equal(old(images)[0], model(images)[0])


def test_predicting_an_empty_split_is_an_error_naming_manifest_and_split(
    checkpoint, manifest, capsys
) -> None:
    code, lines = _predict(
        capsys, f"checkpoint={checkpoint}", f"manifest={manifest}", "splits=[test]"
    )
    line = _error_line(lines)
    assert code == 1 and manifest in line and "split(s) test" in line


# ---------------------------------------------------------------------------------------------
# run_main: Ray Train's wrapper unwrapped, --debug, bugs keep their traceback
# ---------------------------------------------------------------------------------------------


def _fails_in_workers(*errors: Exception):
    """What ``TorchTrainer.fit()`` raises in Ray 2.60 when the workers' loop raises."""
    from ray.train import WorkerGroupError

    def main() -> None:
        raise WorkerGroupError("snippets", {rank: e for rank, e in enumerate(errors)})

    return main


def test_a_worker_user_error_is_one_line(capsys) -> None:
    # rank 0 only saw its peer vanish; rank 1 raised the user's error
    main = _fails_in_workers(RuntimeError("connection reset by peer"), ValueError("x: bad"))
    with pytest.raises(SystemExit) as info:
        cli.run_main(main)
    err = capsys.readouterr().err
    assert info.value.code == 1 and err == "error: x: bad\n"


def test_debug_shows_the_traceback(capsys) -> None:
    from ray.train import WorkerGroupError

    cli.DEBUG = True
    with pytest.raises(WorkerGroupError):
        cli.run_main(_fails_in_workers(ValueError("x: bad")))


def test_debug_is_a_flag_of_every_job(tmp_path) -> None:
    from core.config import PredictJobConfig

    cli.parse_job_config(PredictJobConfig, "predict", ["--debug", "checkpoint=x"])
    assert cli.DEBUG


def test_a_bug_keeps_its_traceback() -> None:
    from ray.train import WorkerGroupError

    with pytest.raises(WorkerGroupError) as info:
        cli.run_main(_fails_in_workers(RuntimeError("a bug")))
    assert cli.root_cause(info.value).args == ("a bug",)


def test_a_multi_line_message_is_printed_on_one_line(capsys) -> None:
    def main() -> None:
        raise FileNotFoundError("manifest: /x.parquet:\n  no such file")

    with pytest.raises(SystemExit):
        cli.run_main(main)
    assert capsys.readouterr().err == "error: manifest: /x.parquet: no such file\n"


# ---------------------------------------------------------------------------------------------
# Strict JSON
# ---------------------------------------------------------------------------------------------


def _strict(text: str):
    def refuse(name: str):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_files_hold_null_for_nan_and_infinity(tmp_path) -> None:
    path = tmp_path / "a.json"
    value = {
        "accuracy": float("nan"),
        "per_class": {"cat": {"accuracy": float("inf")}, "dog": {"accuracy": 0.5}},
        "list": [1.0, float("-inf"), np.float32("nan"), np.float64(0.25), (2, float("nan"))],
        "count": 3,
    }
    storage.write_json(path, value)
    back = _strict(path.read_text())
    assert back == {
        "accuracy": None,
        "per_class": {"cat": {"accuracy": None}, "dog": {"accuracy": 0.5}},
        "list": [1.0, None, None, 0.25, [2, None]],
        "count": 3,
    }
    line = storage.dumps_json({"epoch": 0, "val_acc": float("nan")})
    assert _strict(line) == {"epoch": 0, "val_acc": None}


def test_accuracy_of_only_failed_images_is_written_as_null(tmp_path) -> None:
    from core.predict import PREDICTION_SCHEMA, accuracy_report

    rows = [
        {"id": "a", "label": "cat", "predicted": "", "top_classes": [], "top_probs": []}
        | {"error": "not a recognised image format"}
    ]
    report = accuracy_report(pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA))
    assert report["failed"] == 1 and math.isnan(report["accuracy"])
    storage.write_json(tmp_path / "accuracy.json", report)
    assert _strict((tmp_path / "accuracy.json").read_text())["accuracy"] is None
