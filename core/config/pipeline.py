"""``python -m ray_jobs.pipeline``: a folder (or table, or published dataset) to a report.

One config for the whole chain: where the images come from, the captioner, the CLIP model, the
regularizer weight and the training run, plus the resources of each stage. The training keys
(``alpha``, ``clip``, ``optim``, ``run``) are those of ``TrainRegularizedConfig``, so a setting
moves between the training job's YAML and this one unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.config.captioning import CaptionerConfig, ImageLoadConfig
from core.config.class_means import ClassMeansJobConfig
from core.config.common import ClipConfig, OptimConfig, RayConfig
from core.config.datasets import DATASETS, DatasetManifestConfig
from core.config.loader import at, check
from core.config.training import TrainRegularizedConfig, TrainRunConfig

SOURCES = ("folder", "table", "manifest", *DATASETS)


@dataclass
class TableSourceConfig:
    """``source: table``: which columns of the CSV/TSV/Parquet file hold what."""

    path_column: str = "path"
    label_column: str = "label"
    split_column: str = ""  # "" → splits from a hash of each id (split_fractions)
    base_dir: str = ""  # relative image paths start here; "" → the table's folder


@dataclass
class DatasetSourceConfig:
    """``source: ucf101 | ucf101_midframes | era | bar``: the dataset reader's own settings."""

    split: int = 1  # UCF-101's official split: 1, 2 or 3
    frames: int = 1  # frames per clip of a video dataset: 1 → the middle frame
    val_fraction: float = 0.1
    jpeg_quality: int = 95

    def validate(self, key: str) -> None:
        check(self.split in (1, 2, 3), at(key, "split"), "must be 1, 2 or 3")
        check(self.frames >= 1, at(key, "frames"), "must be >= 1")
        check(0.0 <= self.val_fraction < 1.0, at(key, "val_fraction"), "must be in [0, 1)")
        check(1 <= self.jpeg_quality <= 100, at(key, "jpeg_quality"), "must be in [1, 100]")


@dataclass
class ClassMeansStageConfig:
    """How the class means are computed (the ``class_descriptions`` job's own keys)."""

    normalize: bool = True  # L2-normalise each description embedding before averaging
    batch_size: int = 256
    num_gpus: float = 0.0  # per text-encoder actor
    num_actors: int = 1

    def validate(self, key: str) -> None:
        check(self.batch_size >= 1, at(key, "batch_size"), "must be >= 1")
        check(self.num_actors >= 1, at(key, "num_actors"), "must be >= 1")
        check(self.num_gpus >= 0, at(key, "num_gpus"), "must be >= 0")


@dataclass
class PredictStageConfig:
    """The prediction pool for the test split (the ``predict`` job's own keys)."""

    batch_size: int = 64
    num_actors: int = 1
    num_gpus: float = 0.0
    top_k: int = 5

    def validate(self, key: str) -> None:
        check(self.batch_size >= 1, at(key, "batch_size"), "must be >= 1")
        check(self.num_actors >= 1, at(key, "num_actors"), "must be >= 1")
        check(self.num_gpus >= 0, at(key, "num_gpus"), "must be >= 0")
        check(self.top_k >= 1, at(key, "top_k"), "must be >= 1")


@dataclass
class PipelineJobConfig:
    """``python -m ray_jobs.pipeline``: manifest → captions → class means → baseline and
    regularized training → prediction of the test split → ``<storage>/report``."""

    source: str = "folder"  # folder | table | manifest | ucf101 | ucf101_midframes | era | bar
    root: str = ""  # folder of class sub-folders, or the dataset folder as unpacked
    manifest: str = ""  # source=manifest: a manifest Parquet; source=table: the CSV/TSV/Parquet
    storage: str = "outputs/pipeline"  # every output, the state file and the report
    name: str = "pipeline"  # training runs: <storage>/runs/<name>-<settings key>
    # train, val, test shares by a hash of each id (folder, or a table without a split column)
    split_fractions: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    table: TableSourceConfig = field(default_factory=TableSourceConfig)
    dataset: DatasetSourceConfig = field(default_factory=DatasetSourceConfig)
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    images: ImageLoadConfig = field(default_factory=ImageLoadConfig)
    class_means: ClassMeansStageConfig = field(default_factory=ClassMeansStageConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)  # text encoder of the means + classifier
    alpha: float = 1.0  # regularizer weight of the regularized run (the baseline has 0)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: TrainRunConfig = field(default_factory=TrainRunConfig)
    predict: PredictStageConfig = field(default_factory=PredictStageConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def class_means_job(self, **fields: Any) -> ClassMeansJobConfig:
        """The class-means stage's config: the pipeline's keys for it, plus ``fields``."""
        c = self.class_means
        keys = {"storage": self.storage, "normalize": c.normalize, "clip": self.clip}
        keys.update(batch_size=c.batch_size, num_gpus=c.num_gpus, num_actors=c.num_actors)
        return ClassMeansJobConfig(**keys, ray=self.ray, **fields)

    def dataset_manifest_job(self, output: str) -> DatasetManifestConfig:
        """The manifest stage's config for a dataset source (``source`` names the reader)."""
        d = self.dataset
        keys = {"split": d.split, "frames": d.frames, "val_fraction": d.val_fraction}
        return DatasetManifestConfig(
            dataset=self.source,
            root=self.root,
            output=output,
            jpeg_quality=d.jpeg_quality,
            ray=self.ray,
            **keys,
        )

    def training(self, **fields: Any) -> TrainRegularizedConfig:
        """The training stage's config: the pipeline's training keys, plus ``fields``."""
        keys = {"storage": self.storage, "alpha": self.alpha, "clip": self.clip}
        keys.update(optim=self.optim, run=self.run, ray=self.ray)
        return TrainRegularizedConfig(**keys, **fields)

    def validate(self, key: str) -> None:
        check(self.source in SOURCES, "source", f"got {self.source!r}; one of {', '.join(SOURCES)}")
        check(bool(self.storage), "storage", "required: the folder for every output")
        check(bool(self.name) and "/" not in self.name, "name", "must be a non-empty folder name")
        fractions = self.split_fractions
        check(
            len(fractions) == 3 and min(fractions) >= 0 and abs(sum(fractions) - 1) < 1e-6,
            "split_fractions",
            f"must be 3 non-negative numbers (train, val, test) summing to 1, got {fractions}",
        )
        check(self.alpha > 0, "alpha", "must be > 0 (the pipeline compares it with alpha = 0)")

    def check_inputs(self) -> None:
        """The input the source needs. Checked when the pipeline starts rather than on loading,
        so that the presets (and defaults) load without naming a folder."""
        if self.source in ("folder", *DATASETS):
            what = "a folder of class sub-folders" if self.source == "folder" else "the dataset"
            check(bool(self.root), "root", f"required for source={self.source}: {what}")
        if self.source in ("table", "manifest"):
            what = "a CSV/TSV/Parquet table" if self.source == "table" else "a manifest Parquet"
            check(bool(self.manifest), "manifest", f"required for source={self.source}: {what}")
