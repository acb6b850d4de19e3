"""The captioning stage on Ray Data: manifest → decoded images → captioner actor pool → Parquet.

Resumable by construction: caption rows are written in small Parquet parts as they arrive, each
part atomically, and a new run first reads the ids already present and skips them. Images that
cannot be read become error rows; the stage never stops for one bad file.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core import storage
from core.captioning.captioner import CAPTION_SCHEMA, Captioner
from core.config import CaptionJobConfig
from core.data.images import ImageLoadError, load_image
from core.data.manifest import read_manifest

log = logging.getLogger(__name__)

_PLACEHOLDER = np.zeros((1, 1, 3), dtype=np.uint8)


def load_images(batch: dict[str, np.ndarray], max_pixels: int, max_side: int) -> dict:
    """Ray Data task: read and decode each row's image; failures become an ``error`` string."""
    images, errors = [], []
    for path in batch["path"]:
        try:
            images.append(load_image(str(path), max_pixels=max_pixels, max_side=max_side))
            errors.append("")
        except ImageLoadError as exc:
            images.append(_PLACEHOLDER)
            errors.append(f"{exc} [{path}]")
    image_col = np.empty(len(images), dtype=object)
    image_col[:] = images
    return {
        "id": batch["id"],
        "label": batch["label"],
        "image": image_col,
        "error": np.array(errors),
    }


def read_existing(output: str) -> tuple[set[str], set[str]]:
    """Ids already captioned (at least one caption row) and ids with only error rows."""
    if not storage.exists(output) or not storage.list_files(output, ".parquet"):
        return set(), set()
    table = storage.read_parquet(output, columns=["id", "error"])
    has_error = pc.not_equal(pc.fill_null(table.column("error"), ""), "")
    ok = set(table.filter(pc.invert(has_error)).column("id").to_pylist())
    failed = set(table.filter(has_error).column("id").to_pylist()) - ok
    return ok, failed


def read_captions(output: str, keep_errors: bool = False) -> pa.Table:
    """The captions table of a (possibly resumed) run; error rows dropped unless asked for."""
    table = storage.read_parquet(output)
    if keep_errors:
        return table
    return table.filter(pc.equal(pc.fill_null(table.column("error"), ""), ""))


class PartWriter:
    """Buffers caption rows and writes them as atomic Parquet parts of about ``flush_rows``."""

    def __init__(self, output: str, flush_rows: int) -> None:
        self.output = output
        self.flush_rows = flush_rows
        self.run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.parts = 0
        storage.makedirs(output)

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self._pending_rows:
            return
        table = pa.concat_tables(self._pending).cast(CAPTION_SCHEMA)
        name = f"part-{self.run_id}-{self.parts:05d}.parquet"
        storage.write_parquet(table, storage.join(self.output, name))
        self.parts += 1
        self._pending, self._pending_rows = [], 0


@dataclass
class CaptionSummary:
    """What one run did: images newly captioned, skipped as done, and failed (error rows)."""

    manifest: str
    output: str
    total: int
    captioned: int
    skipped: int
    failed: int
    caption_rows: int
    seconds: float
    max_actors_seen: int
    #: Time until the first captions came back (actor start, imports, model load) and how many
    #: rows that first result held; the rest of the run is the steady state.
    first_result_seconds: float = 0.0
    first_result_rows: int = 0
    #: (seconds since start, captioning actors) at every progress line: the pool's growth.
    actors_over_time: list[tuple[float, int]] = field(default_factory=list)

    def steady_images_per_second(self) -> float:
        """Caption rows per second after the first result, i.e. without the start-up cost."""
        span = self.seconds - self.first_result_seconds
        rows = self.caption_rows - self.first_result_rows
        return rows / span if span > 0 and rows > 0 else 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def caption_actor_nodes() -> list[str]:
    """Node ids of this job's alive captioning actors (one entry per actor).

    Read through :func:`core.ray_internals.actor_rows`: the GCS actor table on a tested Ray (no
    dashboard needed), Ray's state API otherwise. It is progress only, so any failure reads as
    "unknown" rather than failing the job.
    """
    try:
        import ray

        from core.ray_internals import actor_rows

        job_id = ray.get_runtime_context().get_job_id()
        alive = actor_rows("ALIVE")
    except Exception:  # progress is best-effort
        return []
    return [
        actor.node_id
        for actor in alive
        if actor.job_id == job_id
        and "MapWorker" in actor.class_name
        and "Captioner" in actor.class_name
    ]


def count_caption_actors() -> int:
    """Alive Ray Data actors of this job running a ``Captioner`` (for the progress log)."""
    return len(caption_actor_nodes())


