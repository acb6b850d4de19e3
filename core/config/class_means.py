"""The class-means job: which captions, which CLIP text encoder, how many encoder actors."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.config.common import ClipConfig, RayConfig
from core.config.loader import check


@dataclass
class ClassMeansJobConfig:
    """``python -m ray_jobs.class_descriptions``: captions → mean semantic class descriptions."""

    storage: str = "outputs"
    captions: str = ""  # captions folder; "" → storage/captions
    manifest: str = ""  # defines the classes and splits; "" → storage/demo/manifest.parquet
    splits: list[str] = field(default_factory=lambda: ["train"])  # captions of these splits count
    output: str = ""  # "" → storage/class_means.safetensors (+ .json summary beside it)
    # false (default): average the raw CLIP text embeddings, the paper's C_c. The regularizer's
    # other side, x, is the raw CLIP image embedding (the encoder's output), so both sides are
    # raw CLIP embeddings at the same scale. true: L2-normalise each embedding before averaging
    # (CLIP's zero-shot practice); means then have norm <= 1, so pair them with a unit-norm x
    # (build_classifier(..., normalize_embedding=True)); a raw x is not on their scale.
    normalize: bool = False
    clip: ClipConfig = field(default_factory=ClipConfig)
    batch_size: int = 256  # captions per text-encoder batch
    num_gpus: float = 0.0  # per encoder actor
    num_actors: int = 1
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self, key: str) -> None:
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.num_actors >= 1, "num_actors", "must be >= 1")
        check(self.num_gpus >= 0, "num_gpus", "must be >= 0")
