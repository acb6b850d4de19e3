"""Release what a trial's Ray Train run leaves on the cluster when Tune ends the trial.

What leaks, measured on Ray 2.60 (local cluster started with ``include_dashboard=False``, as the
tests start it; the jobs start the dashboard by default, ``RayConfig.dashboard``, but can run
without it; 6 trials of 4 epochs, ASHA, 2 at a time, 4 logical CPUs):

- Tune ends a trial by terminating its actor. The trial actor owns the Train controller, which
  owns the workers, so those die with it; but the worker group's placement group was created by
  the controller, and a placement group made by a (non-detached) actor lives until the whole job
  ends. Every trial ASHA stopped kept its worker CPUs reserved; after two such trials the next
  ones waited for resources forever.
- Ray Train starts a detached ``PlacementGroupCleaner`` per run to remove that placement group
  when the controller dies, but it learns of the death through the state API, which needs the
  dashboard. Without it the cleaner retries forever: one more live process per stopped trial,
  and the placement group stays.

The fix, in two halves that share the GCS key-value store:

- :class:`TrainRunTracker` rides in each trial's ``RunConfig(callbacks=...)`` and runs inside the
  Train controller: it records the controller's actor id under the sweep and trial, and the run
  starts without Ray's ``PlacementGroupCleaner`` (the sweep does its job instead).
- :class:`ReleaseTrainResources` is a Tune callback in the sweep's driver: once a trial has ended
  and its controller is dead, it removes every placement group that controller created and drops
  the record. :func:`release_sweep` does the same for every trial of a sweep at its end, waiting
  for the last controllers to die.

Placement groups are found by their creator (the controller's actor id) in the GCS tables, so a
worker group still pending, or restarted after a worker failure, is found too. Every Ray internal
this needs (GCS tables, the GCS key-value store, Train's controller callback) comes from
:mod:`core.ray_internals`, which refuses an untested Ray version with one clear line: importing
this module on one stops a sweep before it starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune

from core import ray_internals
from core.ray_internals import actor_state

log = logging.getLogger(__name__)

KV_NAMESPACE = "lmm_clip_tune"
_SEP = "::"


# --------------------------------------------------------------------------------------------
# Cluster state
# --------------------------------------------------------------------------------------------


@dataclass
class ClusterSnapshot:
    """Live actors (id → class name) and placement groups not yet removed."""

    actors: dict[str, str] = field(default_factory=dict)
    placement_groups: set[str] = field(default_factory=set)


def cluster_snapshot() -> ClusterSnapshot:
    """What is alive on the cluster now (compare two snapshots to see what a sweep left)."""
    actors = {
        a.actor_id: a.class_name
        for state in ray_internals.LIVE_ACTOR_STATES
        for a in ray_internals.actor_rows(state)
    }
    return ClusterSnapshot(actors, ray_internals.live_placement_group_ids())


# --------------------------------------------------------------------------------------------
# Inside the Train controller
# --------------------------------------------------------------------------------------------


def _kv_prefix(sweep_key: str, trial_id: str = "") -> str:
    return f"{sweep_key}{_SEP}{trial_id}{_SEP}" if trial_id else f"{sweep_key}{_SEP}"


class TrainRunTracker(ray_internals.controller_callback_base()):
    """Train callback (runs in the controller): records the controller under its trial.

    ``replaces_placement_group_cleaner`` makes ``core.train.launch`` start the run without Ray's
    detached ``PlacementGroupCleaner``: the sweep's driver removes the placement group instead.
    Stopping Ray's cleaner from here instead raced with Tune: a trial killed between the
    cleaner's start and its stop left the cleaner polling forever.
    """

    replaces_placement_group_cleaner = True

    def __init__(self, sweep_key: str, trial_id: str) -> None:
        self.sweep_key = sweep_key
        self.trial_id = trial_id

    def after_controller_start(self, train_run_context: Any) -> None:
        # Runs before the worker group (and its placement group) is created, so every group
        # the controller makes is findable by the record. Best effort: never fail the run.
        controller = ray.get_runtime_context().get_actor_id()
        key = _kv_prefix(self.sweep_key, self.trial_id) + controller
        try:
            ray_internals.kv_put(key, train_run_context.run_config.name, KV_NAMESPACE)
        except Exception:
            log.warning("trial %s: could not record its Train controller", self.trial_id)


# --------------------------------------------------------------------------------------------
# In the sweep's driver
# --------------------------------------------------------------------------------------------


@dataclass
class Released:
    """One release pass: placement groups removed, controllers still alive (not yet released)."""

    placement_groups: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # "trial_id/controller_id"


def release_trial_runs(sweep_key: str, trial_ids: Iterable[str] | None = None) -> Released:
    """Remove the placement groups of every recorded Train run whose controller has died.

    ``trial_ids``: only these trials (default: every trial of the sweep). A run whose controller
    is still alive is left for a later pass.
    """
    keys: list[str] = []
    prefixes = [_kv_prefix(sweep_key, t) for t in trial_ids] if trial_ids is not None else None
    for prefix in prefixes if prefixes is not None else [_kv_prefix(sweep_key)]:
        keys += ray_internals.kv_keys(prefix, KV_NAMESPACE)
    out = Released()
    dead: dict[str, str] = {}
    for key in keys:
        trial_id, controller = key[len(sweep_key) + len(_SEP) :].split(_SEP)
        if actor_state(controller) in ("DEAD", ""):
            dead[controller] = key
        else:
            out.waiting.append(f"{trial_id}/{controller}")
    if not dead:
        return out
    for group in ray_internals.placement_groups_created_by(dead):
        try:
            ray_internals.remove_placement_group(group)
        except Exception as exc:  # removed meanwhile, e.g. by Train's own shutdown
            log.debug("placement group %s: %s", group, exc)
            continue
        out.placement_groups.append(group)
    for key in dead.values():
        ray_internals.kv_del(key, KV_NAMESPACE)
    if out.placement_groups:
        _add_released(sweep_key, len(out.placement_groups))
        log.info(
            "released %d placement group(s) left by ended trials' Train runs",
            len(out.placement_groups),
        )
    return out


def _released_key(sweep_key: str) -> str:
    return f"{sweep_key}@released"  # outside the trials' prefix


def _add_released(sweep_key: str, count: int) -> None:
    total = released_count(sweep_key) + count
    ray_internals.kv_put(_released_key(sweep_key), str(total), KV_NAMESPACE)


def released_count(sweep_key: str) -> int:
    """Placement groups the sweep has removed since :func:`take_released_count` last ran."""
    value = ray_internals.kv_get(_released_key(sweep_key), KV_NAMESPACE)
    return int(value) if value else 0


def take_released_count(sweep_key: str) -> int:
    """:func:`released_count`, and reset it (so the sweep leaves nothing in the GCS store)."""
    count = released_count(sweep_key)
    ray_internals.kv_del(_released_key(sweep_key), KV_NAMESPACE)
    return count


def release_sweep(sweep_key: str, timeout_s: float = 120.0, poll_s: float = 0.5) -> Released:
    """Release every Train run of the sweep, waiting up to ``timeout_s`` for controllers to die."""
    total = Released()
    deadline = time.monotonic() + timeout_s
    while True:
        step = release_trial_runs(sweep_key)
        total.placement_groups += step.placement_groups
        total.waiting = step.waiting
        if not step.waiting or time.monotonic() > deadline:
            break
        time.sleep(poll_s)
    if total.waiting:
        log.warning(
            "Train controllers still alive after %.0f s, their placement groups kept: %s",
            timeout_s,
            ", ".join(total.waiting),
        )
    return total


class ReleaseTrainResources(tune.Callback):
    """Tune callback: release each ended trial's Train run as soon as its controller is gone."""

    def __init__(self, sweep_key: str, poll_s: float = 1.0) -> None:
        self.sweep_key = sweep_key
        self.poll_s = poll_s
        self._ended: set[str] = set()
        self._last_poll = 0.0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if not self._ended or now - self._last_poll < self.poll_s:
            return
        self._last_poll = now
        waiting = release_trial_runs(self.sweep_key, sorted(self._ended)).waiting
        self._ended = {w.split("/")[0] for w in waiting}
