"""UCF-101, ERA or BAR, as published → the manifest every later stage reads.

    python -m ray_jobs.dataset_manifest dataset=ucf101 root=/data/ucf101 \\
        output=/data/ucf101/split1 split=1 frames=1 val_fraction=0.1
    python -m ray_jobs.dataset_manifest dataset=ucf101_midframes root=/data/ucf101 output=...
    python -m ray_jobs.dataset_manifest dataset=era root=/data/ERA output=/data/era/manifest
    python -m ray_jobs.dataset_manifest dataset=bar root=/data/BAR output=/data/bar/manifest

Writes ``<output>/manifest.parquet`` and ``<output>/errors.parquet`` (id, path, reason of every
clip or image that could not be used); for the video datasets also the frames, as
``<output>/frames/<video id>_f<k>.jpg``, decoded in Ray Data tasks (a local Ray unless
``ray.address`` or RAY_ADDRESS names a cluster). The image datasets need no Ray.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from core import storage
from core.config.datasets import VIDEO_DATASETS, DatasetManifestConfig
from core.data.bar import bar_manifest
from core.data.era import era_videos
from core.data.manifest import ManifestError, write_manifest
from core.data.ucf101 import ucf101_midframes, ucf101_videos
from core.data.video_frames import (
    ERRORS_FILE,
    FRAMES_FOLDER,
    MANIFEST_FILE,
    error_table,
    extract_frames,
)
from ray_jobs.cli import init_ray, parse_job_config, run_main


@dataclass
class DatasetManifestResult:
    """Where the manifest and its error list are, and what they hold."""

    manifest: str
    errors: str
    rows_per_split: dict[str, int]
    videos: int  # clips that gave frames (0 for the image datasets)
    failed: int  # error rows


def _listing(cfg: DatasetManifestConfig) -> tuple[pa.Table, pa.Table]:
    """(clip listing or image manifest, error rows) of the configured dataset."""
    if cfg.dataset == "ucf101":
        return ucf101_videos(cfg.root, cfg.split, cfg.val_fraction)
    if cfg.dataset == "era":
        return era_videos(cfg.root, cfg.val_fraction), error_table([])
    if cfg.dataset == "ucf101_midframes":
        return ucf101_midframes(cfg.root)
    return bar_manifest(cfg.root, cfg.val_fraction), error_table([])


def build_dataset_manifest(cfg: DatasetManifestConfig) -> DatasetManifestResult:
    """Read the dataset; for videos, extract frames on Ray; write the manifest and errors."""
    table, errors = _listing(cfg)
    videos = 0
    if cfg.dataset in VIDEO_DATASETS:
        init_ray(cfg.ray, cpus_needed=2)
        frames_root = storage.join(cfg.output, FRAMES_FOLDER)
        table, failed = extract_frames(table, frames_root, cfg.frames, cfg.jpeg_quality)
        errors = pa.concat_tables([errors, failed])
        videos = len(set(table.column("video").to_pylist()))
    errors_path = storage.join(cfg.output, ERRORS_FILE)
    storage.write_parquet(errors, errors_path)
    if len(table) == 0:
        raise ManifestError(f"{cfg.root}: no usable {cfg.dataset} data; see {errors_path}")
    manifest = write_manifest(table, storage.join(cfg.output, MANIFEST_FILE))
    splits = Counter(table.column("split").to_pylist())
    return DatasetManifestResult(manifest, errors_path, dict(splits), videos, len(errors))


def main(argv: list[str] | None = None) -> DatasetManifestResult:
    cfg = parse_job_config(DatasetManifestConfig, "Build a manifest of UCF-101, ERA or BAR.", argv)
    result = build_dataset_manifest(cfg)
    rows = ", ".join(f"{s} {result.rows_per_split.get(s, 0)}" for s in ("train", "val", "test"))
    clips = f" from {result.videos} clips" if cfg.dataset in VIDEO_DATASETS else ""
    print(f"manifest: {result.manifest} (rows: {rows}{clips})")
    print(f"errors: {result.failed} could not be used, listed in {result.errors}")
    return result


if __name__ == "__main__":
    run_main(main)
