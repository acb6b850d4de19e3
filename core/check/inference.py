"""Checks of the inference jobs on Ray Data actor pools: class descriptions (the frozen CLIP text
encoder) and batch prediction (a trained classifier). Both run in float32 without gradients, so
an actor's peak is its weights plus the forward's live peak at the batch size."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from core import storage
from core.check import fake_device, files, memory, meta_build
from core.check.context import Context, device_of
from core.check.gpus import GIB
from core.check.training import check_clip_pretrained, class_count, classes_from_manifest

#: Captions per text-encoder call (``core.text.encode.TextEncoder``'s default chunk).
TEXT_CHUNK = 256


def estimate_inference(
    ctx: Context,
    model: nn.Module,
    forward: Callable[[int, Any], Any],
    batch: int,
    num_gpus: float,
    what: str,
    batch_key: str,
) -> None:
    """One actor's peak (weights + the forward's live peak) and the largest batch that fits."""
    placement = ctx.placement(num_gpus)
    device = device_of(placement)
    mode = fake_device.new_mode()
    fake_device.to_fake(model, mode, device)
    model.eval()
    weights = memory.tensor_bytes([*model.parameters(), *model.buffers()])

    @functools.cache
    def peak_at(b: int) -> int:
        with mode, fake_device.gpu_attention(), torch.no_grad():
            stats = memory.measure_forward(lambda: forward(b, mode))
        return weights + stats.peak_live

    peak = peak_at(batch)
    ctx.report.params = memory.parameter_count(model)
    ctx.report.peak = peak
    ctx.report.note(f"params: {what}: {ctx.report.params / 1e6:.2f}M")
    ctx.report.note(
        f"memory per actor: batch {batch}, float32 on {placement.device}: weights "
        f"{weights / GIB:.2f} + forward live peak {(peak - weights) / GIB:.2f} -> peak "
        f"{peak / GIB:.2f} GiB"
    )
    ctx.report.note(f"gpu: {placement.describe()}")
    if ctx.report.mismatches:
        return  # the check fails anyway: no search for the largest batch
    ctx.report.max_batch = memory.max_batch(peak_at, batch, placement.usable_bytes)
    ctx.report.note(f"largest {batch_key} that fits: {ctx.report.max_batch}")


def check_class_descriptions(ctx: Context, cfg: Any) -> None:
    """The frozen text tower embeds ``batch_size`` captions per call (in chunks of 256)."""
    shape = meta_build.clip_shape(cfg.clip.model_name)
    check_clip_pretrained(ctx, "clip.pretrained", cfg.clip.model_name, cfg.clip.pretrained)
    manifest = cfg.manifest or storage.join(cfg.storage, "demo", "manifest.parquet")
    captions = cfg.captions or storage.join(cfg.storage, "captions")
    ctx.report.file("manifest", manifest, files.exists(manifest))
    ctx.report.file("captions", captions, files.exists(captions))
    ctx.report.note(
        f"class means: {shape.embed_dim} wide ({cfg.clip.model_name}); a regularized training "
        f"preset must use a CLIP whose image embedding is {shape.embed_dim} wide"
    )
    model = meta_build.text_tower(cfg.clip.model_name)

    def forward(batch: int, mode: Any) -> torch.Tensor:
        device = next(model.parameters()).device
        tokens = fake_device.fake_tensor(
            mode, (min(batch, TEXT_CHUNK), shape.text_context), torch.long, device
        )
        return model.encode_text(tokens)

    what = f"open_clip {cfg.clip.model_name} text tower"
    estimate_inference(ctx, model, forward, cfg.batch_size, cfg.num_gpus, what, "batch_size")


def _checkpoint_meta(path: str) -> tuple[str, dict[str, Any]] | None:
    """(meta.json path, meta) of a classifier checkpoint (a run folder: its newest checkpoint),
    or None when absent. Read and interpreted as the predict job does (``load_classifier``),
    with its errors (one line naming meta.json), without reading the weights."""
    from core.models.clip_classifier import META_FILE, CheckpointError, read_meta
    from core.predict import resolve_checkpoint
    from core.train.registry import get_method

    if not files.exists(path):
        return None
    folder = resolve_checkpoint(path)
    meta, meta_path = read_meta(folder), storage.join(folder, META_FILE)
    try:
        get_method(str(meta.get("method", "regularized")))
    except ValueError as exc:
        raise CheckpointError(f"{meta_path}: 'method': {exc}") from None
    for key in ("clip", "classes"):
        if key not in meta:
            raise CheckpointError(f"{meta_path}: no {key!r} entry")
    clip, classes = meta["clip"], meta["classes"]
    if not (isinstance(clip, dict) and "model_name" in clip and isinstance(classes, list)):
        raise CheckpointError(f"{meta_path}: bad 'clip' or 'classes'")
    try:
        meta_build.clip_shape(str(clip["model_name"]))
    except ValueError as exc:
        raise CheckpointError(f"{meta_path}: {exc}") from exc
    return meta_path, meta


def check_predict(ctx: Context, cfg: Any) -> None:
    """The classifier of ``checkpoint`` (from its meta.json, or from the training preset it
    comes from when it is absent) predicts ``batch_size`` images per call; the manifest's labels
    must be among its classes."""
    from core.config import TrainRegularizedConfig, load_config

    manifest = cfg.manifest or storage.join(cfg.storage, "demo", "manifest.parquet")
    found = _checkpoint_meta(cfg.checkpoint)
    ctx.report.file("checkpoint", cfg.checkpoint, found is not None)
    if found is not None:
        meta_path, meta = found
        clip_name, classes = str(meta["clip"]["model_name"]), [str(c) for c in meta["classes"]]
        num_classes = len(classes)
        ctx.report.note(f"classifier: from {meta_path}")
        labels = classes_from_manifest(manifest)
        ctx.report.file("manifest", manifest, labels is not None)
        if labels is not None:
            unknown = sorted(set(labels) - set(classes))
            if unknown:
                shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                ctx.report.fail(
                    f"classes: {len(unknown)} of the manifest's {len(labels)} labels ({shown}) "
                    f"are not among the checkpoint's {num_classes} classes"
                )
            else:
                ctx.report.note(
                    f"classes: the manifest's {len(labels)} labels are among the checkpoint's "
                    f"{num_classes} classes"
                )
    else:
        preset = ctx.keys.get("train_preset") or ctx.sibling_preset("train_regularized")
        if not preset:
            raise ValueError(
                f"checkpoint {cfg.checkpoint} is absent and no training preset tells its model: "
                "pass train_preset=ray_jobs/configs/train_regularized_<name>.yaml"
            )
        clip_name = load_config(TrainRegularizedConfig, preset).clip.model_name
        num_classes = None
        ctx.report.note(f"classifier: as {os.path.basename(str(preset))} trains it")
    check_classifier_inference(ctx, clip_name, manifest, cfg.batch_size, cfg.num_gpus, num_classes)


def check_classifier_inference(
    ctx: Context,
    clip_name: str,
    manifest: str,
    batch: int,
    num_gpus: float,
    num_classes: int | None = None,
) -> None:
    """A trained CLIP classifier predicting ``batch`` images per call on one actor."""
    if num_classes is None:
        num_classes = class_count(ctx, manifest)
    shape = meta_build.clip_shape(clip_name)
    model = meta_build.classifier(clip_name, num_classes)

    def forward(b: int, mode: Any) -> torch.Tensor:
        device = next(model.parameters()).device
        size = (b, 3, shape.image_size, shape.image_size)
        logits, _ = model(fake_device.fake_tensor(mode, size, torch.float32, device))
        return logits.float().softmax(dim=1)

    what = f"open_clip {clip_name} image tower + linear head -> {num_classes}"
    estimate_inference(ctx, model, forward, batch, num_gpus, what, "batch_size")