def plan_todo(cfg: CaptionJobConfig, manifest_path: str, output: str) -> tuple[pa.Table, int, int]:
    """Rows of the manifest still to caption, the manifest's size, and how many are skipped."""
    manifest = read_manifest(manifest_path, cfg.splits)
    ok, failed = read_existing(output)
    done = ok if cfg.retry_errors else ok | failed
    if "label" in manifest.column_names:
        labels = manifest.column("label").cast(pa.string())
    else:
        labels = pa.array(["|".join(v or []) for v in manifest.column("labels").to_pylist()])
    table = pa.table(
        {"id": manifest.column("id"), "path": manifest.column("path"), "label": labels}
    )
    already = pc.is_in(table.column("id"), pa.array(sorted(done), pa.string()))
    remaining = table.filter(pc.invert(already))
    todo = remaining.slice(0, cfg.limit) if cfg.limit else remaining
    return todo, manifest.num_rows, manifest.num_rows - remaining.num_rows


def plan_block_rows(rows: int, batch_size: int, batches_per_block: int, max_actors: int) -> int:
    """Rows per input block: ``batches_per_block`` batches, but small enough that a short job
    still gives every actor of the pool at least two blocks (never less than one batch)."""
    spread = math.ceil(rows / (2 * max_actors)) if rows else batch_size
    return max(batch_size, min(batch_size * batches_per_block, spread))


def build_caption_dataset(cfg: CaptionJobConfig, todo: pa.Table, manifest_path: str):
    """The Ray Data plan: blocks of manifest rows → image-loading tasks → captioner actor pool."""
    import ray.data

    c = cfg.captioner
    block_rows = plan_block_rows(todo.num_rows, c.batch_size, c.batches_per_block, c.max_actors)
    blocks = [todo.slice(i, block_rows) for i in range(0, todo.num_rows, block_rows)]
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(
        load_images,
        fn_kwargs={"max_pixels": cfg.images.max_pixels, "max_side": cfg.images.max_side},
        batch_format="numpy",
        batch_size=None,
        num_cpus=cfg.images.num_cpus,
    )
    return ds.map_batches(
        Captioner,
        fn_constructor_kwargs={"cfg": c, "manifest_path": manifest_path},
        compute=ray.data.ActorPoolStrategy(
            min_size=c.min_actors, max_size=c.max_actors, initial_size=c.min_actors
        ),
        batch_size=c.batch_size,
        batch_format="numpy",
        num_gpus=c.num_gpus,
        num_cpus=c.num_cpus,
    )


def run_caption_stage(cfg: CaptionJobConfig, manifest_path: str, output: str) -> CaptionSummary:
    """Caption every manifest row not yet in ``output``; write parts as results arrive."""
    start = time.monotonic()
    todo, total, skipped = plan_todo(cfg, manifest_path, output)
    log.info("captioning %d images (%d already done) → %s", todo.num_rows, skipped, output)
    writer = PartWriter(output, cfg.flush_rows)
    done_ids: set[str] = set()
    failed_ids: set[str] = set()
    rows = 0
    max_actors = 0
    actors_over_time: list[tuple[float, int]] = []
    last_log = time.monotonic()
    first_seconds, first_rows = 0.0, 0
    if todo.num_rows:
        ds = build_caption_dataset(cfg, todo, manifest_path)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(batch)
            if not rows:
                first_seconds, first_rows = time.monotonic() - start, batch.num_rows
                log.info("first captions after %.1f s", first_seconds)
            rows += batch.num_rows
            errors = pc.fill_null(batch.column("error"), "").to_pylist()
            for image_id, err in zip(batch.column("id").to_pylist(), errors, strict=True):
                (failed_ids if err else done_ids).add(image_id)
            now = time.monotonic()
            if now - last_log >= cfg.progress_seconds:
                actors = count_caption_actors()
                max_actors = max(max_actors, actors)
                actors_over_time.append((round(now - start, 1), actors))
                finished = len(done_ids | failed_ids)
                log.info(
                    "progress: %d/%d images (%d failed), %.1f images/s, captioning actors: %d",
                    finished,
                    todo.num_rows,
                    len(failed_ids),
                    finished / (now - start),
                    actors,
                )
                last_log = now
    writer.flush()
    return CaptionSummary(
        manifest=manifest_path,
        output=output,
        total=total,
        captioned=len(done_ids),
        skipped=skipped,
        failed=len(failed_ids - done_ids),
        caption_rows=rows,
        seconds=round(time.monotonic() - start, 3),
        max_actors_seen=max_actors,
        first_result_seconds=round(first_seconds, 3),
        first_result_rows=first_rows,
        actors_over_time=actors_over_time,
    )
