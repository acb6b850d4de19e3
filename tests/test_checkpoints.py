"""Resuming survives unreadable checkpoints, and a run keeps only the checkpoints Ray Train lists.

Unit tests drive ``restore`` on checkpoint folders written here (no Ray). The same through Ray
Train, a run killed, its latest checkpoint truncated and an unrecorded folder planted beside it,
then resumed, is the pipeline's kill-and-rerun test (``test_pipeline.py``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from _crash import truncate
from torch import nn

from core.train.launch import recorded_checkpoints, remove_unrecorded_checkpoints
from core.train.loop_parts import STATE_FILE, restore, training_state
from core.train.schedule import build_scheduler


def _parts(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, optimizer, build_scheduler(optimizer, 1, 10, 0.0)


def _write_checkpoint(run: Path, name: str, epoch: int, seed: int) -> Path:
    """A checkpoint as the workers write it: train_state.pt (after one step) and meta.json."""
    model, optimizer, scheduler = _parts(seed)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    history = [{"epoch": e, "train_loss": float(seed * 10 + e)} for e in range(epoch + 1)]
    folder = run / name
    folder.mkdir(parents=True)
    torch.save(training_state(model, optimizer, scheduler, epoch, history), folder / STATE_FILE)
    (folder / "meta.json").write_text(json.dumps({"epoch": epoch}))
    return folder


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """Two checkpoints, epoch 0 (seed 1) and epoch 1 (seed 2, Ray Train's latest)."""
    run = tmp_path / "run"
    _write_checkpoint(run, "checkpoint_2026-01-01_00-00-00.000000", 0, seed=1)
    _write_checkpoint(run, "checkpoint_2026-01-01_00-01-00.000000", 1, seed=2)
    return run


def _latest(run: Path) -> Path:
    return run / "checkpoint_2026-01-01_00-01-00.000000"


def _restore(run: Path, monkeypatch, caplog) -> tuple[int, list, nn.Module, list[str]]:
    """``restore`` as a worker calls it, with Ray Train's latest checkpoint being ``_latest``."""
    import ray.train

    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint(_latest(run)))
    model, optimizer, scheduler = _parts(seed=99)
    with caplog.at_level(logging.INFO, logger="core.train.loop_parts"):
        start, history = restore(model, optimizer, scheduler, rank=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return start, history, model, warnings


def _weights_of(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / STATE_FILE, weights_only=True)["model"]


def _same_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_a_readable_latest_checkpoint_is_used_without_a_warning(run, monkeypatch, caplog):
    start, history, model, warnings = _restore(run, monkeypatch, caplog)
    assert (start, [h["train_loss"] for h in history]) == (2, [20.0, 21.0])
    assert _same_weights(model, _weights_of(_latest(run))) and warnings == []


def _missing_keys(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    torch.save({"model": state["model"], "epoch": state["epoch"]}, path)


def _other_model(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["model"]["0.weight"] = torch.zeros(5, 4)
    torch.save(state, path)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (truncate, "failed finding central directory"),
        (lambda p: p.write_text("not a torch file"), "Unsupported operand"),
        (_missing_keys, "no optimizer, scheduler, history entry"),
        (_other_model, "other shapes (0.weight)"),
        (lambda p: p.unlink(), "No such file"),
    ],
    ids=["truncated", "not_torch", "missing_keys", "other_model", "missing_file"],
)
def test_an_unreadable_latest_falls_back_to_the_newest_readable(
    run, monkeypatch, caplog, damage, reason
):
    bad = _latest(run) / STATE_FILE
    damage(bad)
    start, history, model, warnings = _restore(run, monkeypatch, caplog)
    older = run / "checkpoint_2026-01-01_00-00-00.000000"
    assert (start, [h["train_loss"] for h in history]) == (1, [10.0])
    assert _same_weights(model, _weights_of(older))
    assert len(warnings) == 1, warnings
    assert str(bad) in warnings[0] and str(older / STATE_FILE) in warnings[0]
    assert reason in warnings[0] and "\n" not in warnings[0]


@pytest.mark.parametrize("force_unsafe", [False, True])
def test_a_state_file_with_pickled_code_is_skipped_and_never_run(
    run, monkeypatch, caplog, tmp_path, force_unsafe
):
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code_ran"

    class RunsCode:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": RunsCode(), "epoch": 1}, _latest(run) / STATE_FILE)
    start, _, _, warnings = _restore(run, monkeypatch, caplog)
    assert start == 1 and len(warnings) == 1
    assert "refused: holds pickled objects other than tensors (it would call" in warnings[0]
    assert not marker.exists()


def test_the_newest_by_epoch_is_tried_first_and_unreadable_ones_are_counted(
    run, monkeypatch, caplog
):
    """A folder left by a killed run (newest epoch, half written) is skipped too."""
    truncate(_latest(run) / STATE_FILE)
    orphan = _write_checkpoint(run, "checkpoint_2026-01-01_00-02-00.000000", 2, seed=3)
    truncate(orphan / STATE_FILE)
    newer = _write_checkpoint(run, "checkpoint_2000-01-01_00-00-00.000000", 3, seed=4)
    start, history, model, warnings = _restore(run, monkeypatch, caplog)
    assert start == 4 and history[-1]["train_loss"] == 43.0  # epoch 3 beats an older name
    assert _same_weights(model, _weights_of(newer)) and len(warnings) == 1
    shutil.rmtree(newer)
    caplog.clear()
    start, _, _, warnings = _restore(run, monkeypatch, caplog)
    assert start == 1 and "(1 more unreadable)" in warnings[0]


def test_no_readable_checkpoint_starts_from_scratch_with_one_warning(run, monkeypatch, caplog):
    for folder in run.iterdir():
        truncate(folder / STATE_FILE)
    start, history, model, warnings = _restore(run, monkeypatch, caplog)
    assert (start, history) == (0, [])
    assert _same_weights(model, _parts(seed=99)[0].state_dict())  # untouched
    assert len(warnings) == 1 and "training from scratch" in warnings[0]


def test_unrecorded_checkpoint_folders_are_removed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for name in ("checkpoint_a", "checkpoint_b", "checkpoint_c", "checkpoint_d", "other"):
        (run / name).mkdir(parents=True)
        (run / name / "x").write_text("x")
    (run / "checkpoint_manager_snapshot.json").write_text("{}")

    class Checkpoint:
        def __init__(self, name: str) -> None:
            self.path = str(run / name)

    class Result:
        def __init__(self) -> None:
            self.best_checkpoints = [
                (Checkpoint("checkpoint_a"), {}),
                (Checkpoint("checkpoint_c"), {}),
            ]
            self.checkpoint = Checkpoint("checkpoint_d")

    keep = recorded_checkpoints(Result())
    assert keep == {"checkpoint_a", "checkpoint_c", "checkpoint_d"}
    assert remove_unrecorded_checkpoints(str(run), keep) == ["checkpoint_b"]
    left = sorted(p.name for p in run.iterdir())
    assert left == [
        "checkpoint_a",
        "checkpoint_c",
        "checkpoint_d",
        "checkpoint_manager_snapshot.json",
        "other",
    ]


def test_on_s3_the_fallback_and_the_clean_up_work_through_pyarrow(tmp_path, monkeypatch):
    """The same on an ``s3://`` run folder (a moto server): folders are key prefixes there."""
    from _cluster_scenario import s3_server

    from core import storage
    from core.train.loop_parts import find_resume_state

    server, reason = s3_server()
    if server is None:
        pytest.skip(reason)
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    local = tmp_path / "local"
    _write_checkpoint(local, "checkpoint_a", 0, seed=1)
    _write_checkpoint(local, "checkpoint_b", 1, seed=2)
    _write_checkpoint(local, "checkpoint_c", 2, seed=3)  # never recorded
    truncate(local / "checkpoint_b" / STATE_FILE)  # Ray Train's latest
    truncate(local / "checkpoint_c" / STATE_FILE)  # half written when the run was killed
    run_dir = f"s3://{server.bucket}/checkpoints-test/run"
    for file in local.rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            storage.write_bytes(storage.join(run_dir, str(file.relative_to(local))), data)
    fs, inner = storage.resolve(run_dir)
    model = _parts(seed=99)[0]
    state, used, failures = find_resume_state(fs, f"{inner}/checkpoint_b", inner, model)
    assert state["epoch"] == 0 and used == f"{inner}/checkpoint_a"
    assert [f for f, _ in failures] == [f"{inner}/checkpoint_b", f"{inner}/checkpoint_c"]

    removed = remove_unrecorded_checkpoints(run_dir, {"checkpoint_a", "checkpoint_b"})
    assert removed == ["checkpoint_c"]
    assert storage.list_dirs(run_dir, "checkpoint_") == ["checkpoint_a", "checkpoint_b"]
    assert storage.exists(storage.join(run_dir, "checkpoint_a", STATE_FILE))


def test_with_nothing_recorded_the_run_folders_newest_checkpoint_is_used(run, monkeypatch, caplog):
    """A run stopped right after a report can leave checkpoints Ray Train never recorded: the
    rerun resumes from the newest readable one of the run folder, with one warning line."""
    import ray.train

    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    model, optimizer, scheduler = _parts(seed=99)
    with caplog.at_level(logging.INFO, logger="core.train.loop_parts"):
        start, history = restore(model, optimizer, scheduler, rank=0, run_dir=str(run))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert (start, [h["train_loss"] for h in history]) == (2, [20.0, 21.0])
    assert _same_weights(model, _weights_of(_latest(run)))
    assert len(warnings) == 1 and "recorded no checkpoint" in warnings[0], warnings
    # A new run (an empty run folder) starts from scratch without a word.
    caplog.clear()
    empty = run.parent / "new"
    empty.mkdir()
    with caplog.at_level(logging.INFO, logger="core.train.loop_parts"):
        assert restore(*_parts(seed=99), rank=0, run_dir=str(empty)) == (0, [])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
