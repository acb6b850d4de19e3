"""Build (or restore) the Tuner, run the sweep, write its outputs.

Everything a sweep writes lives in ``<storage>/tune/<name>``: Tune's experiment state and trial
folders, ``runs/<trial_id>`` (each trial's Train run), ``trials/<trial_id>.json`` (records),
``results.parquet`` / ``results.csv``, ``<metric>_vs_alpha.png``, ``best.yaml`` and
``sweep.yaml`` (the settings it started with). Running the same sweep again continues it:
finished trials stay finished, unfinished ones continue from their Train checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import yaml

from core import storage
from core.config import ConfigError, to_dict
from core.train.launch import absolute_storage
from core.train.registry import get_method
from core.tune.config import TuneJobConfig
from core.tune.results import (
    BEST_PRESET,
    TrialRecorder,
    best_record,
    load_records,
    plot_metric_vs_alpha,
    results_table,
    write_best_preset,
    write_table,
)
from core.tune.space import ParamSpec, apply_overrides, count_trials, parse_space, to_tune_space
from core.tune.trial import TrialSpec, run_trial

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.yaml"
TUNER_STATE = "tuner.pkl"
#: Settings that define which trials a sweep runs; a resumed sweep must keep them.
IDENTITY_KEYS = ("target", "space", "searcher", "num_samples", "seed", "scheduler", "metric")


@dataclass
class SweepPlan:
    """What the driver settles before any trial starts."""

    spec: TrialSpec
    specs: list[ParamSpec]
    metric: str
    mode: str
    epochs: int
    expected_trials: int
    preset: dict[str, Any]  # the training section as the best preset starts from


@dataclass
class SweepSummary:
    """A finished (or interrupted) sweep: where its outputs are and how its trials ended."""

    sweep_dir: str
    metric: str
    mode: str
    expected_trials: int
    records: list[dict[str, Any]] = field(default_factory=list)
    table_parquet: str = ""
    table_csv: str = ""
    plot: str = ""
    best_preset: str = ""
    best: dict[str, Any] | None = None
    resumed: bool = False
    released_placement_groups: int = 0  # left behind by trials Tune ended, removed by the sweep

    @property
    def interrupted(self) -> bool:
        return len(self.records) < self.expected_trials


def sweep_dir_of(cfg: TuneJobConfig) -> str:
    return storage.join(absolute_storage(storage.join(cfg.storage, "tune")), cfg.name)


def _absolute(path: str) -> str:
    return absolute_storage(path) if path else path


def plan_sweep(cfg: TuneJobConfig, sweep_dir: str) -> SweepPlan:
    """Resolve the training inputs once (absolute paths, demo data generated if needed), check
    what the config alone could not (e.g. prompts in the class-means file), pick the metric."""
    method = get_method(cfg.target)
    section = dataclasses.replace(cfg.training_config(), storage=cfg.storage)
    specs = parse_space(cfg.space)
    # FileNotFoundError names a missing input.
    resolved = {k: _absolute(v) for k, v in method.resolve_inputs(section).items()}
    section = dataclasses.replace(section, **resolved)
    method.check_sweep(section, {s.key: list(s.candidates) for s in specs})
    metric, mode = method.checkpoint_metric(section)
    if cfg.metric:
        metric, mode = cfg.metric, cfg.mode
    trial_section = to_dict(dataclasses.replace(section, storage=sweep_dir))
    preset = to_dict(dataclasses.replace(section, name=f"{cfg.name}_best"))
    return SweepPlan(
        spec=TrialSpec(cfg.target, trial_section, sweep_dir),
        specs=specs,
        metric=metric,
        mode=mode,
        epochs=section.run.epochs,
        expected_trials=count_trials(specs, cfg.searcher, cfg.num_samples),
        preset=preset,
    )


def _identity(cfg: TuneJobConfig) -> dict[str, Any]:
    values = to_dict(cfg)
    out = {key: values[key] for key in IDENTITY_KEYS}
    out["space"] = {s.key: {s.kind: list(s.values)} for s in parse_space(cfg.space)}
    out["training"] = to_dict(cfg.training_config())
    out["mode"] = values["mode"]
    return out


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _check_resume(cfg: TuneJobConfig, sweep_dir: str) -> None:
    if not cfg.resume:
        raise ConfigError(
            f"name: a sweep already exists in {sweep_dir}; resume=true continues it, "
            "or choose another name"
        )
    path = storage.join(sweep_dir, SWEEP_FILE)
    if not storage.exists(path):
        return
    saved = yaml.safe_load(storage.read_bytes(path).decode()) or {}
    changed = _differences(saved.get("identity", {}), _identity(cfg))
    if changed:
        raise ConfigError(
            f"{changed[0]}: differs from the sweep in {sweep_dir} "
            f"(changed: {', '.join(changed[:6])}); resume it with the settings it started "
            "with, or choose another name"
        )


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def build_search_alg(cfg: TuneJobConfig) -> tuple[Any, int | None]:
    """(search algorithm, the concurrency limit left for ``TuneConfig``).

    Tune enforces ``max_concurrent_trials`` by wrapping a Searcher such as Optuna's; its own
    variant generator takes the limit itself (given both, Tune ignores max_concurrent_trials).
    """
    if cfg.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=cfg.seed), cfg.max_concurrent_trials
    from ray.tune.search import BasicVariantGenerator

    generator = BasicVariantGenerator(
        max_concurrent=cfg.max_concurrent_trials, random_state=cfg.seed
    )
    return generator, None


def build_scheduler(cfg: TuneJobConfig, epochs: int) -> Any:
    """ASHA counting epochs (``epochs_done``), or None for Tune's first-in-first-out.

    ASHA's rungs are at ``grace_period * reduction_factor**k`` up to ``max_t``. With
    ``max_t = epochs`` a rung can fall on the last epoch, where stopping saves nothing and kills
    the Train run just before it ends by itself (CLIP-Decoder writes its final test metrics after
    that); so ``max_t = epochs - 1``, and trials past it are not stopped (``stop_last_trials``).
    """
    if cfg.scheduler.kind != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epochs_done",
        max_t=epochs - 1,
        grace_period=cfg.scheduler.grace_period,
        reduction_factor=cfg.scheduler.reduction_factor,
        stop_last_trials=False,
    )


def _build_tuner(cfg: TuneJobConfig, plan: SweepPlan, trainable: Any, callbacks: list) -> Any:
    from ray import tune

    search_alg, limit = build_search_alg(cfg)
    return tune.Tuner(
        trainable,
        param_space=to_tune_space(plan.specs, cfg.searcher),
        tune_config=tune.TuneConfig(
            metric=plan.metric,
            mode=plan.mode,
            search_alg=search_alg,
            scheduler=build_scheduler(cfg, plan.epochs),
            num_samples=cfg.num_samples,
            max_concurrent_trials=limit,
            trial_dirname_creator=_trial_dirname,
            # A trial the scheduler stops is still inside fit(), so its actor cannot be reset
            # for another trial; Tune then waits out its forced-cleanup timeout (600 s).
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=absolute_storage(storage.join(cfg.storage, "tune")),
            callbacks=callbacks,
            verbose=cfg.verbose,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def run_sweep(cfg: TuneJobConfig) -> SweepSummary:
    """Run (or continue) the sweep and write its table, plot and best preset.

    Needs a running Ray (``ray_jobs.cli.init_ray``).
    """
    from ray import tune

    from core.tune.cleanup import ReleaseTrainResources, release_sweep, take_released_count

    sweep_dir = sweep_dir_of(cfg)
    plan = plan_sweep(cfg, sweep_dir)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=plan.spec), {"cpu": cfg.trial_driver_cpus}
    )
    resumed = storage.exists(storage.join(sweep_dir, TUNER_STATE))
    if resumed:
        _check_resume(cfg, sweep_dir)
        log.info("continuing the sweep in %s", sweep_dir)
        tuner = tune.Tuner.restore(
            sweep_dir,
            trainable=trainable,
            resume_unfinished=True,
            restart_errored=cfg.restart_errored,
        )
    else:
        storage.write_bytes(
            storage.join(sweep_dir, SWEEP_FILE),
            yaml.safe_dump({"identity": _identity(cfg), "config": to_dict(cfg)}).encode(),
        )
        callbacks = [
            TrialRecorder(sweep_dir, plan.epochs, plan.metric),
            ReleaseTrainResources(sweep_dir),
        ]
        tuner = _build_tuner(cfg, plan, trainable, callbacks)
    log.info(
        "sweep %s: %d trials of %s, %s on %s, at most %d at once → %s",
        cfg.name,
        plan.expected_trials,
        cfg.target,
        cfg.scheduler.kind,
        plan.metric,
        cfg.max_concurrent_trials,
        sweep_dir,
    )
    take_released_count(sweep_dir)  # a count left by an earlier, killed driver
    tuner.fit()
    release_sweep(sweep_dir)
    return write_outputs(cfg, plan, sweep_dir, resumed, take_released_count(sweep_dir))


def write_outputs(
    cfg: TuneJobConfig, plan: SweepPlan, sweep_dir: str, resumed: bool, released: int
) -> SweepSummary:
    """Table (Parquet + CSV), plot and best preset from the trial records."""
    summary = SweepSummary(
        sweep_dir=sweep_dir,
        metric=plan.metric,
        mode=plan.mode,
        expected_trials=plan.expected_trials,
        records=load_records(sweep_dir),
        resumed=resumed,
        released_placement_groups=released,
    )
    if not summary.records:
        return summary
    keys = [s.key for s in plan.specs]
    summary.table_parquet, summary.table_csv = write_table(
        results_table(summary.records, keys, plan.metric), sweep_dir
    )
    method = get_method(cfg.target)
    colour = method.colour_key if method.colour_key in keys else ""
    summary.plot = plot_metric_vs_alpha(
        summary.records,
        plan.metric,
        colour,
        float(plan.spec.training.get("alpha", 0.0)),
        storage.join(sweep_dir, f"{plan.metric}_vs_alpha.png"),
        title=f"{cfg.name}: {plan.metric} against alpha",
    )
    summary.best = best_record(summary.records, plan.metric, plan.mode)
    if summary.best is not None and not summary.interrupted:
        training = apply_overrides(method.config_class, plan.preset, dict(summary.best["config"]))
        summary.best_preset = write_best_preset(
            to_dict(training),
            summary.best,
            storage.join(sweep_dir, BEST_PRESET),
            job=method.job,
            sweep_name=cfg.name,
            metric=plan.metric,
        )
    return summary
