"""Ray Tune sweeps over both training methods.

One regularized sweep carries the integration checks, because every trial is a full Ray Train
run (about 8 s each on 2 cores, most of it starting processes): 5 trials, at most 2 at once,
ASHA on the training cross-entropy; it is interrupted (SIGINT, as Ctrl+C) once two trials have
ended, then resumed to the end, and its best preset is read back (the linear probe's module
trains a best preset again). The rest, the CLIP-Decoder target's planning and outputs included,
run without Ray.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from core.config import (
    ClipDecoderTrainConfig,
    ConfigError,
    TrainRegularizedConfig,
    TrainRunConfig,
    load_config,
)
from core.data.manifest import read_manifest
from core.text.class_means import ClassMeans, save_class_means
from core.tune.config import TuneJobConfig
from core.tune.results import (
    best_record,
    load_records,
    plot_metric_vs_alpha,
    results_table,
    write_best_preset,
)
from core.tune.space import count_trials, parse_space, to_tune_space

CONFIG_DIR = Path(__file__).resolve().parents[1] / "ray_jobs" / "configs"
EPOCHS = 3
PROMPTS = ("Describe the image.", "Give 10 semantic descriptions for the image.")
# The encoder is frozen (encoder_lr 0), so the training cross-entropy depends on the head's
# learning rate alone (alpha's pull reaches only the encoder): three rates that learn in 3 epochs
# and two that barely move it, in grid order (trials run in pairs). The interrupt comes once the
# first pair has ended. Tune does not save ASHA's rungs, so after the resume trials 2 and 3 (one
# fast, one slow) start the rung afresh, and trial 4, the slowest, starts only when one of them
# has ended: it reaches the rung below both of them, under the cut, and is stopped.
HEAD_LRS = [0.05, 0.02, 0.01, 1e-5, 1e-6]
# Train actors of one trial: if any of these outlives the sweep, a trial leaked it.
TRIAL_ACTORS = {
    "ImplicitFunc",
    "_QueueActor",
    "TrainController",
    "RayTrainWorker",
    "PlacementGroupCleaner",
    "PreemptionWatcher",
    "SynchronizationActor",
    "DatasetManager",
}
# Created once per cluster by Ray Data on first use, then shared by every job.
CLUSTER_SINGLETONS = {"_AutoscalingCoordinatorActor", "_StatsActor"}


@pytest.fixture(scope="module")
def per_prompt_means(demo_dataset, tmp_path_factory) -> str:
    """Class means of two caption prompts (random unit vectors of the tiny CLIP's 32 dims, in
    manifest class order, as in test_train_regularized), so a trial can pick a prompt."""
    classes = sorted(set(read_manifest(demo_dataset).column("label").to_pylist()))
    generator = torch.Generator().manual_seed(0)
    per_prompt = [
        ClassMeans(
            classes,
            torch.nn.functional.normalize(
                torch.randn(len(classes), 32, generator=generator), dim=1
            ),
            [3] * len(classes),
            prompt=prompt,
        )
        for prompt in PROMPTS
    ]
    overall = ClassMeans(
        classes,
        (per_prompt[0].means + per_prompt[1].means) / 2,
        [6] * len(classes),
        prompts=list(PROMPTS),
    )
    path = str(tmp_path_factory.mktemp("means") / "class_means.safetensors")
    save_class_means(path, overall, per_prompt)
    return path


def _regularized_sweep(storage: Path, manifest: str, means: str) -> TuneJobConfig:
    space = {
        "optim.head_lr": {"grid": HEAD_LRS},
        "alpha": {"loguniform": [0.001, 0.1]},
        "prompt": {"choice": list(PROMPTS)},
    }
    return load_config(
        TuneJobConfig,
        None,
        [
            "target=regularized",
            f"storage={storage}",
            "name=sweep",
            f"training.manifest={manifest}",
            f"training.class_means={means}",
            f"training.run.epochs={EPOCHS}",
            "training.run.batch_size=8",
            "training.optim.encoder_lr=0.0",
            "training.optim.warmup_epochs=0.5",
            "space=" + yaml.safe_dump(space, default_flow_style=True, width=1000).strip(),
            "num_samples=1",
            "max_concurrent_trials=2",
            "scheduler.grace_period=1",
            "scheduler.reduction_factor=2",
            # val_acc on the demo's 7 validation images ties across most trials, and ASHA stops
            # only a strictly worse trial; the training cross-entropy separates them.
            "metric=train_ce",
            "mode=min",
            "verbose=0",
        ],
    )


@contextmanager
def _sigint_when(condition: Callable[[], bool], poll_s: float = 0.2) -> Iterator[None]:
    """Send this process one SIGINT (Tune's Ctrl+C) as soon as ``condition()`` holds."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(poll_s):
            if condition():
                os.kill(os.getpid(), signal.SIGINT)
                return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _free_cpus() -> float:
    import ray

    return ray.available_resources().get("CPU", 0.0)


def _settle(before, cpus_before: float, timeout_s: float = 30.0):
    """Actors and placement groups alive now but not in ``before``, and whether the logical CPUs
    free before are free again, once Ray is done removing what it removes by itself."""
    from core.tune.cleanup import cluster_snapshot

    deadline = time.monotonic() + timeout_s
    while True:
        now = cluster_snapshot()
        actors = {k: v for k, v in now.actors.items() if k not in before.actors}
        groups = now.placement_groups - before.placement_groups
        free = _free_cpus() >= cpus_before
        settled = not groups and set(actors.values()) <= CLUSTER_SINGLETONS and free
        if settled or time.monotonic() > deadline:
            return actors, groups, free
        time.sleep(0.5)


def _trial_files(sweep_dir: str, record: dict) -> dict[str, object]:
    """What a finished trial wrote: its record and its Train run's metrics (content and mtime:
    never rewritten), and its Tune results (content: Tune copies trial folders on resume)."""
    trial_id = record["trial_id"]
    ours = [
        Path(sweep_dir, "trials", f"{trial_id}.json"),
        Path(sweep_dir, "runs", trial_id, "metrics.jsonl"),
    ]
    files: dict[str, object] = {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in ours}
    tune_results = Path(sweep_dir, f"trial_{trial_id}", "result.json")
    files[str(tune_results)] = tune_results.read_text().splitlines()
    return files


@dataclass
class InterruptedSweep:
    cfg: TuneJobConfig
    first: object  # SweepSummary of the interrupted run
    finished: dict  # trial id → files of the trials finished before the interrupt
    left_after_interrupt: tuple
    resumed: object  # SweepSummary of the resumed run
    left_after_resume: tuple
    seconds: float


@pytest.fixture(scope="module")
def interrupted_sweep(ray_local, demo_dataset, per_prompt_means, tmp_path_factory):
    from core.tune.cleanup import cluster_snapshot
    from core.tune.sweep import run_sweep, sweep_dir_of

    start = time.monotonic()
    cfg = _regularized_sweep(tmp_path_factory.mktemp("tune"), demo_dataset, per_prompt_means)
    records_dir = Path(sweep_dir_of(cfg), "trials")
    before, cpus_before = cluster_snapshot(), _free_cpus()
    with _sigint_when(lambda: len(list(records_dir.glob("*.json"))) >= 2):
        first = run_sweep(cfg)
    finished = {r["trial_id"]: _trial_files(first.sweep_dir, r) for r in first.records}
    left_after_interrupt = _settle(before, cpus_before)
    # A sweep that hangs (e.g. trials waiting for leaked resources) is interrupted, and fails
    # below as incomplete, instead of hanging the test session.
    deadline = time.monotonic() + 600
    with _sigint_when(lambda: time.monotonic() > deadline, poll_s=2.0):
        resumed = run_sweep(cfg)
    left_after_resume = _settle(before, cpus_before)
    return InterruptedSweep(
        cfg,
        first,
        finished,
        left_after_interrupt,
        resumed,
        left_after_resume,
        time.monotonic() - start,
    )


@pytest.mark.ray
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(interrupted_sweep) -> None:
    first, resumed = interrupted_sweep.first, interrupted_sweep.resumed
    assert first.interrupted and 2 <= len(first.records) < len(HEAD_LRS)
    assert not first.best_preset  # no preset from a sweep that has not ended
    assert resumed.resumed and not resumed.interrupted
    assert len(resumed.records) == len(HEAD_LRS)
    # Trials finished before the interrupt were not run again: their records and Train metrics
    # are untouched, and Tune holds the same results (one line per iteration) for them.
    for trial_id, files in interrupted_sweep.finished.items():
        now = next(r for r in resumed.records if r["trial_id"] == trial_id)
        assert _trial_files(resumed.sweep_dir, now) == files, trial_id
        results = files[str(Path(resumed.sweep_dir, f"trial_{trial_id}", "result.json"))]
        assert len(results) == now["training_iteration"] == now["epochs_done"]
    # Every trial's Train run wrote each of its epochs once, resumed or not (a stopped trial's
    # run may have finished one more epoch while Tune was stopping it).
    for record in resumed.records:
        lines = Path(resumed.sweep_dir, "runs", record["trial_id"], "metrics.jsonl").read_text()
        epochs = [json.loads(line)["epoch"] for line in lines.splitlines()]
        assert epochs == list(range(len(epochs))), record["trial_id"]
        assert len(epochs) >= record["epochs_done"], record["trial_id"]
        if not record["stopped_early"]:
            assert len(epochs) == EPOCHS, record["trial_id"]


@pytest.mark.ray
def test_every_trial_ends_asha_stops_some_and_the_table_lists_all(interrupted_sweep) -> None:
    summary = interrupted_sweep.resumed
    records = summary.records
    assert summary.metric == "train_ce" and summary.mode == "min"
    assert sorted(r["config"]["optim.head_lr"] for r in records) == sorted(HEAD_LRS)
    assert all(r["status"] == "TERMINATED" and r["epochs_done"] >= 1 for r in records)
    stopped = [r for r in records if r["stopped_early"]]
    assert stopped, "ASHA stopped no trial"
    assert all(r["epochs_done"] < EPOCHS for r in stopped)
    assert any(r["epochs_done"] == EPOCHS for r in records)
    assert {r["config"]["prompt"] for r in records} <= set(PROMPTS)

    ids = sorted(r["trial_id"] for r in records)
    parquet = pq.read_table(summary.table_parquet)
    csv = pacsv.read_csv(summary.table_csv)
    for table in (parquet, csv):
        assert (
            table.num_rows == len(HEAD_LRS) and sorted(table.column("trial_id").to_pylist()) == ids
        )
        for column in ("status", "stopped_early", "epochs_done", "training_iteration"):
            assert column in table.column_names
        for column in ("alpha", "optim.head_lr", "prompt", "train_ce", "train_loss", "val_acc"):
            assert column in table.column_names
    rows = {row["trial_id"]: row for row in parquet.to_pylist()}
    for record in records:
        row = rows[record["trial_id"]]
        assert row["stopped_early"] == record["stopped_early"]
        assert row["epochs_done"] == record["epochs_done"]
        assert row["train_ce"] == record["metrics"]["train_ce"]
    assert Path(summary.plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.ray
def test_stopped_and_interrupted_trials_leave_nothing_on_the_cluster(interrupted_sweep) -> None:
    for actors, groups, free in (
        interrupted_sweep.left_after_interrupt,
        interrupted_sweep.left_after_resume,
    ):
        assert not groups, f"placement groups left: {groups}"
        assert not set(actors.values()) & TRIAL_ACTORS, f"actors left: {actors}"
        assert set(actors.values()) <= CLUSTER_SINGLETONS, f"actors left: {actors}"
        assert free, "logical CPUs still reserved"
    # Ray leaves the placement group of every Train run ended mid-run (ASHA stopped its trial,
    # or the interrupt did): the sweep removed them, at least one per run that ASHA cut short.
    summary = interrupted_sweep.resumed

    def epochs_trained(record: dict) -> int:
        path = Path(summary.sweep_dir, "runs", record["trial_id"], "metrics.jsonl")
        return len(path.read_text().splitlines())

    cut_short = [r for r in summary.records if epochs_trained(r) < EPOCHS]
    released = interrupted_sweep.first.released_placement_groups
    released += summary.released_placement_groups
    assert cut_short and released >= len(cut_short)
    print(f"sweep with interrupt and resume: {interrupted_sweep.seconds:.0f} s")


@pytest.mark.ray
def test_best_preset_holds_the_best_trials_settings(interrupted_sweep) -> None:
    """The best trial is the complete one with the lowest training cross-entropy, and the
    preset is the training section with its settings (learning rate, prompt, alpha). That a
    preset given to the training job trains as its trial did is checked in the linear probe's
    module (there with two workers, which also checks 2 = 1)."""
    summary = interrupted_sweep.resumed
    best = summary.best
    complete = [r for r in summary.records if not r["stopped_early"]]
    assert best["metrics"]["train_ce"] == min(r["metrics"]["train_ce"] for r in complete)
    preset = load_config(TrainRegularizedConfig, summary.best_preset)
    assert preset.optim.head_lr == best["config"]["optim.head_lr"]
    assert preset.prompt == best["config"]["prompt"] and preset.run.epochs == EPOCHS
    assert preset.alpha == pytest.approx(best["config"]["alpha"], rel=1e-12)
    assert preset.name == "sweep_best"


# --------------------------------------------------------------------------------------------
# Without Ray: config, search space, outputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("space.alpha={loguniform: [0, 1]}", "space.alpha: loguniform needs 0 < low"),
        ("space.alpha={uniform: [1, 0.5]}", "space.alpha: uniform needs low < high"),
        ("space.alpha={choice: []}", "space.alpha: choice needs at least one value"),
        ("space.alpha={choice: [-1, 0.5]}", "space.alpha: value -1: must be >= 0"),
        ("space.alpha={between: [1, 2]}", "space.alpha: unknown spec 'between'"),
        ("space.alpha=0.5", "space.alpha: got 0.5, expected a mapping"),
        ("space.alpha={uniform: [0, 1], grid: [0.1]}", "space.alpha: one spec per setting, got"),
        ("space.optim.headlr={uniform: [0.1, 0.2]}", "space.optim.headlr: not a setting of optim"),
        ("space.run.batch_size={uniform: [4, 8]}", "space.run.batch_size: value 4.0: got 4.0"),
        ("space.optim={choice: [1]}", "space.optim: a section; search one of its settings"),
        ("space.run.epochs={grid: [1, 2]}", "space.run.epochs: fixed for the whole sweep"),
        ("space.run.seed.x={grid: [1]}", "space.run.seed.x: run.seed has no sub-settings"),
        ("metric=val_acc", "mode: metric and mode go together"),
        ("scheduler.grace_period=10", "scheduler.grace_period: must be < training.run.epochs"),
        ("training.storage=/elsewhere", "training.storage: set the storage root at the top"),
        ("training.compare_baseline=true", "training.compare_baseline: must be false"),
        ("searcher=grid", "space.alpha: searcher grid needs grid or choice values"),
        ("training.alpha=-1", "training.alpha: must be >= 0, got -1"),
        ("target=nope", "target: got 'nope', registered methods: clip_decoder, linear_probe"),
        ("training.run.batch_size=0", "training.run.batch_size: must be a positive multiple"),
    ],
)
def test_bad_sweep_settings_name_the_key(override: str, message: str) -> None:
    base = ["space.alpha={loguniform: [0.001, 1.0]}", "training.run.epochs=10"]
    with pytest.raises(ConfigError) as info:
        load_config(TuneJobConfig, None, [*base, override])
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_template_sets_are_checked_for_clip_decoder() -> None:
    with pytest.raises(ConfigError, match=r"^space.templates: value 'nope': unknown template set"):
        load_config(
            TuneJobConfig,
            None,
            ["target=clip_decoder", "space.templates={choice: [photo, nope]}"],
        )
    with pytest.raises(ConfigError, match="grid is not supported by searcher optuna"):
        load_config(TuneJobConfig, None, ["searcher=optuna", "space.alpha={grid: [0.1, 1.0]}"])


