"""Captioning actors and Train workers spread over the nodes of a (simulated) multi-node cluster.

``ray.cluster_utils.Cluster`` starts a head (1 CPU, no GPU) and two worker nodes (2 CPUs, one
fake GPU each) on this machine, in a child process that owns that cluster, so the session's local
Ray (fixture ``ray_local``) is neither used nor disturbed. The run is shared with
``test_s3_storage.py`` (see ``_cluster_scenario.py``).
"""

from __future__ import annotations

import pytest
from _cluster_scenario import cluster_run

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def placement(tmp_path_factory) -> dict:
    return cluster_run(tmp_path_factory).result


def test_caption_actors_run_on_both_worker_nodes(placement) -> None:
    workers = set(placement["workers"])
    caption = placement["caption"]
    assert (caption["captioned"], caption["failed"], caption["caption_rows"]) == (48, 0, 48)
    # The GCS actor table (finished actors stay in it): one captioning actor per GPU node, none
    # on the head, because each asks for one GPU.
    assert sorted(placement["caption_nodes_table"]) == sorted(workers)
    # The library's own probe, polled while the job ran, reports worker nodes only. (On a busy
    # machine the second actor can finish starting after this tiny job is done, so it may have
    # seen one node or two.)
    sampled = set(placement["caption_nodes_sampled"])
    assert sampled and sampled <= workers
    assert 1 <= placement["caption_max_alive"] <= 2


def test_train_workers_one_per_node(placement) -> None:
    nodes = placement["train_nodes"]
    assert len(nodes) == 2 and set(nodes) == set(placement["workers"])
    assert placement["head"] not in nodes
    assert [h["epoch"] for h in placement["train_history"]] == [0, 1]
