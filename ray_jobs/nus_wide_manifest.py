"""NUS-WIDE's own distribution files → the multi-label manifest CLIP-Decoder trains on.

    python -m ray_jobs.nus_wide_manifest root=/data/nus-wide output=/data/nus-wide/manifest.parquet

Writes ``manifest.parquet`` (id, path, labels, split) and ``labels.json`` (925 seen tags, 81
unseen concepts) beside it; ``train_clip_decoder_nus_wide.yaml`` reads both. No Ray needed.
"""

from __future__ import annotations

from collections import Counter

from core import storage
from core.config import NusWideManifestConfig
from core.data.nus_wide import write_nus_wide_manifest
from ray_jobs.cli import parse_job_config, run_main


def main(argv: list[str] | None = None) -> tuple[str, str]:
    cfg = parse_job_config(NusWideManifestConfig, "Build the NUS-WIDE manifest.", argv)
    manifest, labels = write_nus_wide_manifest(
        cfg.root,
        cfg.output,
        image_root=cfg.image_root or None,
        val_fraction=cfg.val_fraction,
        train_unseen_labels=cfg.train_unseen_labels,
        drop_unlabelled=cfg.drop_unlabelled,
    )
    splits = Counter(storage.read_parquet(manifest, columns=["split"]).column("split").to_pylist())
    print(f"manifest: {manifest} ({', '.join(f'{k} {v}' for k, v in sorted(splits.items()))})")
    print(f"labels: {labels}")
    return manifest, labels


if __name__ == "__main__":
    run_main(main)
