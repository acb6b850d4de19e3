"""The one place in ``core`` that uses Ray's private internals, checked against the Ray version.

Ray keeps no compatibility promise for its private modules (GCS tables, the internal key-value
store, Train V2's callback classes), and a Ray upgrade can break any of them silently. Every
such use therefore lives here, behind small named functions, and runs only on a Ray version in
:data:`TESTED_RAY_VERSIONS`. On any other version each function says in its docstring what it
does instead:

- **falls back** to Ray's public state API (``ray.util.state``), which needs the dashboard (the
  jobs start it by default, ``RayConfig.dashboard``); if that fails too, it raises
  :class:`UnsupportedRayVersion`;
- **refuses**: raises :class:`UnsupportedRayVersion`, one line naming the Ray version found and
  the tested ones, because no public API does the same job.

To adopt a new Ray: install it, add its version to :data:`TESTED_RAY_VERSIONS`, and run
``tests/test_ray_internals.py`` and ``tests/test_tune.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

import ray

#: Ray versions these internals were checked against (both test files above pass on each).
TESTED_RAY_VERSIONS: tuple[str, ...] = ("2.60.0",)

#: Actor states of the GCS actor table, as Ray names them.
LIVE_ACTOR_STATES = ("DEPENDENCIES_UNREADY", "PENDING_CREATION", "ALIVE", "RESTARTING")

# The state API returns at most this many rows per call unless Ray is told otherwise.
_STATE_API_LIMIT = 10_000

# GCS address → why the state API is unreachable there. Without a dashboard each call spends
# about 40 s retrying before it gives up, so the first failure is remembered.
_STATE_API_DOWN: dict[str, str] = {}

_T = TypeVar("_T")


class UnsupportedRayVersion(RuntimeError):
    """Ray internals are needed, the installed Ray is not a tested one, and no fallback worked."""


def installed_ray_version() -> str:
    """The Ray version this process runs (one function, so tests can pretend another)."""
    return ray.__version__


def ray_version_is_tested() -> bool:
    """Whether the private internals below are known to work with the installed Ray."""
    return installed_ray_version() in TESTED_RAY_VERSIONS


def _tested() -> str:
    return ", ".join(TESTED_RAY_VERSIONS)


def _refuse(what: str) -> UnsupportedRayVersion:
    return UnsupportedRayVersion(
        f"Ray {installed_ray_version()} is installed, but {what} relies on Ray internals tested "
        f"only with Ray {_tested()}: install a tested Ray, or run tests/test_ray_internals.py and "
        f"tests/test_tune.py on it and add it to core.ray_internals.TESTED_RAY_VERSIONS"
    )


def _require_tested(what: str) -> None:
    if not ray_version_is_tested():
        raise _refuse(what)


def _fallback_failed(what: str, reason: str) -> UnsupportedRayVersion:
    return UnsupportedRayVersion(
        f"Ray {installed_ray_version()} is not a tested Ray ({_tested()}), and the fallback for "
        f"{what}, Ray's state API, failed (it needs the dashboard): {reason}"
    )


def _state_api(what: str, call: Callable[[str], _T]) -> _T:
    """``call(address)`` against this Ray's state API, any failure as one clear line."""
    address = ray.get_runtime_context().gcs_address  # not "auto": one machine may run several
    if address in _STATE_API_DOWN:
        raise _fallback_failed(what, _STATE_API_DOWN[address])
    try:
        return call(address)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, ConnectionError):  # no dashboard: it will not come back
            _STATE_API_DOWN[address] = reason
        raise _fallback_failed(what, reason) from exc


# --------------------------------------------------------------------------------------------
# Actors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActorRow:
    """One actor of the cluster, as plain strings (ids in hex)."""

    actor_id: str
    class_name: str
    state: str  # ALIVE, DEAD, ... (LIVE_ACTOR_STATES, or DEAD)
    job_id: str
    node_id: str


def actor_rows(state: str | None = None) -> list[ActorRow]:
    """Every actor the cluster knows (only those in ``state`` when given).

    Tested Ray: the GCS actor table, which needs no dashboard. Other Ray: falls back to
    ``ray.util.state.list_actors`` (needs the dashboard); raises :class:`UnsupportedRayVersion`
    when that fails too.
    """
    if ray_version_is_tested():
        from ray._private import state as gcs_state

        table = gcs_state.actors(actor_state_name=state)
        return [
            ActorRow(
                actor_id=info["ActorID"],
                class_name=info["ActorClassName"],
                state=info["State"],
                job_id=info["JobID"],
                node_id=info.get("Address", {}).get("NodeID", ""),
            )
            for info in table.values()
        ]
    from ray.util.state import list_actors

    filters = [("state", "=", state)] if state else None
    rows = _state_api(
        "the actor table",
        lambda address: list_actors(
            address, filters=filters, limit=_STATE_API_LIMIT, raise_on_missing_output=False
        ),
    )
    return [
        ActorRow(
            actor_id=a.actor_id,
            class_name=a.class_name or "",
            state=str(a.state),
            job_id=a.job_id or "",
            node_id=a.node_id or "",
        )
        for a in rows
    ]


def actor_state(actor_id: str) -> str:
    """``ALIVE``, ``DEAD``, ... of one actor (hex id); "" when the cluster no longer knows it.

    Tested Ray: the GCS actor table (no dashboard). Other Ray: falls back to
    ``ray.util.state.get_actor`` (needs the dashboard); raises :class:`UnsupportedRayVersion`
    when that fails too.
    """
    if ray_version_is_tested():
        from ray._private import state as gcs_state

        info = gcs_state.actors(actor_id=actor_id)
        return info.get("State", "") if info else ""
    from ray.util.state import get_actor

    found = _state_api("an actor's state", lambda address: get_actor(actor_id, address))
    return str(found.state) if found is not None else ""


