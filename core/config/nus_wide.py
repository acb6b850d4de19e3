"""``python -m ray_jobs.nus_wide_manifest``: turning NUS-WIDE's own files into a manifest."""

from __future__ import annotations

from dataclasses import dataclass

from core.config.loader import check


@dataclass
class NusWideManifestConfig:
    """``python -m ray_jobs.nus_wide_manifest``: NUS-WIDE's own files → manifest + labels.json."""

    root: str = ""  # the dataset folder (TagList1k.txt, Concepts81.txt, ImageList/, ...)
    output: str = ""  # manifest path; labels.json is written next to it
    image_root: str = ""  # "" → <root>/Flickr
    val_fraction: float = 0.0  # share of training images (by id hash) that becomes "val"
    train_unseen_labels: bool = False  # the protocol keeps unseen labels off training images
    drop_unlabelled: bool = True

    def validate(self, key: str) -> None:
        check(bool(self.root), "root", "required: the NUS-WIDE folder")
        check(bool(self.output), "output", "required: where to write manifest.parquet")
        check(0.0 <= self.val_fraction < 1.0, "val_fraction", "must be in [0, 1)")