def test_space_becomes_tune_domains() -> None:
    from ray.tune.search.sample import Categorical, Float

    cfg = load_config(
        TuneJobConfig,
        None,
        [
            "space.alpha={loguniform: [0.001, 1.0]}",
            "space.optim={head_lr: {uniform: [0.001, 0.01]}}",  # nested form = dotted key
            "space.prompt={choice: [a, b]}",
            "space.optim.weight_decay={grid: [0.0, 0.01, 0.1]}",
        ],
    )
    specs = parse_space(cfg.space)
    assert [s.key for s in specs] == ["alpha", "optim.head_lr", "optim.weight_decay", "prompt"]
    space = to_tune_space(specs, "random")
    assert isinstance(space["alpha"], Float) and space["alpha"].lower == 0.001
    assert "LogUniform" in type(space["alpha"].get_sampler()).__name__
    assert isinstance(space["optim.head_lr"], Float)
    assert isinstance(space["prompt"], Categorical) and space["prompt"].categories == ["a", "b"]
    assert space["optim.weight_decay"] == {"grid_search": [0.0, 0.01, 0.1]}
    assert count_trials(specs, "random", num_samples=4) == 12  # the grid, 4 times
    only_choices = [s for s in specs if not s.is_range]
    grid = to_tune_space(only_choices, "grid")
    assert grid["prompt"] == {"grid_search": ["a", "b"]}
    assert count_trials(only_choices, "grid", num_samples=1) == 6


