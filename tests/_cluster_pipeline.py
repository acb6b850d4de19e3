"""The whole pipeline on a simulated 3-node Ray cluster, storage under one root; report placement.

Started by ``tests/_cluster_scenario.py`` in a child process with a prepared environment (a
private Ray temp folder, and the S3 endpoint and credentials when the root is ``s3://``), so the
pytest session's Ray is untouched and every Ray process of this cluster inherits that
environment:

    python tests/_cluster_pipeline.py STORAGE_ROOT RESULT_JSON

Layout, as cluster.yaml in miniature: a head with 1 CPU and no GPU (drivers, Ray Data's image
transforms) and two workers with 2 CPUs and 1 GPU each. The GPUs are logical (Ray only counts
them; the models pick their device with ``torch.cuda.is_available()``, so they run on CPU here).
A captioning actor asks for 1 GPU and a Train worker for 1.5 CPUs, so neither fits on the head
and at most one of each fits on a worker: the scheduler has to spread them, as over the
autoscaler's GPU nodes.

Jobs, each through its real ``main(argv)``: caption (generates the demo dataset under the root),
caption again (resume: nothing left to do), class_descriptions, train_regularized (2 workers).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

HEAD_CPUS = 1
WORKER_CPUS = 2
TRAIN_CPUS_PER_WORKER = 1.5
EPOCHS = 2
CONFIGS = "ray_jobs/configs"


def _actor_nodes(job_id: str, class_part: str) -> list[str]:
    """Node ids of this job's actors whose class name contains ``class_part``, dead or alive
    (the GCS keeps finished actors in its table, with their address)."""
    from ray._private import state

    return [
        info["Address"]["NodeID"]
        for info in state.actors().values()
        if info.get("JobID") == job_id and class_part in info.get("ActorClassName", "")
    ]


class ActorNodeSampler:
    """Polls ``caption_actor_nodes()`` during a job: the nodes that held a live captioning actor."""

    def __init__(self, period: float = 0.1) -> None:
        self.period = period
        self.seen: set[str] = set()
        self.max_alive = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from core.captioning.stage import caption_actor_nodes

        while not self._stop.is_set():
            nodes = caption_actor_nodes()
            self.seen.update(nodes)
            self.max_alive = max(self.max_alive, len(nodes))
            self._stop.wait(self.period)

    def __enter__(self) -> ActorNodeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(root: str, result_path: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from ray_jobs import caption, class_descriptions, train_regularized
    from ray_jobs.cli import setup_logging

    setup_logging()
    timings: dict[str, float] = {}

    def timed(name: str, fn, argv: list[str]):
        start = time.monotonic()
        out = fn(argv)
        timings[name] = round(time.monotonic() - start, 1)
        return out

    start = time.monotonic()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": HEAD_CPUS, "num_gpus": 0, "include_dashboard": False},
    )
    try:
        workers = [cluster.add_node(num_cpus=WORKER_CPUS, num_gpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        timings["cluster_start"] = round(time.monotonic() - start, 1)
        common = [f"ray.address={cluster.address}", f"storage={root}"]
        caption_argv = [
            "--config", f"{CONFIGS}/caption_demo.yaml", *common,
            "demo.images_per_class=6", "demo.image_size=32",
            "captioner.batch_size=4", "captioner.num_gpus=1", "captioner.num_cpus=1",
            "captioner.min_actors=2", "captioner.max_actors=2", "progress_seconds=0.2",
        ]  # fmt: skip
        with ActorNodeSampler() as sampler:
            summary = timed("caption", caption.main, caption_argv)
        job_id = ray.get_runtime_context().get_job_id()
        caption_table_nodes = _actor_nodes(job_id, "Captioner")
        again = timed("caption_again", caption.main, caption_argv)
        timed(
            "class_descriptions",
            class_descriptions.main,
            ["--config", f"{CONFIGS}/class_descriptions_demo.yaml", *common],
        )
        train_summary = timed(
            "train_regularized",
            train_regularized.main,
            [
                "--config", f"{CONFIGS}/train_regularized_demo.yaml", *common,
                "name=cluster", "compare_baseline=false",
                f"run.epochs={EPOCHS}", "run.batch_size=8", "run.num_workers=2",
                f"run.cpus_per_worker={TRAIN_CPUS_PER_WORKER}", "run.max_failures=0",
            ],
        )  # fmt: skip
        result = {
            "head": cluster.head_node.node_id,
            "workers": [w.node_id for w in workers],
            "caption": summary.as_dict(),
            "caption_again": again.as_dict(),
            "caption_nodes_sampled": sorted(sampler.seen),
            "caption_max_alive": sampler.max_alive,
            "caption_nodes_table": caption_table_nodes,
            "train_nodes": _actor_nodes(job_id, "RayTrainWorker"),
            "train_history": train_summary.runs[0].history,
            "train_run_dir": train_summary.runs[0].run_dir,
            "train_best_checkpoint": train_summary.runs[0].best_checkpoint,
            "train_latest_checkpoint": train_summary.runs[0].latest_checkpoint,
            "timings": timings,
        }
        Path(result_path).write_text(json.dumps(result, indent=2))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv[1], sys.argv[2])
