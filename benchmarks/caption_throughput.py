"""Images/s of the Ray Data captioning stage vs a plain batched Python loop, measured in one run.

Same tiny MiniGPT-4 (random weights, real code path), same images, same batch size. The Ray stage
runs once with one actor and once with two. Two numbers per run:

* steady state: images/s after the first batch of captions is back, so neither side pays for
  process start, ``import torch, transformers`` (about 6 s on a 2-core machine) and model load;
  this is the throughput a long captioning job sees, and the ratios on the last line use it;
* end to end: everything, start-up included (printed for reference; it dominates small runs).

Last line: ``ratio_1actor=X ratio_2actors=Y`` (steady-state Ray images/s over loop images/s).

    python benchmarks/caption_throughput.py [--images 256] [--batch-size 8] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from core.captioning.captioner import Captioner
from core.captioning.stage import load_images, run_caption_stage
from core.config import CaptionJobConfig, load_config
from core.data.demo import generate_demo_dataset
from core.data.manifest import read_manifest


@dataclass
class Timing:
    total_s: float
    rows: int
    steady_ips: float

    @property
    def total_ips(self) -> float:
        return self.rows / self.total_s


def plain_loop(cfg: CaptionJobConfig, manifest: str) -> Timing:
    """The baseline: one process, one model, batches in order."""
    table = read_manifest(manifest)
    start = time.perf_counter()
    captioner = Captioner(cfg.captioner, manifest_path=manifest)
    bs, rows = cfg.captioner.batch_size, 0
    first_at, first_rows = 0.0, 0
    for i in range(0, table.num_rows, bs):
        chunk = table.slice(i, bs)
        batch = {name: np.array(chunk.column(name).to_pylist()) for name in ("id", "path", "label")}
        loaded = load_images(batch, cfg.images.max_pixels, cfg.images.max_side)
        rows += captioner(loaded).num_rows
        if not first_rows:
            first_at, first_rows = time.perf_counter(), rows
    end = time.perf_counter()
    return Timing(end - start, rows, (rows - first_rows) / (end - first_at))


def ray_stage(cfg: CaptionJobConfig, manifest: str, out: str) -> Timing:
    summary = run_caption_stage(cfg, manifest, out)
    assert summary.failed == 0, summary
    return Timing(summary.seconds, summary.caption_rows, summary.steady_images_per_second())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray

    work = tempfile.mkdtemp(prefix="caption-bench-")
    per_class = max(1, args.images // 8)
    manifest = generate_demo_dataset(f"{work}/demo", images_per_class=per_class, image_size=64)
    n = read_manifest(manifest).num_rows

    def config(actors: int) -> CaptionJobConfig:
        return load_config(
            CaptionJobConfig,
            None,
            [
                f"manifest={manifest}",
                "splits=[]",
                "captioner=minigpt4_tiny",
                f"captioner.batch_size={args.batch_size}",
                f"captioner.max_new_tokens={args.max_new_tokens}",
                f"captioner.min_actors={actors}",
                f"captioner.max_actors={actors}",
                "progress_seconds=1000",
            ],
        )

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    loop = plain_loop(config(1), manifest)
    one = ray_stage(config(1), manifest, f"{work}/out1")
    two = ray_stage(config(2), manifest, f"{work}/out2")
    assert loop.rows == one.rows == two.rows == n, (loop, one, two, n)
    print(f"images={n} batch_size={args.batch_size} max_new_tokens={args.max_new_tokens}")
    print(f"{'':14} {'end-to-end s':>12} {'e2e img/s':>10} {'steady img/s':>13}")
    for name, t in (("plain loop", loop), ("ray, 1 actor", one), ("ray, 2 actors", two)):
        print(f"{name:14} {t.total_s:12.2f} {t.total_ips:10.2f} {t.steady_ips:13.2f}")
    print(
        f"end-to-end ratios: 1 actor {one.total_ips / loop.total_ips:.2f}, "
        f"2 actors {two.total_ips / loop.total_ips:.2f}"
    )
    print(
        f"ratio_1actor={one.steady_ips / loop.steady_ips:.2f} "
        f"ratio_2actors={two.steady_ips / loop.steady_ips:.2f}"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
