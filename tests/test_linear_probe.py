"""A third method through the one engine: the frozen-encoder linear probe.

It lives in one module (``core/train/methods/linear_probe.py``) plus one registry line, and gets
everything else from the engine: Ray Train with 2 workers = 1 worker, checkpoints the prediction
job reads, and Tune sweeps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _background import Background

from core.config import load_config
from core.train.registry import METHODS, get_method

pytestmark = pytest.mark.ray

CORE = Path(__file__).resolve().parents[1] / "core"
EPOCHS = 2


def _config(storage: Path, manifest: str, *overrides: str):
    cls = get_method("linear_probe").config_class
    return load_config(
        cls,
        None,
        [
            f"storage={storage}",
            f"manifest={manifest}",
            f"run.epochs={EPOCHS}",
            "run.batch_size=8",
            "optim.head_lr=0.05",
            "optim.warmup_epochs=0",
            *overrides,
        ],
    )


def test_the_method_is_one_module_and_one_registry_line() -> None:
    """Nothing in core but its own module and its registry entry names the linear probe."""
    mentions = sorted(
        str(path.relative_to(CORE))
        for path in CORE.rglob("*.py")
        if "linear_probe" in path.read_text()
    )
    assert mentions == ["train/methods/linear_probe.py", "train/registry.py"]
    registry = (CORE / "train" / "registry.py").read_text().splitlines()
    assert sum("linear_probe" in line for line in registry) == 1
    assert METHODS["linear_probe"] == "core.train.methods.linear_probe"


@pytest.fixture(scope="module")
def sweep(ray_local, demo_dataset, tmp_path_factory):
    """A 2-trial grid over the head's learning rate (same settings as ``_config`` otherwise)."""
    from core.tune.config import TuneJobConfig
    from core.tune.sweep import run_sweep

    cfg = load_config(
        TuneJobConfig,
        None,
        [
            "target=linear_probe",
            f"storage={tmp_path_factory.mktemp('sweep')}",
            "name=probe",
            f"training.manifest={demo_dataset}",
            f"training.run.epochs={EPOCHS}",
            "training.run.batch_size=8",
            "training.optim.warmup_epochs=0",
            "space.optim.head_lr={grid: [0.001, 0.05]}",
            "searcher=grid",
            "scheduler.kind=fifo",
            "max_concurrent_trials=2",
            "verbose=0",
        ],
    )
    return run_sweep(cfg)


def _trial_history(sweep, trial: dict) -> list[dict]:
    from core.train.engine import read_history
    from core.tune.trial import run_dir

    return read_history(run_dir(sweep.sweep_dir, trial["trial_id"]))


@pytest.fixture(scope="module")
def two_workers(ray_local, sweep, over_the_limit):
    """The sweep's best preset given to the training job with two workers instead of the
    trials' one: one run that checks both that a preset reproduces its trial and that two
    workers train like one."""
    from ray_jobs import train

    return train.main(
        ["--method", "linear_probe", "--config", sweep.best_preset, "run.num_workers=2"]
    )


def test_the_best_preset_on_two_workers_trains_like_its_trial(sweep, two_workers) -> None:
    """Same global batch (8 = 2 x 4), same seed: the same loss every epoch up to float
    summation order (1e-5, as for every 2 = 1 check), and the same accuracies, as the best
    trial trained on one worker."""
    one = _trial_history(sweep, sweep.best)
    assert [h["epoch"] for h in one] == list(range(EPOCHS))
    assert two_workers.run_dir.endswith("/runs/probe_best")
    assert len(two_workers.history) == EPOCHS
    for a, b in zip(one, two_workers.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["train_acc"] == b["train_acc"]
        assert a["val_acc"] == b["val_acc"] and a["test_acc"] == b["test_acc"]
    # The head learns at 0.05: the loss falls from ln(8) (uniform over 8 classes) at the start.
    (fast,) = [r for r in sweep.records if r["config"]["optim.head_lr"] == 0.05]
    history = _trial_history(sweep, fast)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_encoder_stays_frozen_and_the_checkpoint_predicts(two_workers, demo_dataset) -> None:
    from core.models.clip_classifier import build_classifier
    from core.predict import load_classifier_checkpoint

    model, meta, _ = load_classifier_checkpoint(two_workers.latest_checkpoint)
    assert meta["method"] == "linear_probe" and meta["epoch"] == EPOCHS - 1
    fresh, _ = build_classifier(_config(Path("."), demo_dataset).clip, len(meta["classes"]))
    for (name, before), after in zip(
        fresh.encoder.state_dict().items(), model.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(before, after), f"encoder weight {name} changed"
    assert not torch.equal(fresh.head.weight, model.head.weight)


def test_a_two_trial_sweep_over_the_probe(sweep) -> None:
    assert len(sweep.records) == 2 and sweep.metric == "val_acc"
    assert {r["status"] for r in sweep.records} == {"TERMINATED"}
    assert sorted(r["config"]["optim.head_lr"] for r in sweep.records) == [0.001, 0.05]
    best = load_config(get_method("linear_probe").config_class, sweep.best_preset)
    assert best.optim.head_lr == sweep.best["config"]["optim.head_lr"]


@pytest.fixture(scope="module")
def over_the_limit(ray_local, demo_dataset, tmp_path_factory):
    """The training job on the demo manifest plus two unreadable training images, with
    ``run.max_bad_images=0``, started in the background beside the two-worker run (three worker
    CPUs of the four, the fourth decodes for both; beside the sweep's two trials there would be
    none left to decode with). Its test takes what it raised."""
    import pyarrow as pa

    from core.data.manifest import read_manifest, write_manifest
    from ray_jobs import train

    folder = tmp_path_factory.mktemp("over-limit")
    (folder / "empty.png").write_bytes(b"")
    rows = read_manifest(demo_dataset).to_pylist()
    good = next(r for r in rows if r["split"] == "train")
    for name in ("missing.png", "empty.png"):
        rows.append({**good, "id": name, "path": str(folder / name)})
    manifest = write_manifest(pa.Table.from_pylist(rows), str(folder / "manifest.parquet"))
    argv = ["--method", "linear_probe", f"storage={folder}", f"manifest={manifest}"]
    argv += ["run.epochs=2", "run.batch_size=8", "run.max_bad_images=0"]
    return folder, Background(train.main, argv)


def test_unreadable_images_past_the_limit_stop_the_job_with_one_line(
    over_the_limit, capsys
) -> None:
    """With ``run.max_bad_images=0`` the first epoch that meets an unreadable image ends the
    run: every worker stops before reporting it, and the job exits with one line naming the
    files (no traceback)."""
    from ray_jobs.cli import run_main

    folder, job = over_the_limit
    with pytest.raises(SystemExit) as info:
        run_main(job.result)  # what the job raised, through the command line's handler
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # The job's own logs went to whichever test was running; the handler prints one line.
    (last,) = err.strip().splitlines()
    assert last.startswith("error: run.max_bad_images: 2 training images cannot be read"), last
    assert str(folder / "missing.png") in last and str(folder / "empty.png") in last
    run_dir = folder / "runs" / "linear_probe"
    assert not (run_dir / "metrics.jsonl").exists()  # no epoch was reported