def test_optuna_searcher_samples_inside_the_space() -> None:
    pytest.importorskip("optuna")
    from core.tune.sweep import build_search_alg

    cfg = load_config(
        TuneJobConfig,
        None,
        [
            "searcher=optuna",
            "seed=3",
            "max_concurrent_trials=3",
            "space.alpha={loguniform: [0.001, 1.0]}",
            "space.prompt={choice: [a, b]}",
        ],
    )
    searcher, limit = build_search_alg(cfg)
    assert limit == 3  # Tune wraps Optuna in its concurrency limiter
    space = to_tune_space(parse_space(cfg.space), cfg.searcher)
    assert searcher.set_search_properties("val_acc", "max", space)
    for i in range(5):
        suggestion = searcher.suggest(f"t{i}")
        assert 0.001 <= suggestion["alpha"] <= 1.0 and suggestion["prompt"] in ("a", "b")


def _record(trial_id: str, loss: float, early: bool = False, **config) -> dict:
    return {
        "trial_id": trial_id,
        "status": "TERMINATED",
        "stopped_early": early,
        "epochs_done": 1 if early else 4,
        "epochs": 4,
        "training_iteration": 1 if early else 4,
        "time_total_s": 10.0,
        "config": config,
        "metrics": {"train_loss": loss, "val_acc": 0.5, "epoch": 0 if early else 3},
        "error": "",
    }


