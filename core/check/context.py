"""What every job check receives: the report it writes to, the cluster it plans for, the preset
file and the check's own keys (``means_clip=``, ``llm=``, ``num_classes=`` ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.check.gpus import NodeType, Placement, place
from core.check.report import Report

#: Keys the check takes beside the job's own config keys (popped before the config is loaded).
CHECK_KEYS = {
    "means_clip": "open_clip model the class means were (will be) computed with, e.g. ViT-B-32",
    "means_preset": "class_descriptions preset the class means come from",
    "train_preset": "training preset a predict checkpoint comes from (when it is absent)",
    "num_classes": "classes of a classifier when no manifest or class-means file tells",
    "num_labels": "label count (seen + unseen) the preset is meant for",
    "nus_wide_root": "folder with NUS-WIDE's TagList1k.txt and Concepts81.txt",
    "llm": "published LLM configuration to assume when the LLM folder is absent",
    "node_type": "cluster.yaml node type to plan for instead of the smallest that fits",
}


@dataclass
class Context:
    report: Report
    nodes: list[NodeType]
    preset: Path | None = None
    keys: dict[str, str] = field(default_factory=dict)

    def placement(self, gpus_per_worker: float) -> Placement:
        """Where one worker asking for ``gpus_per_worker`` GPUs lands (``node_type=`` pins it)."""
        nodes = self.nodes
        if "node_type" in self.keys:
            nodes = [n for n in self.nodes if n.name == self.keys["node_type"]]
            if not nodes:
                known = ", ".join(n.name for n in self.nodes)
                raise ValueError(
                    f"node_type={self.keys['node_type']}: not in cluster.yaml ({known})"
                )
        placement = place(nodes, gpus_per_worker)
        self.report.placement = placement
        return placement

    def sibling_preset(self, job_prefix: str) -> Path | None:
        """The preset of another job with this preset's suffix: ``train_regularized_vitl14.yaml``
        → ``class_descriptions_vitl14.yaml`` for ``job_prefix="class_descriptions"``."""
        if self.preset is None:
            return None
        stem = self.preset.stem
        suffix = stem.rsplit("_", 1)[-1] if "_" in stem else stem
        candidate = self.preset.with_name(f"{job_prefix}_{suffix}.yaml")
        return candidate if candidate.is_file() else None


def device_of(placement: Placement) -> torch.device:
    """The (fake) device the estimate runs on: where the worker would run."""
    return torch.device("cuda" if placement.device == "cuda" else "cpu")


def amp_dtype(placement: Placement, amp: bool) -> torch.dtype | None:
    """The autocast dtype the engine picks there: bfloat16 where the GPU has it, else float16;
    none on CPU (``core.train.loop_parts.autocast``)."""
    if not amp or placement.device != "cuda":
        return None
    return torch.bfloat16 if placement.bf16 else torch.float16
