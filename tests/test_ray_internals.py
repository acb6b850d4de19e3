"""Ray's private internals stay in ``core.ray_internals``, refuse or fall back on an untested Ray,
and work on the installed one."""

from __future__ import annotations

import ast
import re
import time
import uuid
from pathlib import Path

import pytest

from core import ray_internals
from core.ray_internals import UnsupportedRayVersion

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = ROOT / "core" / "ray_internals.py"
UNTESTED = "9.99.0"

# Private Ray modules, attributes and methods: any ``ray.<...>._name`` (dunders aside), and
# the named ones that can appear without the ``ray.`` in front on their line.
PRIVATE_RAY = re.compile(
    r"\bray(?:\.\w+)*\._(?!_)\w+"
    r"|\bray\.core\.generated\b"
    r"|\._internal\b"
    r"|\binternal_kv\b"
    r"|\b_create_default_callbacks\b"
    r"|\b_raylet\b"
)


def _private_ray_uses(source: str) -> list[int]:
    """Line numbers of ``source`` that use a private part of Ray."""
    lines = {n for n, line in enumerate(source.splitlines(), 1) if PRIVATE_RAY.search(line)}
    # ``from ray.x import (\n _name,\n)`` spreads over lines the pattern cannot join.
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a one-line sample below; every real file parses
        return sorted(lines)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and (node.module or "").split(".")[0] == "ray"
            and any(a.name.startswith("_") and not a.name.startswith("__") for a in node.names)
        ):
            lines.add(node.lineno)
    return sorted(lines)


@pytest.mark.parametrize(
    "line",
    [
        "from ray._private import state",
        "import ray._raylet",
        "    info = ray._private.state.actors()",
        "from ray.train.v2._internal.execution.callback import ControllerCallback",
        "from ray.core.generated import gcs_pb2",
        "from ray.experimental.internal_kv import _internal_kv_put",
        "        for cb in super()._create_default_callbacks()",
        "from ray import _private",
        "from ray.util import (\n    _hidden,\n)",
        "x = ray.util._private_helper()",
    ],
)
def test_the_scan_finds_private_ray_uses(line: str) -> None:
    assert _private_ray_uses(line)


@pytest.mark.parametrize(
    "line",
    [
        "version = ray.__version__",
        "self._internal_state = 1",
        "from ray.util.state import list_actors",
        "from ray.util.placement_group import remove_placement_group",
        "ray.get_runtime_context().get_actor_id()",
    ],
)
def test_the_scan_leaves_public_ray_alone(line: str) -> None:
    assert not _private_ray_uses(line)


def test_private_ray_is_used_only_in_core_ray_internals() -> None:
    files = sorted([*(ROOT / "core").rglob("*.py"), *(ROOT / "ray_jobs").rglob("*.py")])
    assert ALLOWED in files and _private_ray_uses(ALLOWED.read_text())  # the scan reads files
    found = [
        f"{path.relative_to(ROOT)}:{n}: {path.read_text().splitlines()[n - 1].strip()}"
        for path in files
        if path != ALLOWED
        for n in _private_ray_uses(path.read_text())
    ]
    assert not found, "private Ray used outside core/ray_internals.py:\n" + "\n".join(found)


# --------------------------------------------------------------------------------------------
# An untested Ray version
# --------------------------------------------------------------------------------------------


@pytest.fixture
def untested_ray(monkeypatch):
    monkeypatch.setattr(ray_internals, "installed_ray_version", lambda: UNTESTED)
    monkeypatch.setattr(ray_internals, "_STATE_API_DOWN", {})
    assert not ray_internals.ray_version_is_tested()


def _one_clear_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    assert f"Ray {UNTESTED}" in message
    assert all(v in message for v in ray_internals.TESTED_RAY_VERSIONS)
    return message


@pytest.mark.parametrize(
    "call",
    [
        lambda: ray_internals.placement_groups_created_by(["ab" * 16]),
        lambda: ray_internals.kv_put("k", "v", "ns"),
        lambda: ray_internals.kv_get("k", "ns"),
        lambda: ray_internals.kv_keys("k", "ns"),
        lambda: ray_internals.kv_del("k", "ns"),
        ray_internals.controller_callback_base,
        ray_internals.torch_trainer_without_placement_group_cleaner,
    ],
    ids=[
        "placement_groups_created_by",
        "kv_put",
        "kv_get",
        "kv_keys",
        "kv_del",
        "controller_callback_base",
        "torch_trainer_without_placement_group_cleaner",
    ],
)
def test_internals_without_a_public_equivalent_refuse_an_untested_ray(untested_ray, call) -> None:
    with pytest.raises(UnsupportedRayVersion) as exc:
        call()
    assert "TESTED_RAY_VERSIONS" in _one_clear_line(exc)