def test_best_is_the_best_complete_trial_and_its_preset_loads(tmp_path) -> None:
    records = [
        _record("a_1", 1.0, alpha=0.1, prompt="x"),
        _record("a_0", 0.5, early=True, alpha=0.2, prompt="y"),  # better, but at 1 epoch
        _record("a_2", 0.9, alpha=0.3, prompt=1),  # a choice mixing text and numbers
        _record("a_3", 0.9, alpha=0.4, prompt="x"),  # ties with a_2: the earlier trial wins
    ]
    best = best_record(records, "train_loss", "min")
    assert best["trial_id"] == "a_2"
    assert best_record(records, "train_loss", "max")["trial_id"] == "a_1"
    table = results_table(sorted(records, key=lambda r: r["trial_id"]), ["alpha", "prompt"], "x")
    assert table.column("prompt").to_pylist() == ["y", "x", "1", "x"]
    assert table.column("stopped_early").to_pylist() == [True, False, False, False]
    dest = str(tmp_path / "best.yaml")
    training = {"alpha": 0.3, "epochs": 4, "optim": {"head_lr": 0.01}}
    write_best_preset(
        training, best, dest, job="train_regularized", sweep_name="s", metric="train_loss"
    )
    text = Path(dest).read_text()
    assert text.startswith("# Best trial a_2 of sweep s")
    assert "python -m ray_jobs.train_regularized --config" in text
    assert yaml.safe_load(text) == training
    plot = plot_metric_vs_alpha(records, "train_loss", "prompt", 1.0, str(tmp_path / "p.png"))
    assert Path(plot).read_bytes()[:4] == b"\x89PNG"
    assert load_records(str(tmp_path / "nothing")) == []


