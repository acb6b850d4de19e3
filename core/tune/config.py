"""``python -m ray_jobs.tune``: the sweep's configuration.

A sweep file names its ``target`` method (any name in :mod:`core.train.registry`), holds that
method's training config as its ``training`` section (the same keys as the training job's YAML),
and a ``space`` of dotted keys of that section. Every trial trains the section with the trial's
values filled in, so the best trial's configuration is a training preset as it stands.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Literal

from core.config import RayConfig, check, config_from_dict, to_dict
from core.train.registry import METHODS, get_method
from core.tune.space import check_searcher, check_space, parse_space


@dataclass
class SchedulerConfig:
    """Early stopping: ASHA on the validation metric, or none (``fifo``)."""

    kind: Literal["asha", "fifo"] = "asha"
    grace_period: int = 1  # epochs every trial trains before ASHA may stop it
    reduction_factor: float = 2.0  # ASHA keeps the best 1/reduction_factor at each rung

    def validate(self, key: str) -> None:
        check(self.grace_period >= 1, f"{key}.grace_period", "must be >= 1")
        check(self.reduction_factor > 1, f"{key}.reduction_factor", "must be > 1")


@dataclass
class TuneJobConfig:
    """A Ray Tune sweep over one training method (see the module docstring)."""

    target: str = "regularized"  # a registered training method
    storage: str = "outputs"  # storage root; the sweep lives in <storage>/tune/<name>
    name: str = "sweep"
    training: dict[str, Any] = field(default_factory=dict)  # the target's training config
    space: dict[str, dict[str, Any]] = field(default_factory=dict)  # dotted key → spec
    searcher: Literal["random", "grid", "optuna"] = "random"
    num_samples: int = 1  # random / optuna: trials; grid: repeats of the whole grid
    max_concurrent_trials: int = 1
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    metric: str = ""  # "" → the metric the training run keeps checkpoints by
    mode: Literal["", "max", "min"] = ""  # with metric
    seed: int = 0  # seed of the searcher's sampling (each trial's own seed is the section's)
    trial_driver_cpus: float = 0.01  # logical CPUs of each trial's driver (it mostly waits)
    resume: bool = True  # continue the sweep in <storage>/tune/<name> if it exists
    restart_errored: bool = False  # on resume, run errored trials again (from their last
    # Train checkpoint, like any rerun of a training run)
    verbose: int = 1  # Tune's progress output: 0 none, 1 status tables, 2 every result
    ray: RayConfig = field(default_factory=RayConfig)

    def training_config(self) -> Any:
        """The target's training section as its config class (every trial starts from it)."""
        cls = get_method(self.target).config_class
        return config_from_dict(cls, self.training, key="training")

    def validate(self, key: str) -> None:
        check(
            self.target in METHODS,
            "target",
            f"got {self.target!r}, registered methods: {', '.join(sorted(METHODS))}",
        )
        check(
            bool(self.name) and "/" not in self.name and self.name.strip() == self.name,
            "name",
            f"must be a plain folder name, got {self.name!r}",
        )
        check(self.num_samples >= 1, "num_samples", f"must be >= 1, got {self.num_samples}")
        check(
            self.max_concurrent_trials >= 1,
            "max_concurrent_trials",
            f"must be >= 1, got {self.max_concurrent_trials}",
        )
        check(self.trial_driver_cpus > 0, "trial_driver_cpus", "must be > 0")
        check(self.verbose in (0, 1, 2), "verbose", f"must be 0, 1 or 2, got {self.verbose}")
        check(
            bool(self.metric) == bool(self.mode),
            "mode" if self.metric else "metric",
            "metric and mode go together (e.g. metric: val_acc, mode: max); "
            "leave both out for the training run's checkpoint metric",
        )
        section = self.training_config()
        default_storage = type(section)().storage
        check(
            section.storage in (default_storage, self.storage),
            "training.storage",
            "set the storage root at the top level (storage=...), not in the training section",
        )
        check(
            not getattr(section, "compare_baseline", False),
            "training.compare_baseline",
            "must be false: each trial trains one model (put alpha 0 in the space instead)",
        )
        check(
            self.scheduler.kind != "asha" or self.scheduler.grace_period < section.run.epochs,
            "scheduler.grace_period",
            f"must be < training.run.epochs ({section.run.epochs}): ASHA can only stop a trial "
            "before its last epoch",
        )
        specs = parse_space(self.space)
        check_space(specs, type(section), to_dict(section))
        check_searcher(specs, self.searcher)
        if self.searcher == "optuna":
            check(
                importlib.util.find_spec("optuna") is not None,
                "searcher",
                "optuna is not installed; pip install 'lmm-clip[tune-optuna]' (or optuna)",
            )
