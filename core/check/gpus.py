"""Which accelerator a job's worker lands on: cluster.yaml's node types and known instance types.

The cluster launcher config names AWS instance types and the Ray resources each node type offers;
the memory of the GPU behind an instance type is not in it, so a small table of known instance
types supplies it. A job asking for ``g`` GPUs per worker (actor) can land on any node type
offering at least ``g`` GPUs (or CPU-only work on any node type with CPUs); the check plans for
the smallest GPU among them, since the autoscaler may pick any.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

GIB = 1024**3


@dataclass(frozen=True)
class InstanceType:
    """One cloud instance type: its GPU model, how many, GPU memory each, and host memory."""

    gpu: str
    gpus: int
    gpu_gib: float
    host_gib: float
    bf16: bool = True  # whether the GPU computes in bfloat16 (autocast picks float16 otherwise)


#: Published specifications (AWS instance pages, NVIDIA data sheets): GPU memory as sold.
INSTANCE_TYPES: dict[str, InstanceType] = {
    "g4dn.xlarge": InstanceType("T4", 1, 16, 16, bf16=False),
    "g4dn.2xlarge": InstanceType("T4", 1, 16, 32, bf16=False),
    "g4dn.12xlarge": InstanceType("T4", 4, 16, 192, bf16=False),
    "g5.xlarge": InstanceType("A10G", 1, 24, 16),
    "g5.2xlarge": InstanceType("A10G", 1, 24, 32),
    "g5.4xlarge": InstanceType("A10G", 1, 24, 64),
    "g5.8xlarge": InstanceType("A10G", 1, 24, 128),
    "g5.12xlarge": InstanceType("A10G", 4, 24, 192),
    "g5.24xlarge": InstanceType("A10G", 4, 24, 384),
    "g5.48xlarge": InstanceType("A10G", 8, 24, 768),
    "g6.xlarge": InstanceType("L4", 1, 24, 16),
    "g6.2xlarge": InstanceType("L4", 1, 24, 32),
    "g6.12xlarge": InstanceType("L4", 4, 24, 192),
    "g6e.xlarge": InstanceType("L40S", 1, 48, 32),
    "g6e.12xlarge": InstanceType("L40S", 4, 48, 384),
    "p3.2xlarge": InstanceType("V100-16GB", 1, 16, 61, bf16=False),
    "p3.8xlarge": InstanceType("V100-16GB", 4, 16, 244, bf16=False),
    "p4d.24xlarge": InstanceType("A100-40GB", 8, 40, 1152),
    "p4de.24xlarge": InstanceType("A100-80GB", 8, 80, 1152),
    "p5.48xlarge": InstanceType("H100-80GB", 8, 80, 2048),
    "m5.xlarge": InstanceType("", 0, 0, 16),
    "m5.2xlarge": InstanceType("", 0, 0, 32),
    "m5.4xlarge": InstanceType("", 0, 0, 64),
}

#: Share of a GPU's memory a job can plan to fill: the CUDA context, cuBLAS/cuDNN workspaces and
#: the caching allocator's fragmentation take the rest (about 1-2 GiB on a 24 GiB card).
USABLE_FRACTION = 0.9


@dataclass(frozen=True)
class Placement:
    """Where one worker (Train worker or Ray Data actor) of a job runs, and its memory budget."""

    device: str  # "cuda" or "cpu"
    name: str  # GPU model ("A10G") or "cpu"
    memory_gib: float  # the worker's share: GPU memory x GPUs asked (fractions share a GPU)
    node_types: tuple[str, ...]  # cluster.yaml node types it can land on
    bf16: bool = True
    note: str = ""

    @property
    def usable_bytes(self) -> int:
        """What the estimate is compared with (see ``USABLE_FRACTION``)."""
        return int(self.memory_gib * USABLE_FRACTION * GIB)

    def describe(self) -> str:
        """One line: the GPU, the worker's share, the node types."""
        where = ", ".join(self.node_types) or "no node type"
        usable = self.usable_bytes / GIB
        return (
            f"{self.name} {self.memory_gib:g} GiB per worker ({usable:.1f} GiB usable) "
            f"on {where}{'; ' + self.note if self.note else ''}"
        )


@dataclass(frozen=True)
class NodeType:
    """One ``available_node_types`` entry of cluster.yaml: its instance, GPUs, CPUs, count."""

    name: str
    instance: str
    gpus: float
    cpus: float
    max_workers: int


def read_node_types(path: str | Path) -> list[NodeType]:
    """The node types of a cluster-launcher YAML, with their GPU and CPU resources."""
    config: dict[str, Any] = yaml.safe_load(Path(path).read_text()) or {}
    out = []
    for name, spec in (config.get("available_node_types") or {}).items():
        resources = spec.get("resources") or {}
        instance = str((spec.get("node_config") or {}).get("InstanceType", ""))
        known = INSTANCE_TYPES.get(instance)
        gpus = float(resources.get("GPU", known.gpus if known else 0))
        cpus = float(resources.get("CPU", 0))
        out.append(NodeType(name, instance, gpus, cpus, int(spec.get("max_workers", 0))))
    return out


def cluster_gpus(nodes: list[NodeType]) -> int:
    """GPUs the autoscaler can bring up at once (max_workers x GPUs, over all node types)."""
    return int(sum(n.gpus * n.max_workers for n in nodes))


def place(nodes: list[NodeType], gpus_per_worker: float) -> Placement:
    """The placement of one worker asking for ``gpus_per_worker`` GPUs (0: CPU only).

    Among the node types that can host it, the one with the least memory per worker is taken.
    A node type whose instance is not in :data:`INSTANCE_TYPES` is reported, not guessed.
    """
    if gpus_per_worker <= 0:
        hosts = [n for n in nodes if n.cpus > 0]
        known = [
            (INSTANCE_TYPES[n.instance].host_gib, n) for n in hosts if n.instance in INSTANCE_TYPES
        ]
        if not known:
            return Placement(
                "cpu", "cpu", 0.0, tuple(n.name for n in hosts), note="host memory unknown"
            )
        host_gib, _ = min(known, key=lambda item: item[0])
        return Placement("cpu", "cpu", host_gib, tuple(n.name for _, n in known))
    hosts = [n for n in nodes if n.gpus >= gpus_per_worker]
    unknown = [n.name for n in hosts if n.instance not in INSTANCE_TYPES]
    known = [n for n in hosts if n.instance in INSTANCE_TYPES and INSTANCE_TYPES[n.instance].gpus]
    if not known:
        note = f"instance types not in the table: {', '.join(unknown)}" if unknown else ""
        return Placement("cuda", "unknown", 0.0, tuple(n.name for n in hosts), note=note)
    smallest = min(known, key=lambda n: INSTANCE_TYPES[n.instance].gpu_gib)
    spec = INSTANCE_TYPES[smallest.instance]
    # A worker places its model on one device: a second GPU per worker adds no memory to it.
    share = spec.gpu_gib * min(gpus_per_worker, 1.0)
    note = f"instance types not in the table: {', '.join(unknown)}" if unknown else ""
    names = tuple(f"{n.name} ({n.instance})" for n in known)
    return Placement("cuda", spec.gpu, share, names, bf16=spec.bf16, note=note)