def test_default_metric_and_prompt_check(demo_dataset, per_prompt_means, tmp_path) -> None:
    """Without metric/mode the sweep ranks by the training run's checkpoint metric (val_acc);
    a prompt the class-means file has no means for stops the sweep before any trial."""
    from core.tune.sweep import plan_sweep

    cfg = load_config(
        TuneJobConfig,
        None,
        [
            f"storage={tmp_path}",
            f"training.manifest={demo_dataset}",
            f"training.class_means={per_prompt_means}",
            f"space.prompt={json.dumps({'choice': list(PROMPTS)})}",
        ],
    )
    plan = plan_sweep(cfg, str(tmp_path / "sweep"))
    assert (plan.metric, plan.mode) == ("val_acc", "max")
    assert plan.spec.training["storage"] == str(tmp_path / "sweep")
    assert plan.preset["storage"] == str(tmp_path) and plan.preset["name"] == "sweep_best"
    cfg.space = {"prompt": {"choice": [PROMPTS[0], "Describe it in French."]}}
    with pytest.raises(ConfigError, match=r"^space.prompt: .*no class means for prompt"):
        plan_sweep(cfg, str(tmp_path / "sweep"))


def test_resume_refuses_a_changed_space(tmp_path) -> None:
    from core.tune.sweep import SWEEP_FILE, _check_resume, _identity

    cfg = load_config(TuneJobConfig, None, ["space.alpha={loguniform: [0.001, 1.0]}"])
    (tmp_path / SWEEP_FILE).write_text(yaml.safe_dump({"identity": _identity(cfg)}))
    _check_resume(cfg, str(tmp_path))  # same settings: fine
    changed = load_config(TuneJobConfig, None, ["space.alpha={loguniform: [0.01, 1.0]}"])
    with pytest.raises(ConfigError, match=r"^space.alpha.loguniform: differs from the sweep"):
        _check_resume(changed, str(tmp_path))
    fresh = load_config(
        TuneJobConfig, None, ["resume=false", "space.alpha={loguniform: [0.001, 1.0]}"]
    )
    with pytest.raises(ConfigError, match=r"^name: a sweep already exists"):
        _check_resume(fresh, str(tmp_path))