def test_a_sweep_refuses_an_untested_ray_before_it_starts(monkeypatch) -> None:
    """Training without a sweep never needs the internals; a sweep's trial and its driver do."""
    import importlib
    import sys

    from ray.train.torch import TorchTrainer

    from core.train.launch import _trainer_class
    from core.tune.cleanup import TrainRunTracker, release_trial_runs, take_released_count

    tracker = TrainRunTracker("sweep", "t_00000")
    monkeypatch.setattr(ray_internals, "installed_ray_version", lambda: UNTESTED)
    # run_sweep imports core.tune.cleanup first thing: a fresh import refuses.
    monkeypatch.delitem(sys.modules, "core.tune.cleanup")
    with pytest.raises(UnsupportedRayVersion) as exc:
        importlib.import_module("core.tune.cleanup")
    _one_clear_line(exc)
    assert _trainer_class([]) is TorchTrainer
    with pytest.raises(UnsupportedRayVersion) as exc:
        _trainer_class([tracker])
    _one_clear_line(exc)
    for call in (lambda: take_released_count("sweep"), lambda: release_trial_runs("sweep")):
        with pytest.raises(UnsupportedRayVersion) as exc:
            call()
        _one_clear_line(exc)


def _fake_state_api(monkeypatch, ray_mod, actors: list, groups: list) -> list[str]:
    """Ray's state API answering with ``actors`` / ``groups``; returns the addresses asked."""
    import ray.util.state

    asked: list[str] = []

    def list_actors(address=None, filters=None, **_):
        asked.append(address)
        wanted = dict((k, v) for k, _, v in filters or [])
        return [a for a in actors if wanted.get("state", a.state) == a.state]

    def get_actor(id, address=None, **_):
        asked.append(address)
        return next((a for a in actors if a.actor_id == id), None)

    def list_placement_groups(address=None, **_):
        asked.append(address)
        return groups

    monkeypatch.setattr(ray.util.state, "list_actors", list_actors)
    monkeypatch.setattr(ray.util.state, "get_actor", get_actor)
    monkeypatch.setattr(ray.util.state, "list_placement_groups", list_placement_groups)
    return asked


@pytest.mark.ray
def test_tables_fall_back_to_the_state_api_on_an_untested_ray(
    ray_local, untested_ray, monkeypatch
) -> None:
    from ray.util.state.common import ActorState, PlacementGroupState

    from core.captioning.stage import caption_actor_nodes

    job = ray_local.get_runtime_context().get_job_id()
    alive = ActorState(
        actor_id="a1", class_name="MapWorker(MapBatches(Captioner))", state="ALIVE",
        job_id=job, name="", node_id="n1", pid=1, ray_namespace="",
    )  # fmt: skip
    dead = ActorState(
        actor_id="a2", class_name="Other", state="DEAD",
        job_id=job, name="", node_id="n2", pid=2, ray_namespace="",
    )  # fmt: skip
    groups = [
        PlacementGroupState(placement_group_id=p, name="", creator_job_id=job, state=s)
        for p, s in (("p1", "CREATED"), ("p2", "REMOVED"), ("p3", "PENDING"))
    ]
    asked = _fake_state_api(monkeypatch, ray_local, [alive, dead], groups)

    assert ray_internals.actor_rows("ALIVE") == [
        ray_internals.ActorRow("a1", "MapWorker(MapBatches(Captioner))", "ALIVE", job, "n1")
    ]
    assert [a.actor_id for a in ray_internals.actor_rows()] == ["a1", "a2"]
    assert ray_internals.actor_state("a2") == "DEAD"
    assert ray_internals.actor_state("a3") == ""
    assert ray_internals.live_placement_group_ids() == {"p1", "p3"}
    assert caption_actor_nodes() == ["n1"]
    # This Ray's own address, never "auto": a machine may run several Ray instances.
    assert set(asked) == {ray_local.get_runtime_context().gcs_address}


@pytest.mark.ray
def test_a_failed_fallback_is_one_clear_line_and_remembered(
    ray_local, untested_ray, monkeypatch
) -> None:
    import ray.util.state

    from core.captioning.stage import caption_actor_nodes

    calls: list[str] = []

    def no_dashboard(*args, **kwargs):
        calls.append("called")
        raise ConnectionError("Could not read 'dashboard' from GCS.\nDid GCS start successfully?")

    for name in ("list_actors", "get_actor", "list_placement_groups"):
        monkeypatch.setattr(ray.util.state, name, no_dashboard)
    with pytest.raises(UnsupportedRayVersion) as exc:
        ray_internals.actor_rows()
    assert "state API" in _one_clear_line(exc) and "Could not read 'dashboard'" in str(exc.value)
    for call in (ray_internals.live_placement_group_ids, lambda: ray_internals.actor_state("a")):
        with pytest.raises(UnsupportedRayVersion) as exc:
            call()
        _one_clear_line(exc)
    assert caption_actor_nodes() == []  # progress only: unknown, not an error
    assert len(calls) == 1  # Ray spends ~40 s finding no dashboard: asked once