# --------------------------------------------------------------------------------------------
# Placement groups
# --------------------------------------------------------------------------------------------


def _gcs_live_placement_groups() -> list[Any]:
    from ray._private import state as gcs_state
    from ray.core.generated import gcs_pb2

    accessor = gcs_state.state._connect_and_get_accessor()
    groups = [
        gcs_pb2.PlacementGroupTableData.FromString(item)
        for item in accessor.get_placement_group_table()
    ]
    return [g for g in groups if g.state != gcs_pb2.PlacementGroupTableData.REMOVED]


def live_placement_group_ids() -> set[str]:
    """Hex ids of every placement group not yet removed (pending, created or rescheduling).

    Tested Ray: the GCS placement-group table (no dashboard). Other Ray: falls back to
    ``ray.util.state.list_placement_groups`` (needs the dashboard); raises
    :class:`UnsupportedRayVersion` when that fails too.
    """
    if ray_version_is_tested():
        return {g.placement_group_id.hex() for g in _gcs_live_placement_groups()}
    from ray.util.state import list_placement_groups

    rows = _state_api(
        "the placement-group table",
        lambda address: list_placement_groups(
            address, limit=_STATE_API_LIMIT, raise_on_missing_output=False
        ),
    )
    return {g.placement_group_id for g in rows if str(g.state) != "REMOVED"}


def placement_groups_created_by(actor_ids: Collection[str]) -> dict[str, str]:
    """Placement groups not yet removed that one of ``actor_ids`` created: group id → creator.

    A group made by a (non-detached) actor outlives the actor until the job ends, so this is how
    a dead actor's groups are found and removed. Tested Ray only: the creator is in the GCS table
    and nowhere public, so any other Ray raises :class:`UnsupportedRayVersion`.
    """
    _require_tested("finding the placement groups an actor created")
    wanted = set(actor_ids)
    out: dict[str, str] = {}
    for group in _gcs_live_placement_groups():
        creator = group.creator_actor_id.hex()
        if creator in wanted:
            out[group.placement_group_id.hex()] = creator
    return out


def remove_placement_group(placement_group_id: str) -> None:
    """Remove one placement group by hex id (Ray raises if it is gone or unknown).

    Public API only (``ray.util.remove_placement_group``): works on any Ray, no version check.
    """
    from ray.util.placement_group import PlacementGroup
    from ray.util.placement_group import remove_placement_group as remove

    remove(PlacementGroup(ray.PlacementGroupID.from_hex(placement_group_id)))


# --------------------------------------------------------------------------------------------
# GCS key-value store (shared by the driver and every actor of the cluster)
# --------------------------------------------------------------------------------------------


def kv_put(key: str, value: str | bytes, namespace: str) -> None:
    """Store ``value`` under ``key`` (overwriting).

    Tested Ray only: Ray has no public cluster-wide key-value store, so any other Ray raises
    :class:`UnsupportedRayVersion`.
    """
    _require_tested("the GCS key-value store")
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(key, value, overwrite=True, namespace=namespace)


def kv_get(key: str, namespace: str) -> bytes | None:
    """The value under ``key``, or None.

    Tested Ray only; any other Ray raises :class:`UnsupportedRayVersion` (no public equivalent).
    """
    _require_tested("the GCS key-value store")
    from ray.experimental.internal_kv import _internal_kv_get

    return _internal_kv_get(key, namespace=namespace)


def kv_keys(prefix: str, namespace: str) -> list[str]:
    """Every key that starts with ``prefix``.

    Tested Ray only; any other Ray raises :class:`UnsupportedRayVersion` (no public equivalent).
    """
    _require_tested("the GCS key-value store")
    from ray.experimental.internal_kv import _internal_kv_list

    return [
        k.decode() if isinstance(k, bytes) else k
        for k in _internal_kv_list(prefix, namespace=namespace)
    ]


def kv_del(key: str, namespace: str) -> None:
    """Delete ``key`` (nothing happens if it is absent).

    Tested Ray only; any other Ray raises :class:`UnsupportedRayVersion` (no public equivalent).
    """
    _require_tested("the GCS key-value store")
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(key, namespace=namespace)


# --------------------------------------------------------------------------------------------
# Ray Train V2
# --------------------------------------------------------------------------------------------


def controller_callback_base() -> type:
    """Train V2's ``ControllerCallback``: a ``RunConfig`` callback that runs in the controller.

    Its ``after_controller_start`` hook runs before the worker group (and its placement group)
    exists; the public ``ray.train.UserCallback`` has no such hook. Tested Ray only: any other
    Ray raises :class:`UnsupportedRayVersion`.
    """
    _require_tested("a Ray Train controller callback")
    from ray.train.v2._internal.execution.callback import ControllerCallback

    return ControllerCallback


def torch_trainer_without_placement_group_cleaner() -> type:
    """A ``TorchTrainer`` subclass whose runs start without Ray's ``PlacementGroupCleaner``.

    Everything else of the trainer is Ray's own. Tested Ray only: the cleaner is added by a
    private method of the trainer, so any other Ray raises :class:`UnsupportedRayVersion`.
    """
    _require_tested("starting Ray Train without its placement-group cleaner")
    return _trainer_without_cleaner()


@functools.cache
def _trainer_without_cleaner() -> type:
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    class TorchTrainerWithoutCleaner(TorchTrainer):
        def _create_default_callbacks(self) -> list[Any]:
            return [
                cb
                for cb in super()._create_default_callbacks()
                if not isinstance(cb, PlacementGroupCleanerCallback)
            ]

    return TorchTrainerWithoutCleaner