def test_clip_decoder_sweep_plan_trial_config_and_outputs(tmp_path) -> None:
    """CLIP-Decoder target without running trials: ranked by the training run's checkpoint
    metric, a trial's config is the section with its settings (template set included) and its
    run folder under the sweep, and the outputs give a CLIP-Decoder training preset."""
    from core.data.multilabel_demo import generate_multilabel_demo
    from core.tune.results import record_path
    from core.tune.sweep import plan_sweep, write_outputs
    from core.tune.trial import run_dir, trial_config

    demo = generate_multilabel_demo(
        str(tmp_path / "data"),
        num_images=60,
        image_size=40,
        unseen=("hexagon", "crescent", "heart", "pentagon", "arrow"),
    )
    cfg = load_config(
        TuneJobConfig,
        CONFIG_DIR / "tune_clip_decoder_demo.yaml",
        [f"storage={tmp_path}", "name=cd", f"training.manifest={demo.manifest}"],
    )
    sweep_dir = str(tmp_path / "tune" / "cd")
    plan = plan_sweep(cfg, sweep_dir)
    assert (plan.metric, plan.mode) == ("val_zsl_map", "max")
    assert plan.spec.training["labels"] == demo.labels_json
    trial = trial_config(plan.spec, {"templates": "scene", "beta": 2.5}, "abc_00001")
    assert isinstance(trial, ClipDecoderTrainConfig)
    assert (trial.templates, trial.beta, trial.run.epochs) == ("scene", 2.5, 4)
    assert str(Path(trial.storage, "runs", trial.name)) == run_dir(sweep_dir, "abc_00001")
    for trial_id, value, templates in (("abc_00000", 0.4, "photo"), ("abc_00001", 0.6, "scene")):
        record = _record(trial_id, 1.0, alpha=1.5, templates=templates)
        record["metrics"]["val_zsl_map"] = value
        Path(record_path(sweep_dir, trial_id)).parent.mkdir(parents=True, exist_ok=True)
        Path(record_path(sweep_dir, trial_id)).write_text(json.dumps(record))
    plan.expected_trials = 2
    summary = write_outputs(cfg, plan, sweep_dir, resumed=False, released=0)
    assert summary.best["trial_id"] == "abc_00001"
    preset = load_config(ClipDecoderTrainConfig, summary.best_preset)
    assert (preset.templates, preset.alpha, preset.name) == ("scene", 1.5, "cd_best")
    assert preset.storage == str(tmp_path) and preset.labels == demo.labels_json
    assert pq.read_table(summary.table_parquet).column("templates").to_pylist() == [
        "photo",
        "scene",
    ]


