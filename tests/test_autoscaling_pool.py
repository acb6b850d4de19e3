"""With a backlog, the captioning actor pool grows from its minimum toward its maximum.

Ray Data scales an actor pool up when its utilisation (tasks in flight per concurrency slot)
reaches 1.75, but only counts actors that have finished starting; a pool starts at ``min_actors``
and new actors take as long to start as the first. So the backlog must outlast one actor start
or a short job ends before a second actor is alive. The job here makes it so cheaply:

- the reference backend starts fast (no model to build), and the work per image is decoding a
  3000x3000 PNG, which runs inside the captioning actors (Ray Data fuses ``load_images`` into the
  actor stage when both ask for the same resources, as by default);
- ``batch_size=2`` and ``batches_per_block=1`` cut the rows into 30 blocks, so the queue in front
  of the first actor keeps its utilisation at 2 (two tasks in flight per actor) while the others
  start.

The count comes from the job itself (``CaptionSummary.max_actors_seen``) and its progress log.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from core import storage
from core.config import CaptionJobConfig, load_config
from core.data.manifest import write_manifest
from ray_jobs import caption as caption_job

pytestmark = pytest.mark.ray

IMAGES = 60
MIN_ACTORS, MAX_ACTORS = 1, 3


def _backlog_manifest(root: Path) -> str:
    """IMAGES rows sharing one large, highly compressible image (tiny on disk, slow to decode)."""
    image = root / "large.png"
    Image.new("RGB", (3000, 3000), (120, 30, 200)).save(image)
    rows = [
        {
            "id": f"img{i:03d}",
            "path": str(image),
            "label": f"c{i % 4}",
            "split": "train",
            "description": f"a purple square, number {i}",
        }
        for i in range(IMAGES)
    ]
    return write_manifest(pa.Table.from_pylist(rows), str(root / "manifest.parquet"))


def test_pool_scales_above_its_minimum_under_a_backlog(ray_local, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="core.captioning.stage")
    cfg = load_config(
        CaptionJobConfig,
        None,
        [
            f"storage={tmp_path}",
            f"manifest={_backlog_manifest(tmp_path)}",
            "splits=[]",
            "captioner=reference",
            "captioner.batch_size=2",
            "captioner.batches_per_block=1",
            f"captioner.min_actors={MIN_ACTORS}",
            f"captioner.max_actors={MAX_ACTORS}",
            "captioner.num_cpus=1",
            "images.num_cpus=1",
            "images.max_side=64",
            "progress_seconds=0.2",
        ],
    )
    summary = caption_job.caption(cfg)
    assert (summary.captioned, summary.failed) == (IMAGES, 0)
    assert storage.read_parquet(str(tmp_path / "captions")).num_rows == IMAGES

    counts = [
        int(m.group(1))
        for r in caplog.records
        if (m := re.search(r"captioning actors: (\d+)", r.getMessage()))
    ]
    seen = f"actor counts logged: {counts}, first result after {summary.first_result_seconds}s"
    assert len(counts) >= 3, f"the progress log should report the pool size over time; {seen}"
    assert counts[0] == MIN_ACTORS, seen  # the pool starts at its minimum ...
    assert MIN_ACTORS < summary.max_actors_seen <= MAX_ACTORS, seen  # ... grows with the backlog
    assert max(counts) == summary.max_actors_seen, seen
    assert [n for _, n in summary.actors_over_time] == counts  # the summary keeps the same record
    times = [t for t, _ in summary.actors_over_time]
    assert times == sorted(times)
