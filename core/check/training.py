"""Checks of the training jobs (any registered method: a CLIP classifier, with or without class
means, or CLIP-Decoder): inputs, the places where two parts must agree, and one worker's
training-step memory at the configured batch.

Which parameters train is the method's own answer: its ``MethodWorker.param_groups`` (the
optimizer's groups) is called on the meta model, and parameters in no group are frozen, as the
method's worker freezes them."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core import storage
from core.check import fake_device, files, memory, meta_build
from core.check.context import Context, amp_dtype, device_of
from core.check.gpus import GIB

#: UCF-101, the paper's first dataset: the class count assumed when nothing else tells it.
DEFAULT_CLASSES = 101


def check_clip_pretrained(ctx: Context, key: str, model_name: str, pretrained: str) -> None:
    """An open_clip tag must be one of the model's tags; a file path must exist."""
    import open_clip

    if not pretrained:
        ctx.report.note(f"weights: {key} is empty: random weights")
        return
    looks_like_file = "/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))
    if looks_like_file:
        ctx.report.file(key, pretrained, files.exists(pretrained))
        return
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained in tags:
        ctx.report.note(
            f"weights: {key}={pretrained} is an open_clip tag of {model_name} (open_clip's cache "
            "is not checked)"
        )
    else:
        ctx.report.fail(
            f"{key}={pretrained!r} is neither a file nor an open_clip tag of {model_name} "
            f"(tags: {', '.join(tags) or 'none'})"
        )


def classes_from_manifest(path: str) -> list[str] | None:
    from core.data.manifest import read_manifest
    from core.train.image_data import manifest_classes

    return manifest_classes(read_manifest(path), path) if files.exists(path) else None


def class_count(ctx: Context, manifest: str, fallback: list[str] | None = None) -> int:
    """Classes from the manifest, else from the class-means file, else ``num_classes=``, else
    UCF-101's 101 (each source named in the report)."""
    classes = classes_from_manifest(manifest)
    ctx.report.file("manifest", manifest, classes is not None)
    if classes is not None:
        ctx.report.note(f"classes: {len(classes)} from the manifest")
        return len(classes)
    if fallback:
        ctx.report.note(f"classes: {len(fallback)} from the class-means file")
        return len(fallback)
    if "num_classes" in ctx.keys:
        ctx.report.note(f"classes: {ctx.keys['num_classes']} (num_classes)")
        return int(ctx.keys["num_classes"])
    ctx.report.note(f"classes: {DEFAULT_CLASSES} assumed (UCF-101; num_classes=N to change)")
    return DEFAULT_CLASSES


# --------------------------------------------------------------------------------------------
# The estimate shared by every method
# --------------------------------------------------------------------------------------------


def method_param_groups(method: str) -> Callable[[nn.Module], list[list[nn.Parameter]]]:
    """The optimizer groups (encoder, head) as ``method``'s worker defines them.

    ``param_groups`` reads only the model it is given, so it is called on an instance of the
    method's worker class that was never initialised (no data, no class means, no device).
    """
    import importlib

    from core.train.method import MethodWorker
    from core.train.registry import METHODS

    module = importlib.import_module(METHODS[method])
    classes = [
        c
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, MethodWorker) and c.__module__ == module.__name__
    ]
    if len(classes) != 1:
        raise ValueError(f"{module.__name__}: expected one MethodWorker class, found {classes}")
    worker = classes[0].__new__(classes[0])

    def groups(model: nn.Module) -> list[list[nn.Parameter]]:
        found = [list(g) for g in worker.param_groups(model)]
        trained = {id(p) for g in found for p in g}
        for param in model.parameters():
            param.requires_grad_(id(param) in trained)
        return found

    return groups


