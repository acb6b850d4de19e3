"""One trial: the target's own training entry point with the trial's settings filled in.

The trial is a Tune function trainable that builds and fits one TorchTrainer through the training
engine (:func:`core.train.engine.fit`) with the target method, and Tune's report callback in the
Train ``RunConfig``. So a trial is exactly a
training run of its configuration; its Train run lives in ``<sweep>/runs/<trial_id>``, and
running the trial again (a resumed sweep) continues that run from its last checkpoint. A trial
Tune runs again although it had finished (the driver died between the trial's end and Tune's next
save of its state) reports what it finished instead of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from core import storage
from core.train.registry import get_method
from core.tune.results import read_record
from core.tune.space import apply_overrides

RUNS_DIR = "runs"


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a sweep shares (sent to the trials once, through the object store)."""

    target: str
    training: dict[str, Any]  # the training section; inputs resolved, storage = the sweep folder
    sweep_dir: str


def trial_config(spec: TrialSpec, settings: dict[str, Any], trial_id: str) -> Any:
    """The trial's training config: the section with the trial's dotted settings applied."""
    cls = get_method(spec.target).config_class
    return apply_overrides(cls, spec.training, {**settings, "name": trial_id})


def run_dir(sweep_dir: str, trial_id: str) -> str:
    return storage.join(sweep_dir, RUNS_DIR, trial_id)


class EpochReportCallback(TuneReportCallback):
    """Tune's report callback plus ``epochs_done`` (epoch + 1), the scheduler's clock.

    Counting epochs rather than Tune iterations keeps the clock right for a resumed trial, whose
    Train run continues from its checkpoint and reports only the epochs still to do.
    """

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any):
        first = dict(metrics[0])
        first["epochs_done"] = int(first.get("epoch", -1)) + 1
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)


def _finished_epoch(sweep_dir: str, trial_id: str, epochs: int) -> dict[str, Any] | None:
    """The last epoch's metrics if the trial's Train run has trained every epoch, else None."""
    from core.train.engine import read_history

    history = read_history(run_dir(sweep_dir, trial_id))
    if len(history) < epochs:
        return None
    return {**history[-1], "epochs_done": int(history[-1]["epoch"]) + 1}


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Tune function trainable (``config``: the trial's dotted settings)."""
    from ray import tune

    from core.tune.cleanup import TrainRunTracker

    trial_id = tune.get_context().get_trial_id()
    record = read_record(spec.sweep_dir, trial_id)
    if record is not None and record["status"] == "TERMINATED":
        # Finished before the sweep was interrupted, after Tune last saved its state.
        tune.report(dict(record["metrics"]))
        return
    cfg = trial_config(spec, config, trial_id)
    last = _finished_epoch(spec.sweep_dir, trial_id, cfg.run.epochs)
    if last is not None:
        # Its Train run trained every epoch, but the sweep was interrupted before Tune heard of
        # the last one: fitting again would report nothing.
        tune.report(last)
        return
    callbacks = [EpochReportCallback(), TrainRunTracker(spec.sweep_dir, trial_id)]
    from core.train.engine import fit

    fit(spec.target, cfg, storage.join(spec.sweep_dir, RUNS_DIR), trial_id, callbacks=callbacks)
