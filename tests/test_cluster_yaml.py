"""cluster.yaml: valid for Ray's cluster launcher, GPU nodes on demand, only SSH reachable.

Checked offline with the launcher's own code: the JSON schema shipped in ``ray.autoscaler``,
``prepare_config`` + ``validate_config`` (what ``ray up`` runs before touching AWS), and the
autoscaler's bin-packing (``get_nodes_for``) fed with the resource requests of the GPU presets.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import CaptionJobConfig, TrainRegularizedConfig, load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
CONFIGS = REPO / "ray_jobs" / "configs"


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _start_commands(cluster: dict[str, Any]) -> str:
    return " ".join(cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"])


def test_matches_the_launcher_schema(cluster) -> None:
    """The raw file against ray-schema.json, then the defaults-filled config as ``ray up``
    checks it (validate_config also checks node types, head type and min/max workers)."""
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema_path = Path(ray.autoscaler.__file__).with_name("ray-schema.json")
    jsonschema.validate(cluster, json.loads(schema_path.read_text()))
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    # Defaults must not have replaced our node types or commands.
    assert set(prepared["available_node_types"]) == {"head_cpu", "gpu_1x", "gpu_4x"}
    assert "--dashboard-host=127.0.0.1" in " ".join(prepared["head_start_ray_commands"])


def test_node_types_declare_resources_and_scale_from_zero(cluster) -> None:
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert set(gpu_types) == {"gpu_1x", "gpu_4x"}
    assert gpu_types["gpu_1x"]["resources"]["GPU"] == 1
    assert gpu_types["gpu_4x"]["resources"]["GPU"] > 1
    for name, t in gpu_types.items():
        assert t["resources"]["CPU"] > 0, name
        assert t["min_workers"] == 0 < t["max_workers"], name
    assert sum(t["min_workers"] for t in types.values()) <= cluster["max_workers"]


def test_only_ssh_is_reachable_and_the_dashboard_binds_to_loopback(cluster) -> None:
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in CLUSTER_YAML.read_text()
    # Ray's created group opens 22 only (plus intra-cluster traffic); nothing extra added.
    assert cluster["provider"]["security_group"]["IpPermissions"] == []
    assert "RAY_AUTH_MODE=token" in " ".join(cluster["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in " ".join(cluster["worker_start_ray_commands"])
    assert "~/.ray/auth_token" in cluster["file_mounts"]


def test_setup_installs_the_synced_project(cluster) -> None:
    mounts = cluster["file_mounts"]
    assert mounts["~/lmm-clip"] == "."
    assert "pip install -c ~/lmm-clip/requirements.lock -e ~/lmm-clip" in cluster["setup_commands"]
    assert "outputs" in cluster["rsync_exclude"]
    assert "ray start --head" in _start_commands(cluster)


def _place(cluster: dict[str, Any], demands: list[dict[str, float]]) -> dict[str, int]:
    """Node types the autoscaler would launch for ``demands`` on a cluster with only a head."""
    from ray.autoscaler._private.node_provider_availability_tracker import (
        NodeAvailabilitySummary,
    )
    from ray.autoscaler._private.resource_demand_scheduler import (
        _default_utilization_scorer,
        get_nodes_for,
    )

    scorer = functools.partial(
        _default_utilization_scorer,
        node_availability_summary=NodeAvailabilitySummary(node_availabilities={}),
    )
    head = cluster["head_node_type"]
    to_add, residual = get_nodes_for(
        cluster["available_node_types"],
        {head: 1},
        head,
        cluster["max_workers"],
        demands,
        scorer,
    )
    assert residual == [], f"unplaceable demands: {residual}"
    return {name: n for name, n in to_add.items() if n}


def test_gpu_requests_of_the_presets_launch_gpu_nodes(cluster) -> None:
    caption = load_config(CaptionJobConfig, CONFIGS / "caption_minigpt4.yaml").captioner
    actor = {"CPU": caption.num_cpus, "GPU": caption.num_gpus}
    added = _place(cluster, [actor] * caption.max_actors)
    assert added and set(added) <= {"gpu_1x", "gpu_4x"}
    gpus = sum(n * cluster["available_node_types"][t]["resources"]["GPU"] for t, n in added.items())
    assert gpus >= caption.max_actors * caption.num_gpus

    train = load_config(TrainRegularizedConfig, CONFIGS / "train_regularized_vitl14.yaml")
    assert train.run.use_gpu
    worker = {"CPU": train.run.cpus_per_worker, "GPU": 1.0}
    added = _place(cluster, [worker] * train.run.num_workers)
    assert added and set(added) <= {"gpu_1x", "gpu_4x"}
