"""``python -m ray_jobs.predict``: batch prediction with a trained checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.config.common import RayConfig
from core.config.loader import check


@dataclass
class PredictJobConfig:
    """``python -m ray_jobs.predict``: a trained checkpoint + a manifest → predictions."""

    storage: str = "outputs"
    checkpoint: str = ""  # a checkpoint folder written by train_regularized
    manifest: str = ""  # "" → storage/demo/manifest.parquet
    splits: list[str] = field(default_factory=lambda: ["test"])
    output: str = ""  # "" → <checkpoint>/../predictions
    batch_size: int = 64
    num_actors: int = 1
    num_gpus: float = 0.0
    top_k: int = 5
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self, key: str) -> None:
        check(bool(self.checkpoint), "checkpoint", "required: a checkpoint folder")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.num_actors >= 1, "num_actors", "must be >= 1")
        check(self.top_k >= 1, "top_k", "must be >= 1")