def estimate_training(
    ctx: Context,
    model: nn.Module,
    step: Callable[[int, Any], torch.Tensor],
    run: Any,
    param_groups: Callable[[nn.Module], list[list[nn.Parameter]]],
    what: str,
) -> None:
    """One worker's peak at ``run.batch_size / run.num_workers`` and the largest global batch.

    ``step(batch, mode)`` makes fake inputs and returns the loss, as the method's ``step`` does;
    it runs under the engine's autocast and in training mode (dropout masks count).
    """
    placement = ctx.placement(1.0 if run.use_gpu else 0.0)
    device, amp = device_of(placement), amp_dtype(placement, run.amp)
    mode = fake_device.new_mode()
    fake_device.to_fake(model, mode, device)
    model.train()
    groups = param_groups(model)
    existing = [*model.parameters(), *model.buffers()]
    cache: dict[int, memory.TrainingMemory] = {}

    def at(batch: int) -> memory.TrainingMemory:
        if batch not in cache:
            with mode, fake_device.gpu_attention():

                def forward() -> torch.Tensor:
                    with fake_device.autocast(device, amp):
                        return step(batch, mode)

                stats = memory.measure_forward(forward, existing)
            cache[batch] = memory.training_memory(model, stats, run.num_workers, groups)
        return cache[batch]

    local = run.batch_size // run.num_workers
    result = at(local)
    precision = f"{str(amp).removeprefix('torch.')} autocast" if amp else "float32"
    ctx.report.params = memory.parameter_count(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ctx.report.note(
        f"params: {what}: {ctx.report.params / 1e6:.2f}M ({trainable / 1e6:.2f}M trained)"
    )
    ctx.report.note(
        f"memory per worker: batch {local} (run.batch_size {run.batch_size} over "
        f"{run.num_workers} worker{'s' if run.num_workers > 1 else ''}), {precision} on "
        f"{placement.device}: {result.parts()} -> peak {result.peak / GIB:.2f} GiB"
    )
    ctx.report.note(f"gpu: {placement.describe()}")
    ctx.report.peak = result.peak
    if ctx.report.mismatches:
        return  # the check fails anyway: no search for the largest batch
    per_worker = memory.max_batch(lambda b: at(b).peak, local, placement.usable_bytes)
    ctx.report.max_batch = per_worker * run.num_workers
    ctx.report.note(
        f"largest run.batch_size that fits: {per_worker * run.num_workers} "
        f"({per_worker} per worker)"
    )


# --------------------------------------------------------------------------------------------
# CLIP classifiers (LMM-regularized, or any head-on-CLIP method)
# --------------------------------------------------------------------------------------------


def _means_width(ctx: Context, cfg: Any) -> tuple[int, str, list[str] | None] | None:
    """(width, where it comes from, classes) of the class means: the class-means file when it
    exists, else ``means_clip=``, else the class_descriptions preset's CLIP."""
    from core.config import ClassMeansJobConfig, load_config
    from core.text.class_means import load_class_means

    path = cfg.class_means or storage.join(cfg.storage, "class_means.safetensors")
    found = files.exists(path)
    ctx.report.file("class_means", path, found)
    if found:
        means = load_class_means(path, cfg.prompt)
        source = f"class-means file {path} ({means.clip_model or 'unknown CLIP'})"
        return int(means.means.shape[1]), source, list(means.classes)
    if "means_clip" in ctx.keys:
        name = ctx.keys["means_clip"]
        width = meta_build.clip_shape(name).embed_dim
        return width, f"class means of {name} (means_clip)", None
    preset = ctx.keys.get("means_preset") or ctx.sibling_preset("class_descriptions")
    if preset:
        means_cfg = load_config(ClassMeansJobConfig, preset)
        name = means_cfg.clip.model_name
        width = meta_build.clip_shape(name).embed_dim
        return width, f"class means of {name} ({os.path.basename(str(preset))})", None
    ctx.report.note(
        "class means: no file, no means_clip=, no class_descriptions preset: width not checked"
    )
    return None


def check_classifier(ctx: Context, cfg: Any, method: str) -> None:
    """A CLIP image tower + linear head, one training step: ``J = CE + alpha * J_reg`` when the
    method's config has class means (LMM-regularized CLIP), else cross-entropy."""
    from core.losses import regularized_ce_loss

    shape = meta_build.clip_shape(cfg.clip.model_name)
    check_clip_pretrained(ctx, "clip.pretrained", cfg.clip.model_name, cfg.clip.pretrained)
    manifest = cfg.manifest or storage.join(cfg.storage, "demo", "manifest.parquet")
    means_classes = None
    regularized = hasattr(cfg, "class_means")
    if regularized:
        found = _means_width(ctx, cfg)
        if found:
            width, source, means_classes = found
            ctx.report.agree(
                "class-means width",
                (source, width),
                (f"image embedding of the training CLIP {cfg.clip.model_name}", shape.embed_dim),
            )
    num_classes = class_count(ctx, manifest, means_classes)
    manifest_classes = classes_from_manifest(manifest)
    if means_classes is not None and manifest_classes is not None:
        ctx.report.agree(
            "classes", ("class-means file", len(means_classes)), ("manifest", len(manifest_classes))
        )
    model = meta_build.classifier(cfg.clip.model_name, num_classes)
    alpha = float(getattr(cfg, "alpha", 0.0))
    means = torch.empty(num_classes, shape.embed_dim, device="meta")

    def step(batch: int, mode: Any) -> torch.Tensor:
        device = next(model.parameters()).device
        images = fake_device.fake_tensor(
            mode, (batch, 3, shape.image_size, shape.image_size), torch.float32, device
        )
        labels = fake_device.fake_tensor(mode, (batch,), torch.long, device)
        logits, x = model(images)
        if not regularized:
            return F.cross_entropy(logits.float(), labels)
        fake_means = fake_device.fake_tensor(mode, tuple(means.shape), torch.float32, device)
        return regularized_ce_loss(logits, x, labels, fake_means, alpha)["loss"]

    what = (
        f"open_clip {cfg.clip.model_name} image tower + linear head {shape.embed_dim} -> "
        f"{num_classes}"
    )
    estimate_training(ctx, model, step, cfg.run, method_param_groups(method), what)


# --------------------------------------------------------------------------------------------
# CLIP-Decoder
# --------------------------------------------------------------------------------------------


def _nus_wide_lists(ctx: Context, manifest: str) -> tuple[int, int, str]:
    """(seen, unseen, source) from NUS-WIDE's own label lists, else the published protocol."""
    from core.check import published
    from core.data.nus_wide import load_label_split

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    roots = [
        ctx.keys.get("nus_wide_root", ""),
        os.path.dirname(manifest) if manifest else "",
        os.path.join(os.path.dirname(repo), "shared", "data", "nus-wide"),
    ]
    for root in filter(None, roots):
        try:
            split = load_label_split(root)
        except (FileNotFoundError, OSError, ValueError):
            continue
        return len(split.seen), len(split.unseen), f"NUS-WIDE lists in {root}"
    proto = published.load("nus-wide")
    return int(proto["seen"]), int(proto["unseen"]), "the published NUS-WIDE protocol"


def label_counts(ctx: Context, cfg: Any) -> tuple[int, int, str]:
    """(seen, unseen, source): the labels file, else the demo's labels, else NUS-WIDE's."""
    from core.data.multilabel_demo import LABELS
    from core.data.nus_wide import LabelSplit
    from core.train.methods.clip_decoder import DEMO_UNSEEN
    from core.train.multilabel_data import resolve_label_split_path

    if not cfg.manifest:
        ctx.report.note("manifest: none: the job generates the multi-label demo")
        return len(LABELS) - len(DEMO_UNSEEN), len(DEMO_UNSEEN), "the generated demo"
    ctx.report.file("manifest", cfg.manifest, files.exists(cfg.manifest))
    labels = resolve_label_split_path(cfg.manifest, cfg.labels)
    found = files.exists(labels)
    ctx.report.file("labels", labels, found)
    if found:
        split = LabelSplit.load(labels)
        return len(split.seen), len(split.unseen), f"labels file {labels}"
    seen, unseen, source = _nus_wide_lists(ctx, cfg.manifest)
    ctx.report.note(f"labels: {labels} is absent: label counts from {source}")
    return seen, unseen, source


def check_clip_decoder(ctx: Context, cfg: Any, method: str) -> None:
    """TResNet + zero-shot ML-Decoder: label queries = labels x CLIP text width; one step on
    the seen labels."""
    text = meta_build.clip_shape(cfg.clip.model_name)
    check_clip_pretrained(ctx, "clip.pretrained", cfg.clip.model_name, cfg.clip.pretrained)
    if cfg.model.pretrained not in ("", "timm"):
        ctx.report.file(
            "model.pretrained", cfg.model.pretrained, files.exists(cfg.model.pretrained)
        )
    seen, unseen, source = label_counts(ctx, cfg)
    if "num_labels" in ctx.keys:
        ctx.report.agree(
            "label count",
            ("num_labels (check key)", int(ctx.keys["num_labels"])),
            (source, seen + unseen),
        )
    model = meta_build.clip_decoder(cfg.model, text.embed_dim)
    head = model.head
    query_in = (
        head.wordvec_proj.in_features
        if hasattr(head.wordvec_proj, "in_features")
        else head.decoder_embedding
    )
    ctx.report.agree(
        "ML-Decoder query width",
        (f"CLIP {cfg.clip.model_name} text embedding", text.embed_dim),
        ("decoder label-embedding input", query_in),
    )
    ctx.report.note(
        f"queries: training {seen} seen labels x {text.embed_dim}; ZSL {unseen}, GZSL "
        f"{seen + unseen} labels x {text.embed_dim} ({source})"
    )
    cache = storage.join(cfg.storage, "runs", cfg.name, "label_embeddings.npz")
    if files.exists(cache):
        with np.load(io.BytesIO(storage.read_bytes(cache))) as saved:
            rows, width = saved["embeddings"].shape
        ctx.report.agree(
            "label embeddings",
            (f"cached {cache}", f"{rows} x {width}"),
            (f"{source} x CLIP text width", f"{seen + unseen} x {text.embed_dim}"),
        )
    size = cfg.model.image_size

    def step(batch: int, mode: Any) -> torch.Tensor:
        """``seen_label_loss`` with a fixed-shape alignment term: the real one drops images
        without positives by boolean indexing, which shape-only tensors cannot follow; the
        stand-in keeps the same [B, L] tensors, so the memory is the same."""
        from core.losses import asymmetric_loss

        device = next(model.parameters()).device
        images = fake_device.fake_tensor(mode, (batch, 3, size, size), torch.float32, device)
        queries = fake_device.fake_tensor(mode, (seen, text.embed_dim), torch.float32, device)
        targets = fake_device.fake_tensor(mode, (batch, seen), torch.float32, device)
        out = model(images, queries)
        cls = asymmetric_loss(
            out.logits, targets, cfg.gamma_neg, cfg.gamma_pos, cfg.asl_clip, 1e-8, cfg.cls_reduction
        )
        sims = out.image_embed.float() @ out.label_embed.float().T
        log_p = torch.log_softmax(sims / cfg.temperature, dim=1)
        align = (-(log_p * targets).sum(1) / targets.sum(1).clamp(min=1)).mean()
        return cfg.alpha * align + cfg.beta * cls

    what = (
        f"timm {cfg.model.backbone} ({model.backbone.num_features} features) + zero-shot "
        f"ML-Decoder ({head.decoder_embedding} wide)"
    )
    estimate_training(ctx, model, step, cfg.run, method_param_groups(method), what)


# --------------------------------------------------------------------------------------------
# Contrastive image–text pretraining (both towers train)
# --------------------------------------------------------------------------------------------


def check_contrastive(ctx: Context, cfg: Any, method: str) -> None:
    """The whole open_clip model, one contrastive step on a batch of image–text pairs.

    Each worker's logits are global-batch wide (features are gathered), which the estimate
    ignores: ``B x B`` floats are small beside the towers' activations at real batch sizes.
    """
    import open_clip

    check_clip_pretrained(ctx, "clip.pretrained", cfg.clip.model_name, cfg.clip.pretrained)
    shape = meta_build.clip_shape(cfg.clip.model_name)
    model = meta_build.open_clip_model(cfg.clip.model_name)
    context = int(model.context_length)
    loss_fn = open_clip.ClipLoss()

    def step(batch: int, mode: Any) -> torch.Tensor:
        device = next(model.parameters()).device
        size = (batch, 3, shape.image_size, shape.image_size)
        images = fake_device.fake_tensor(mode, size, torch.float32, device)
        tokens = fake_device.fake_tensor(mode, (batch, context), torch.long, device)
        image_features, text_features, scale = model(images, tokens)[:3]
        return loss_fn(image_features, text_features, scale)

    what = f"open_clip {cfg.clip.model_name} image and text towers, contrastive loss"
    estimate_training(ctx, model, step, cfg.run, method_param_groups(method), what)
