"""The pipeline: a folder of class sub-folders to a report, resumed without redoing anything."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from _background import Background
from _crash import truncate

from core.config import ConfigError, load_config
from core.config.pipeline import PipelineJobConfig
from core.data.manifest import ManifestError
from core.train.loop_parts import FAULT_MARKER, STATE_FILE
from ray_jobs.pipeline import STAGES, PipelineState, StageResult, StageRunner, main, run_pipeline

PRESET = Path(__file__).resolve().parents[1] / "ray_jobs" / "configs" / "pipeline_folder.yaml"
CLASSES = ("circle", "square", "triangle", "diamond")
EPOCHS = 3


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> tuple[Path, Path]:
    """4 classes x 8 small PNGs in class sub-folders, and a CSV of one description per image
    (the reference captioner reads it: the test is about the pipeline, not an LMM)."""
    from core.data.demo import draw_sample

    root = tmp_path_factory.mktemp("folder") / "shapes"
    lines = ["id,caption"]
    for k, shape in enumerate(CLASSES):
        rng = np.random.default_rng([0, k])
        (root / shape).mkdir(parents=True)
        for i in range(8):
            image, sample = draw_sample(shape, rng, 32)
            image.save(root / shape / f"{shape}_{i}.png")
            lines.append(f'{shape}/{shape}_{i}.png,"{sample.description}"')
    captions = root.parent / "captions.csv"
    captions.write_text("\n".join(lines) + "\n")
    return root, captions


def _args(root: Path, captions: Path, storage: Path) -> list[str]:
    return [
        "--config",
        str(PRESET),
        f"root={root}",
        f"storage={storage}",
        "captioner=reference",
        f"captioner.reference.file={captions}",
        f"run.epochs={EPOCHS}",
        "run.batch_size=8",
    ]


@dataclass
class Killed:
    """What the first invocation, killed during training, left behind (and what was done to
    its checkpoints before the rerun)."""

    error: BaseException
    state: dict  # pipeline_state.json after it
    baseline_lines: list[str]  # the baseline's metrics.jsonl lines, timings included
    planted: Path  # a checkpoint folder written but never recorded, planted before the rerun
    uninterrupted: object  # the baseline trained again elsewhere, never killed (a RunResult)


def _epoch_of(folder: Path) -> int:
    return json.loads((folder / "meta.json").read_text())["epoch"]


def _uninterrupted_baseline(args: list[str], state: dict, storage: Path):
    """The pipeline's baseline training, from the same manifest and class means, in its own
    folder and never interrupted: what the killed baseline must end up equal to."""
    import dataclasses

    from core.train.methods.regularized import train_regularized

    cfg = load_config(PipelineJobConfig, PRESET, args[2:])
    stages = state["stages"]
    training = cfg.training(
        name="baseline",
        manifest=stages["manifest"]["outputs"]["manifest"],
        class_means=stages["class_means"]["outputs"]["class_means"],
    )
    return train_regularized(dataclasses.replace(training, storage=str(storage), alpha=0.0)).runs[0]


@pytest.fixture(scope="module")
def killed_then_rerun(ray_local, image_folder, tmp_path_factory):
    """The pipeline killed during training, then the same command again.

    The kill: a baseline worker dies in epoch 2 and Ray Train may not restart it
    (``run.max_failures=0``), so the invocation fails after the checkpoints of epochs 0 and 1.
    Before the rerun, the latest of them (Ray Train's record) is truncated, as a crash while
    writing it would leave it, and a folder a worker wrote but Ray Train never recorded is planted
    beside them. The rerun leaves the kill out (``fail_at_epoch`` and ``max_failures`` are not
    part of any stage's key, so it is the same pipeline). Meanwhile the same baseline is trained
    elsewhere without interruption, to compare with.
    """
    root, captions = image_folder
    storage = tmp_path_factory.mktemp("pipeline")
    args = _args(root, captions, storage)
    with pytest.raises(Exception) as killed:  # whatever Ray Train raises for the failed run
        main([*args, "run.fail_at_epoch=2", "run.max_failures=0"])
    state = json.loads((storage / "pipeline_state.json").read_text())
    (baseline,) = storage.glob("runs/*/baseline")
    lines = (baseline / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]  # killed in epoch 2
    folders = {_epoch_of(f): f for f in baseline.glob("checkpoint_*") if f.is_dir()}
    assert sorted(folders) == [0, 1]
    truncate(folders[1] / STATE_FILE)  # Ray Train's latest
    planted = baseline / "checkpoint_2999-01-01_00-00-00.000000"  # written, never recorded
    shutil.copytree(folders[0], planted)
    (planted / "meta.json").write_text(json.dumps({"epoch": 9}))
    truncate(planted / STATE_FILE)
    reference = Background(
        _uninterrupted_baseline, args, state, tmp_path_factory.mktemp("uninterrupted")
    )
    result = main(args)
    return Killed(killed.value, state, lines, planted, reference.result()), result, storage


@pytest.fixture(scope="module")
def first_run(killed_then_rerun):
    _, result, storage = killed_then_rerun
    return result, storage


def _metrics(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


@pytest.mark.ray
def test_a_run_killed_during_training_continues_where_it_stopped(killed_then_rerun) -> None:
    """The rerun redoes none of the stages the killed run finished. The baseline resumes from
    the newest checkpoint it can read: epoch 0, its epoch-1 one being truncated. So the epoch-0
    metrics line (timings included) is the killed run's, never recomputed, and epoch 1 is trained
    again from the same state and data, to the same numbers."""
    killed, result, _ = killed_then_rerun
    assert "fault" in str(killed.error).lower() or "fail" in str(killed.error).lower()
    assert set(killed.state["stages"]) == {"manifest", "captions", "class_means"}
    assert killed.state["invocations"] == []  # a failed invocation records no line
    assert result.skipped == ["manifest", "captions", "class_means"]
    assert result.ran == ["training", "predict", "report"]
    baseline = Path(result.report["baseline"]["run_dir"])
    assert (baseline / FAULT_MARKER).is_file()
    lines = (baseline / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == killed.baseline_lines[0]
    history = [json.loads(line) for line in lines]
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    before = json.loads(killed.baseline_lines[1])
    assert history[1]["epoch_seconds"] != before["epoch_seconds"]  # epoch 1 trained again
    for key in ("train_loss", "train_ce", "train_reg"):
        assert history[1][key] == pytest.approx(before[key], rel=1e-6)
    assert history[1]["train_acc"] == before["train_acc"]


@pytest.mark.ray
def test_the_resumed_run_keeps_only_the_checkpoints_ray_train_lists(killed_then_rerun) -> None:
    """The planted folder (unreadable, and in no record) is gone; what is left is at most the
    kept best ones and the latest, which is the last epoch's and the one the report used."""
    killed, result, _ = killed_then_rerun
    assert not killed.planted.exists()
    baseline = Path(result.report["baseline"]["run_dir"])
    left = {_epoch_of(f): f for f in baseline.glob("checkpoint_*") if f.is_dir()}
    assert len(left) <= 3 and max(left) == EPOCHS - 1  # keep_checkpoints (2) + the latest
    assert Path(result.report["baseline"]["checkpoint"]) == left[EPOCHS - 1]


@pytest.mark.ray
def test_the_killed_and_rerun_pipeline_reports_what_an_uninterrupted_run_gives(
    killed_then_rerun,
) -> None:
    """The baseline, killed in epoch 1 and resumed by the rerun, ends where the same training
    run never interrupted ends: every epoch's metrics (timings aside) and the report's numbers
    for it. (The regularized run of the rerun was never interrupted.)"""
    killed, result, _ = killed_then_rerun
    reference = killed.uninterrupted
    resumed = _metrics(result.report["baseline"]["run_dir"])
    timings = {"epoch_seconds", "train_seconds", "eval_seconds"}
    for got, expected in zip(resumed, reference.history, strict=True):
        expected = {k: v for k, v in expected.items() if k not in timings}
        assert {k: v for k, v in got.items() if k not in timings} == pytest.approx(
            expected, rel=1e-6, nan_ok=True
        )
        assert got["train_acc"] == expected["train_acc"]
    report = result.report["baseline"]
    assert report["test_acc"] == reference.history[-1]["test_acc"]
    assert report["test_acc_per_epoch"] == [h["test_acc"] for h in reference.history]


@pytest.mark.ray
def test_report_holds_the_numbers_the_stages_wrote(first_run) -> None:
    _, storage = first_run
    report = json.loads((storage / "report" / "report.json").read_text())
    for name in ("report.md", "test_accuracy.png", "confusion_matrix.png"):
        assert (storage / "report" / name).stat().st_size > 0
    for plot in ("test_accuracy.png", "confusion_matrix.png"):
        assert (storage / "report" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (storage / "report" / "report.md").read_text()
    assert report["data"]["classes"] == sorted(CLASSES)
    assert sum(report["data"]["images"].values()) == 4 * 8

    for name, alpha in (("baseline", 0.0), ("regularized", 0.1)):
        model = report[name]
        history = _metrics(model["run_dir"])
        assert [h["epoch"] for h in history] == list(range(EPOCHS))
        assert history[-1]["alpha"] == alpha == model["alpha"]
        assert model["test_acc"] == history[-1]["test_acc"]
        assert model["test_acc_per_epoch"] == [h["test_acc"] for h in history]
        # Per class: the prediction job's accuracy.json, and an independent count of its rows.
        accuracy = json.loads(Path(model["accuracy_json"]).read_text())
        assert model["per_class"] == accuracy["per_class"]
        assert model["predicted_test_acc"] == accuracy["accuracy"]
        rows = pq.read_table(model["predictions"]).to_pylist()
        assert len(rows) == report["data"]["images"]["test"]
        totals = Counter(r["label"] for r in rows)
        hits = Counter(r["label"] for r in rows if r["predicted"] == r["label"])
        for cls, n in totals.items():
            assert model["per_class"][cls] == {"images": n, "accuracy": hits[cls] / n}
        matrix = np.array(model["confusion_matrix"])
        assert matrix.sum() == len(rows) and np.trace(matrix) == sum(hits.values())
        # The Markdown tables print the same numbers, as percentages.
        assert f"| {name} | {alpha:g} | {100 * model['test_acc']:.2f} |" in md
        for cls, entry in model["per_class"].items():
            assert f"| {cls} | {entry['images']} |" in md
            assert f"{100 * entry['accuracy']:.2f}" in md


@pytest.mark.ray
def test_a_rerun_skips_every_stage_and_gives_the_same_report(first_run, image_folder) -> None:
    result, storage = first_run
    runs = [Path(result.report[v]["run_dir"]) for v in ("baseline", "regularized")]
    watched = [storage / "report" / "report.json", storage / "report" / "report.md"]
    watched += [run / "metrics.jsonl" for run in runs]
    watched += [p for run in runs for p in run.glob("checkpoint_*/meta.json")]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in watched}

    again = main(_args(*image_folder, storage))

    assert again.ran == [] and again.skipped == list(STAGES)
    assert again.report == result.report
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in watched} == before
    invocations = json.loads((storage / "pipeline_state.json").read_text())["invocations"]
    assert [i["skipped"] for i in invocations] == [list(STAGES[:3]), list(STAGES)]


def test_a_changed_setting_reruns_its_stage_and_the_later_ones(tmp_path) -> None:
    """The state keeps each stage's key; a key depends on the settings of every earlier stage."""
    calls: list[str] = []

    def invoke(settings: dict[str, dict]) -> StageRunner:
        runner = StageRunner(PipelineState(str(tmp_path)))
        for name in ("manifest", "captions", "class_means"):

            def stage(name: str = name) -> StageResult:
                calls.append(name)
                (tmp_path / name).write_text(name)
                return StageResult({"file": str(tmp_path / name)})

            runner.run(name, settings[name], stage)
        return runner

    settings = {"manifest": {"root": "a"}, "captions": {"prompt": "p"}, "class_means": {}}
    assert invoke(settings).ran == ["manifest", "captions", "class_means"]
    assert invoke(settings).skipped == ["manifest", "captions", "class_means"]
    changed = invoke({**settings, "captions": {"prompt": "q"}})
    assert (changed.skipped, changed.ran) == (["manifest"], ["captions", "class_means"])
    (tmp_path / "class_means").unlink()  # an output gone: that stage runs again
    assert invoke({**settings, "captions": {"prompt": "q"}}).ran == ["class_means"]
    assert calls.count("manifest") == 1


def _config(root: Path, tmp_path: Path, *overrides: str) -> PipelineJobConfig:
    return load_config(
        PipelineJobConfig, PRESET, [f"root={root}", f"storage={tmp_path / 'out'}", *overrides]
    )


def test_bad_folders_stop_with_one_line_naming_them(tmp_path) -> None:
    from PIL import Image

    with pytest.raises(ConfigError, match=r"^root: required for source=folder"):
        run_pipeline(_config("", tmp_path))
    with pytest.raises(ManifestError, match=r"^root: .*/missing: no such folder$"):
        run_pipeline(_config(tmp_path / "missing", tmp_path))

    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "loose.png")
    with pytest.raises(ManifestError, match=r"^root: .*/flat has no class folders"):
        run_pipeline(_config(flat, tmp_path))

    classes = tmp_path / "classes"
    for name in ("cat", "dog"):
        (classes / name).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(classes / "cat" / "a.png")
    (classes / "dog" / "notes.txt").write_text("no images here")
    with pytest.raises(ManifestError, match=r"^root: class folder .*/classes/dog holds no images"):
        run_pipeline(_config(classes, tmp_path))

    # One image per class cannot fill train and test: the class without one is named.
    with pytest.raises(ManifestError, match=r"class '(cat|dog)' has no training image"):
        Image.new("RGB", (8, 8)).save(classes / "dog" / "b.png")
        run_pipeline(_config(classes, tmp_path, "split_fractions=[0.0, 0.0, 1.0]"))
    assert not (tmp_path / "out" / "pipeline_state.json").exists()
