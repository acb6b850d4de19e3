"""Caption a dataset's images with an LMM on a Ray Data actor pool.

    python -m ray_jobs.caption --config ray_jobs/configs/caption_demo.yaml captioner=minigpt4_tiny

Resumable: run it again on the same output and only images without a row are captioned.
"""

from __future__ import annotations

import logging

from core import storage
from core.captioning.stage import CaptionSummary, run_caption_stage
from core.config import CaptionJobConfig
from core.data.demo import generate_demo_dataset
from ray_jobs.cli import init_ray, parse_job_config, run_main

log = logging.getLogger("ray_jobs.caption")


def resolve_manifest(cfg: CaptionJobConfig) -> str:
    """The configured manifest, or the demo dataset (generated once) under the storage root."""
    if cfg.manifest:
        return cfg.manifest
    demo_manifest = storage.join(cfg.storage, "demo", "manifest.parquet")
    if not storage.exists(demo_manifest):
        log.info("no manifest given: generating the demo dataset under %s", cfg.storage)
        generate_demo_dataset(
            storage.join(cfg.storage, "demo"),
            images_per_class=cfg.demo.images_per_class,
            image_size=cfg.demo.image_size,
            seed=cfg.demo.seed,
        )
    return demo_manifest


def caption(cfg: CaptionJobConfig) -> CaptionSummary:
    """Run the captioning job for ``cfg`` on the current (or a new local) Ray instance."""
    manifest = resolve_manifest(cfg)
    output = cfg.output or storage.join(cfg.storage, "captions")
    c = cfg.captioner
    init_ray(cfg.ray, cpus_needed=c.max_actors * c.num_cpus + cfg.images.num_cpus)
    summary = run_caption_stage(cfg, manifest, output)
    storage.write_json(storage.join(output, "_summary.json"), summary.as_dict())
    return summary


def main(argv: list[str] | None = None) -> CaptionSummary:
    cfg = parse_job_config(
        CaptionJobConfig, "Caption images with an LMM on Ray Data.", argv, job="caption"
    )
    summary = caption(cfg)
    print(
        f"captioning done: captioned={summary.captioned} skipped={summary.skipped} "
        f"failed={summary.failed} rows={summary.caption_rows} in {summary.seconds:.1f}s"
    )
    print(f"captions: {summary.output}")
    print(storage.dumps_json(summary.as_dict()))
    return summary


if __name__ == "__main__":
    run_main(main)
