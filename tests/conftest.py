"""Shared fixtures: one local Ray instance for the whole session, and the demo dataset."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train's controller polls its workers every 2 s by default: each fit waits for that poll
# at start, at every restart and at the end. The suite runs dozens of short fits.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Each fit also starts an actor that watches for node preemption (about 1 s of CPU); a single
# local node is never preempted.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@pytest.fixture(scope="session")
def ray_local():
    """One Ray for every test (start-up costs seconds); more logical CPUs than cores on purpose."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> str:
    """A small demo dataset (8 classes x 6 images), generated once per session."""
    from core.data.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    return generate_demo_dataset(str(root), images_per_class=6, image_size=32, seed=0)


#: The tests that use the multi-node cluster run, and the module at whose first test it starts.
CLUSTER_RUN_USERS = {"test_multinode.py", "test_s3_storage.py"}
CLUSTER_RUN_STARTS_WITH = "test_check.py"


@pytest.fixture(autouse=True)
def cluster_run_started_early(request, tmp_path_factory):
    """Start the multi-node cluster run (its own Ray, in a child process) in the background when
    the suite reaches ``test_check.py``, if a module that uses it is selected: those checks run
    on one core of the two, so the run's minute overlaps them instead of adding to the suite.
    Selected alone, the modules that use it start it themselves."""
    names = {item.path.name for item in request.session.items}
    if request.node.path.name == CLUSTER_RUN_STARTS_WITH and names & CLUSTER_RUN_USERS:
        from _cluster_scenario import start_cluster_run

        start_cluster_run(tmp_path_factory)
    yield