# --------------------------------------------------------------------------------------------
# The installed Ray
# --------------------------------------------------------------------------------------------


def test_the_installed_ray_is_a_tested_one() -> None:
    import ray

    assert ray.__version__ in ray_internals.TESTED_RAY_VERSIONS, (
        f"Ray {ray.__version__} is installed but core.ray_internals was tested with "
        f"{ray_internals.TESTED_RAY_VERSIONS}: run this file and tests/test_tune.py, then add it"
    )


def _eventually(check, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.ray
def test_kv_round_trip(ray_local) -> None:
    namespace = f"test_ray_internals_{uuid.uuid4().hex}"
    ray_internals.kv_put("sweep::t1::a", "run-a", namespace)
    ray_internals.kv_put("sweep::t1::b", b"run-b", namespace)
    ray_internals.kv_put("other", "x", namespace)
    assert ray_internals.kv_get("sweep::t1::a", namespace) == b"run-a"
    assert ray_internals.kv_get("sweep::t1::a", "another_namespace") is None
    assert sorted(ray_internals.kv_keys("sweep::", namespace)) == ["sweep::t1::a", "sweep::t1::b"]
    ray_internals.kv_put("sweep::t1::a", "again", namespace)  # overwrites
    assert ray_internals.kv_get("sweep::t1::a", namespace) == b"again"
    for key in ("sweep::t1::a", "sweep::t1::b", "other"):
        ray_internals.kv_del(key, namespace)
    ray_internals.kv_del("never-there", namespace)
    assert ray_internals.kv_keys("", namespace) == []
    assert ray_internals.kv_get("other", namespace) is None


@pytest.mark.ray
def test_actor_and_placement_group_tables_see_a_live_actor_and_its_group(ray_local) -> None:
    import ray
    from ray.util.placement_group import placement_group

    from core.captioning.stage import caption_actor_nodes
    from core.tune.cleanup import cluster_snapshot

    @ray.remote(num_cpus=0)
    class MapWorkerCaptionerProbe:  # the name a Ray Data captioning actor's class has
        def make_group(self) -> tuple[str, str]:
            group = placement_group([{"CPU": 0.01}])
            ray.get(group.ready())
            return ray.get_runtime_context().get_actor_id(), group.id.hex()

    probe = MapWorkerCaptionerProbe.remote()
    actor_id, group = ray.get(probe.make_group.remote())
    try:
        rows = {a.actor_id: a for a in ray_internals.actor_rows("ALIVE")}
        assert actor_id in rows
        row = rows[actor_id]
        assert row.class_name.endswith("MapWorkerCaptionerProbe") and row.state == "ALIVE"
        assert row.job_id == ray.get_runtime_context().get_job_id()
        assert row.node_id == ray.get_runtime_context().get_node_id()
        assert actor_id in {a.actor_id for a in ray_internals.actor_rows()}
        assert actor_id not in {a.actor_id for a in ray_internals.actor_rows("DEAD")}
        assert ray_internals.actor_state(actor_id) == "ALIVE"
        assert row.node_id in caption_actor_nodes()

        assert group in ray_internals.live_placement_group_ids()
        assert ray_internals.placement_groups_created_by([actor_id]) == {group: actor_id}
        assert ray_internals.placement_groups_created_by(["ab" * 16]) == {}
        snapshot = cluster_snapshot()
        assert actor_id in snapshot.actors and group in snapshot.placement_groups

        ray_internals.remove_placement_group(group)
        assert _eventually(lambda: group not in ray_internals.live_placement_group_ids())
        assert ray_internals.placement_groups_created_by([actor_id]) == {}
    finally:
        ray.kill(probe)
    assert _eventually(lambda: ray_internals.actor_state(actor_id) == "DEAD")
    assert ray_internals.actor_state("ff" * 16) == ""


def test_train_classes_on_the_installed_ray() -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

    base = ray_internals.controller_callback_base()
    assert callable(getattr(base, "after_controller_start", None))
    trainer_class = ray_internals.torch_trainer_without_placement_group_cleaner()
    assert issubclass(trainer_class, TorchTrainer)

    def callbacks_of(cls: type) -> list[str]:
        trainer = cls(
            lambda config: None,
            scaling_config=ray.train.ScalingConfig(num_workers=1),
            run_config=ray.train.RunConfig(name="x", storage_path="/tmp/x"),
        )
        return [type(cb).__name__ for cb in trainer._create_default_callbacks()]

    theirs, ours = callbacks_of(TorchTrainer), callbacks_of(trainer_class)
    assert "PlacementGroupCleanerCallback" in theirs
    assert ours == [name for name in theirs if name != "PlacementGroupCleanerCallback"]
