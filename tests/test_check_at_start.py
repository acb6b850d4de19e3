"""Every job checks its preset at start, before Ray; the training check is the method's own.

No Ray here: a job whose check fails must never reach ``init_ray`` (patched to fail the test),
and a passing check is called directly on the parsed config.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from core.check.context import Context
from core.check.presets import run_check
from core.check.report import Report
from core.check.start import CheckFailed, check_at_start
from core.config import TrainRegularizedConfig, load_config
from core.train.method import Method
from ray_jobs import cli

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "ray_jobs" / "configs"
REGULARIZED_DEMO = CONFIGS / "train_regularized_demo.yaml"
CLUSTER = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A storage root with the demo manifest and two class-means files: tiny-vit's width (32)
    and another CLIP's (64)."""
    from core.data.demo import generate_demo_dataset
    from core.data.manifest import read_manifest
    from core.text.class_means import ClassMeans, save_class_means

    root = tmp_path_factory.mktemp("start")
    manifest = generate_demo_dataset(str(root / "demo"), images_per_class=2, image_size=16)
    classes = sorted(set(read_manifest(manifest).column("label").to_pylist()))
    n = len(classes)
    for name, width, clip in (("class_means", 32, "tiny-vit"), ("wide_means", 64, "other-clip")):
        means = ClassMeans(classes, torch.zeros(n, width), [1] * n, prompts=["p"], clip_model=clip)
        save_class_means(str(root / f"{name}.safetensors"), means)
    return root


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a job gets as far as starting Ray."""
    import ray

    import ray_jobs.train_regularized

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was initialised before the check failed")

    monkeypatch.setattr(ray_jobs.train_regularized, "init_ray", refuse)
    monkeypatch.setattr(cli, "init_ray", refuse)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(cli, "DEBUG", False)
    monkeypatch.setattr(cli, "setup_logging", lambda: None)
    monkeypatch.setattr(sys, "argv", ["job"])


def _run_train_regularized(capsys, *args: str) -> tuple[int, list[str]]:
    """``python -m ray_jobs.train_regularized ARGS`` in-process: (exit status, stderr lines).
    ``no_ray`` makes any start of Ray fail the test (the session's Ray may already be up)."""
    from ray_jobs import train_regularized

    with pytest.raises(SystemExit) as info:
        cli.run_main(lambda: train_regularized.main(list(args)))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return int(info.value.code), [line for line in err.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# A wrong preset fails in seconds, before Ray, with one line
# --------------------------------------------------------------------------------------------


def test_class_means_of_another_width_fail_before_ray(inputs, no_ray, capsys) -> None:
    code, lines = _run_train_regularized(
        capsys,
        "--config",
        str(REGULARIZED_DEMO),
        f"storage={inputs}",
        f"class_means={inputs / 'wide_means.safetensors'}",
    )
    assert code == 1
    assert [line for line in lines if line.startswith(("check: failed", "error"))] == lines[-1:]
    assert lines[-1].startswith("check: failed: mismatch: class-means width"), lines
    assert "64" in lines[-1] and "32" in lines[-1] and "tiny-vit" in lines[-1]


def test_a_missing_clip_weight_file_fails_before_ray(inputs, no_ray, capsys) -> None:
    missing = inputs / "no-such-clip.pt"
    code, lines = _run_train_regularized(
        capsys, f"storage={inputs}", "clip.model_name=tiny-vit", f"clip.pretrained={missing}"
    )  # no --config: the check works from the parsed config alone
    assert code == 1
    assert lines[-1] == f"check: failed: missing file clip.pretrained: {missing}"


def test_skip_check_goes_straight_to_the_job(inputs, no_ray, capsys) -> None:
    """With ``--skip-check`` the same wrong preset gets as far as starting Ray."""
    from ray_jobs import train_regularized

    wide = inputs / "wide_means.safetensors"
    argv = ["--skip-check", f"storage={inputs}", "clip.model_name=tiny-vit", f"class_means={wide}"]
    with pytest.raises(AssertionError, match="Ray was initialised"):
        train_regularized.main(argv)


def test_the_command_line_exits_with_one_line(inputs, tmp_path) -> None:
    """The real entrypoint: exit status 1, the ``check:`` line last, no traceback, no Ray."""
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ray_jobs.train_regularized",
            "--config",
            str(REGULARIZED_DEMO),
            f"storage={inputs}",
            f"class_means={inputs / 'wide_means.safetensors'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("check: failed: mismatch: class-means width"), lines
    assert "Traceback" not in result.stderr
    assert "Ray" not in result.stderr.replace("ray_jobs", "")  # no Ray start-up lines
    assert "INFO core.check: job: train_regularized" in result.stderr  # the report was logged


# --------------------------------------------------------------------------------------------
# Correct tiny presets pass at start
# --------------------------------------------------------------------------------------------


def test_the_tiny_regularized_preset_passes_at_start(inputs, caplog) -> None:
    cfg = load_config(TrainRegularizedConfig, str(REGULARIZED_DEMO), [f"storage={inputs}"])
    with caplog.at_level(logging.INFO, logger="core.check"):
        result = check_at_start(cfg, "train_regularized", "", REGULARIZED_DEMO, CLUSTER)
    assert result.last_line.startswith("check: ok ") and result.fits
    assert "agree: class-means width" in caplog.text
    assert result.last_line in caplog.text  # the last line is logged too


def test_tiny_clip_decoder_and_linear_probe_presets_pass_at_start(inputs) -> None:
    """CLIP-Decoder generates its demo (no file needed); the probe reads the demo manifest."""
    from core.config import ClipDecoderTrainConfig
    from core.train.registry import get_method

    decoder = load_config(ClipDecoderTrainConfig, str(CONFIGS / "train_clip_decoder_demo.yaml"))
    assert check_at_start(decoder, "train_clip_decoder", cluster=CLUSTER).fits
    probe_cls = get_method("linear_probe").config_class
    probe = load_config(probe_cls, str(CONFIGS / "train_linear_probe_demo.yaml"))
    probe = dataclasses.replace(probe, storage=str(inputs))
    assert check_at_start(probe, "train", "linear_probe", cluster=CLUSTER).fits


def test_missing_inputs_fail_at_start(tmp_path) -> None:
    """At start every file the job reads is required (``--require-files``)."""
    cfg = load_config(TrainRegularizedConfig, None, [f"storage={tmp_path}"])
    with pytest.raises(
        CheckFailed, match=r"^missing file class_means: .*class_means\.safetensors$"
    ):
        check_at_start(cfg, "train_regularized")


def test_a_memory_estimate_beyond_the_gpu_is_a_warning(inputs, tmp_path, caplog) -> None:
    """A GPU node type the check knows no memory for: ``fits=no``, logged as a warning; the job
    starts anyway."""
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        "available_node_types:\n"
        "  gpu_odd:\n"
        "    resources: {CPU: 8, GPU: 1}\n"
        "    node_config: {InstanceType: x-unknown.large}\n"
        "    max_workers: 1\n"
    )
    cfg = load_config(
        TrainRegularizedConfig, str(REGULARIZED_DEMO), [f"storage={inputs}", "run.use_gpu=true"]
    )
    with caplog.at_level(logging.INFO, logger="core.check"):
        result = check_at_start(cfg, "train_regularized", cluster=cluster)
    assert result.fits is False and "fits=no" in result.last_line
    warnings = [
        r for r in caplog.records if r.name == "core.check" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1 and "fits=no" in warnings[0].getMessage()


# --------------------------------------------------------------------------------------------
# The training check belongs to the method
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _PlainConfig:
    """A method config without clip / run sections."""

    size: int = 1


class _PlainMethod(Method, name="plain_test_method", config_class=_PlainConfig):
    pass


class _CheckedMethod(Method, name="checked_test_method", config_class=_PlainConfig):
    calls: ClassVar[list] = []

    def check(self, ctx, cfg) -> None:
        self.calls.append(cfg)
        ctx.report.note("checked by checked_test_method")


METHOD = _CheckedMethod()


@pytest.fixture
def registered(monkeypatch):
    """``checked_test_method`` registered as a module with ``METHOD`` (this one)."""
    from core.train import registry

    monkeypatch.setitem(registry.METHODS, "checked_test_method", __name__)
    registry.get_method.cache_clear()
    yield
    registry.get_method.cache_clear()


def test_a_registered_methods_own_check_is_called(registered) -> None:
    cfg = _PlainConfig(size=3)
    report = Report()
    _CheckedMethod.calls.clear()
    run_check(Context(report, []), "train", "checked_test_method", cfg)
    assert _CheckedMethod.calls == [cfg]
    assert report.lines == [
        "job: train --method checked_test_method",
        "checked by checked_test_method",
    ]


def test_each_training_job_dispatches_to_its_method(monkeypatch) -> None:
    from core.train.registry import get_method

    called = []
    for name in ("regularized", "clip_decoder"):
        method = get_method(name)
        monkeypatch.setattr(method, "check", lambda ctx, cfg, name=name: called.append(name))
    run_check(Context(Report(), []), "train_regularized", "", object())
    run_check(Context(Report(), []), "train_clip_decoder", "", object())
    assert called == ["regularized", "clip_decoder"]


def test_the_default_check_notes_a_method_without_one() -> None:
    report = Report()
    _PlainMethod().check(Context(report, []), _PlainConfig())
    assert report.lines == [
        "method plain_test_method: no check (its config has no clip and run sections and "
        "_PlainMethod defines no check): models, agreements and memory not checked"
    ]
    assert report.last_line(True).startswith("check: ok params=0 ")


def test_the_default_check_is_the_classifier_check_for_a_clip_config(monkeypatch) -> None:
    from core.check import training

    seen = []
    monkeypatch.setattr(training, "check_classifier", lambda ctx, cfg, m: seen.append((cfg, m)))
    cfg = TrainRegularizedConfig()
    _PlainMethod().check(Context(Report(), []), cfg)
    assert seen == [(cfg, "plain_test_method")]
