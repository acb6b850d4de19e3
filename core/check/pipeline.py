"""The pipeline job (manifest → captions → class means → training → prediction): each stage is
checked as its own job's preset would be, from the pipeline's sections.

The stages run one after the other on their own workers, so each gets its own estimate and its
own ``stage <name>:`` line; the pipeline's last line reports the tightest stage (the largest
share of its worker's memory), ``fits=yes`` only when every stage fits, and the largest
parameter count of any stage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core import storage
from core.check.context import Context
from core.check.report import Report

#: Classes of the published datasets (their own class lists), when no manifest is built yet.
DATASET_CLASSES = {"ucf101": 101, "ucf101_midframes": 101, "era": 25, "bar": 6}


def _manifest(cfg: Any) -> str:
    """The manifest the stages read: the given one, or the one the pipeline writes."""
    if getattr(cfg, "source", "") == "manifest" and cfg.manifest:
        return cfg.manifest
    return storage.join(cfg.storage, "manifest", "manifest.parquet")


def _written_by_the_pipeline(cfg: Any, missing: str) -> bool:
    """Whether a missing file (``"key: path"``) is one an earlier stage writes: everything under
    the pipeline's storage root except a manifest the user gave (the pipeline's inputs are its
    source folder or table, or that manifest)."""
    path = missing.split(": ", 1)[-1]
    given = cfg.manifest if getattr(cfg, "source", "") == "manifest" else ""
    root = cfg.storage.rstrip("/") + "/"
    return path != given and path.startswith(root)


def _stage(
    ctx: Context, name: str, run: Callable[[Context], None], stages: list, cfg: Any = None
) -> None:
    """Run one stage's check into its own report and copy its lines, prefixed, into ``ctx``;
    files an earlier stage writes are noted, not missing."""
    sub = Context(Report(), ctx.nodes, ctx.preset, dict(ctx.keys))
    run(sub)
    r = sub.report
    written = [m for m in r.missing if cfg is not None and _written_by_the_pipeline(cfg, m)]
    r.missing = [m for m in r.missing if m not in written]
    produced = {f"file: {m} missing" for m in written}
    lines = [f"{line} (a stage writes it)" if line in produced else line for line in r.lines]
    ctx.report.lines.extend(f"[{name}] {line}" for line in lines)
    ctx.report.mismatches.extend(f"[{name}] {line}" for line in r.mismatches)
    ctx.report.missing.extend(f"[{name}] {line}" for line in r.missing)
    ctx.report.note(f"stage {name}: {r.last_line(False).removeprefix('check: ')}")
    stages.append(r)


def check_pipeline(ctx: Context, cfg: Any) -> None:
    """Caption, class-means, training (baseline and regularized) and prediction stages."""
    from core.check import captioning, inference, training
    from core.config import CaptionJobConfig

    manifest = _manifest(cfg)
    if "num_classes" not in ctx.keys and cfg.source in DATASET_CLASSES:
        ctx.keys["num_classes"] = str(DATASET_CLASSES[cfg.source])
    # The pipeline computes the class means with the classifier's own CLIP.
    ctx.keys.setdefault("means_clip", cfg.clip.model_name)
    stages: list[Report] = []
    caption = CaptionJobConfig(storage=cfg.storage, manifest=manifest, captioner=cfg.captioner)
    _stage(ctx, "caption", lambda c: captioning.check_caption(c, caption), stages, cfg)
    means_cfg = cfg.class_means_job(manifest=manifest)
    _stage(
        ctx,
        "class_means",
        lambda c: inference.check_class_descriptions(c, means_cfg),
        stages,
        cfg,
    )
    train = cfg.training(name=cfg.name, manifest=manifest)
    _stage(ctx, "train", lambda c: training.check_classifier(c, train, "regularized"), stages, cfg)
    predict = cfg.predict
    _stage(
        ctx,
        "predict",
        lambda c: inference.check_classifier_inference(
            c, cfg.clip.model_name, manifest, predict.batch_size, predict.num_gpus
        ),
        stages,
        cfg,
    )

    def share(r: Report) -> float:
        usable = r.placement.usable_bytes if r.placement else 0
        return r.peak / usable if usable else float("inf") if r.peak else 0.0

    tightest = max(stages, key=share)
    r = ctx.report
    r.params = max(s.params for s in stages)
    r.peak, r.placement, r.max_batch = tightest.peak, tightest.placement, tightest.max_batch
    r.all_stages_fit = all(s.fits for s in stages)
