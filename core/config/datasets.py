"""``python -m ray_jobs.dataset_manifest``: a published dataset layout → manifest (+ frames)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.config.common import RayConfig
from core.config.loader import check

DATASETS = ("ucf101", "ucf101_midframes", "era", "bar")
VIDEO_DATASETS = ("ucf101", "era")


@dataclass
class DatasetManifestConfig:
    """One of the paper's datasets, as published, → ``<output>/manifest.parquet``.

    Video datasets (ucf101, era) also get their frames as JPEGs under ``<output>/frames``; clips
    or images that cannot be used are listed in ``<output>/errors.parquet``.
    """

    dataset: str = ""  # ucf101 | ucf101_midframes | era | bar
    root: str = ""  # the dataset folder as unpacked (see core/data/<dataset>.py for the layout)
    output: str = ""  # folder for manifest.parquet, errors.parquet and frames/
    split: int = 1  # UCF-101's official split: 1, 2 or 3
    frames: int = 1  # frames per clip: 1 → the middle frame; N → N evenly spaced
    # Share of training clips (UCF-101: of training groups) that becomes "val", by a hash of the
    # group; ucf101_midframes keeps the val split of its split file.
    val_fraction: float = 0.1
    jpeg_quality: int = 95
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self, key: str) -> None:
        check(
            self.dataset in DATASETS,
            "dataset",
            f"got {self.dataset!r}; one of {', '.join(DATASETS)}",
        )
        check(bool(self.root), "root", "required: the dataset folder")
        check(bool(self.output), "output", "required: the folder to write the manifest into")
        check(self.split in (1, 2, 3), "split", "must be 1, 2 or 3 (UCF-101's official splits)")
        check(self.frames >= 1, "frames", "must be >= 1")
        check(0.0 <= self.val_fraction < 1.0, "val_fraction", "must be in [0, 1)")
        check(1 <= self.jpeg_quality <= 100, "jpeg_quality", "must be in [1, 100]")
