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


#: Ray scenarios that run in child processes with their own Ray, started in the background so
#: that they overlap earlier tests: (the modules that use one, the module at whose first test it
#: starts, or "" for the session's first test, and its starter as "module:function").
BACKGROUND_SCENARIOS = [
    # Its head and job start up while the first modules run their actor pools.
    ({"test_job_submit.py"}, "", "test_job_submit:start_submit_scenario"),
    # Its minute overlaps the fake-tensor checks, which run on one core of the two.
    (
        {"test_multinode.py", "test_s3_storage.py"},
        "test_check.py",
        "_cluster_scenario:start_cluster_run",
    ),
]


@pytest.fixture(scope="session")
def selected_modules(request) -> set[str]:
    """File names of the test modules this session runs."""
    return {item.path.name for item in request.session.items}


@pytest.fixture(autouse=True)
def background_scenarios_started(request, tmp_path_factory, selected_modules):
    """Start each background scenario at its test when a module that uses it is selected.
    Selected alone, the modules that use one start it themselves."""
    import importlib

    for users, starts_with, starter in BACKGROUND_SCENARIOS:
        first = starts_with == "" and request.node is request.session.items[0]
        if (first or request.node.path.name == starts_with) and selected_modules & users:
            module, _, function = starter.partition(":")
            getattr(importlib.import_module(module), function)(tmp_path_factory)
    yield