@pytest.mark.parametrize(
    ("epochs", "grace", "factor"), [(3, 1, 2), (4, 1, 2), (20, 2, 3), (2, 1, 2)]
)
def test_asha_rungs_fall_before_the_last_epoch(epochs: int, grace: int, factor: float) -> None:
    """A trial is compared (and maybe stopped) after grace_period epochs and then at a growing
    spacing, never at its last epoch, when it has nothing left to save."""
    from core.tune.sweep import build_scheduler

    cfg = load_config(
        TuneJobConfig,
        None,
        [
            f"training.run.epochs={epochs}",
            f"scheduler.grace_period={grace}",
            f"scheduler.reduction_factor={factor}",
            "space.alpha={loguniform: [0.001, 1.0]}",
        ],
    )
    scheduler = build_scheduler(cfg, epochs)
    scheduler.set_search_properties("val_acc", "max")
    (bracket,) = scheduler._brackets
    rungs = sorted(milestone for milestone, _ in bracket._rungs)
    assert rungs and rungs[0] == grace and rungs[-1] < epochs, rungs
    assert all(b == a * factor for a, b in itertools.pairwise(rungs))
    cfg.scheduler.kind = "fifo"
    assert build_scheduler(cfg, epochs) is None


def test_rerun_trials_report_what_they_finished_without_training(tmp_path, monkeypatch) -> None:
    """A trial Tune runs again after a hard interrupt (its last state save predates the end of
    the trial) reports what it had finished instead of training: its record if it has one,
    else the last epoch of a Train run that trained every epoch; otherwise it trains."""
    from types import SimpleNamespace

    from ray import tune

    from core.config import to_dict
    from core.train import engine
    from core.tune import trial
    from core.tune.results import record_path
    from core.tune.trial import TrialSpec, run_dir, run_trial

    trial_id = "t_00000"
    reported: list[dict] = []
    fitted: list[str] = []
    monkeypatch.setattr(tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: trial_id))
    monkeypatch.setattr(tune, "report", reported.append)
    monkeypatch.setattr(engine, "fit", lambda method, cfg, root, name, **k: fitted.append(name))
    monkeypatch.setattr(trial, "EpochReportCallback", lambda: None)  # needs a Tune session
    training = to_dict(TrainRegularizedConfig(run=TrainRunConfig(epochs=2)))
    spec = TrialSpec("regularized", training, str(tmp_path))

    run = Path(run_dir(spec.sweep_dir, trial_id))
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "val_acc": 0.25}) + "\n")
    run_trial({"alpha": 0.5}, spec)  # one epoch of two: train (the run resumes by itself)
    assert fitted == [trial_id] and reported == []

    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 1, "val_acc": 0.5}) + "\n")
    run_trial({"alpha": 0.5}, spec)
    assert reported == [{"epoch": 1, "val_acc": 0.5, "epochs_done": 2}] and len(fitted) == 1

    record = _record(trial_id, 0.7)
    Path(record_path(spec.sweep_dir, trial_id)).parent.mkdir(parents=True)
    Path(record_path(spec.sweep_dir, trial_id)).write_text(json.dumps(record))
    run_trial({"alpha": 0.5}, spec)
    assert reported[-1] == record["metrics"] and len(fitted) == 1


def test_trial_runs_start_without_rays_placement_group_cleaner() -> None:
    """A trial's Train run leaves its placement group to the sweep (a cleaner of Ray's own,
    killed with its trial before being told to stop, would poll forever); other runs keep it."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from core.train.launch import _trainer_class
    from core.tune.cleanup import TrainRunTracker

    def callbacks_of(trainer_class: type, extra: list) -> list[str]:
        trainer = trainer_class(
            lambda config: None,
            scaling_config=ray.train.ScalingConfig(num_workers=1),
            run_config=ray.train.RunConfig(name="x", storage_path="/tmp/x", callbacks=extra),
        )
        return [type(cb).__name__ for cb in trainer._create_default_callbacks()]

    tracker = TrainRunTracker("sweep", "t_00000")
    in_trial = callbacks_of(_trainer_class([tracker]), [tracker])
    assert "PlacementGroupCleanerCallback" not in in_trial and "TrainRunTracker" in in_trial
    assert "DatasetsCallback" in in_trial  # nothing else is dropped
    assert _trainer_class([]) is TorchTrainer
    assert "PlacementGroupCleanerCallback" in callbacks_of(TorchTrainer, [])
