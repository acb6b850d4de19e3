"""CLIP-Decoder training on Ray Train: seen labels in the loss, ZSL / GZSL evaluation each epoch.

Driver (:func:`train_clip_decoder`): resolves the multi-label manifest and its label split
(generating the demo when no manifest is given), embeds every label's prompts ONCE with the frozen
CLIP text encoder, plans the per-(rank, epoch) data streams (:mod:`core.train.multilabel_data`)
and runs one TorchTrainer under ``<storage>/runs/<name>``. At the end it writes
``final_metrics.json``: ZSL and GZSL mAP and P/R/F1 at 3 and 5 on the test split, last epoch.

Worker (:func:`train_loop_per_worker`): reads only its config dict. Each step scores the SEEN labels
only (:func:`core.models.clip_decoder.seen_label_loss`), so unseen labels never reach the loss or a
gradient. Each epoch it scores its share of val and test against the unseen labels (ZSL) and all
labels (GZSL); rank 0 gathers the score matrices, computes the metrics, writes a checkpoint
(model, optimizer, scheduler, epoch, history) and rewrites ``metrics.jsonl``.

Several workers train like one on the same global batch: BatchNorm's batch statistics are taken
over the whole worker group (:func:`sync_batch_norm`), and each worker's loss weights make DDP's
averaged gradient the one-worker gradient of the global batch (:func:`group_loss_weights`).
Without dropout the only difference left is float summation order; dropout masks depend on the
worker that draws them (each epoch reseeds them by (seed, epoch, rank), so a resumed epoch
replays its masks).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from core import storage
from core.config import ClipDecoderTrainConfig, config_from_dict, to_dict
from core.data.nus_wide import LabelSplit
from core.metrics import multilabel_metrics
from core.models.clip_decoder import CLIPDecoder, build_clip_decoder, seen_label_loss
from core.train.group_batch_norm import sync_batch_norm
from core.train.image_data import (
    build_train_datasets,
    eval_dataset_name,
    row_seed,
    steps_per_epoch,
)
from core.train.launch import absolute_storage, launch_torch_trainer
from core.train.loop_parts import (
    STATE_FILE,
    all_reduce_sum,
    autocast,
    build_optimizer,
    grad_scaler,
    maybe_inject_fault,
    report_epoch,
    restore,
    train_epochs,
    training_state,
    unwrap,
)
from core.train.multilabel_data import (
    MultiLabelRows,
    TransformMultiLabelImages,
    backbone_data_config,
    build_multilabel_transforms,
    load_multilabel_splits,
    resolve_label_split_path,
)

log = logging.getLogger(__name__)

META_FILE = "clip_decoder.json"
FINAL_METRICS_FILE = "final_metrics.json"
EMBEDDINGS_FILE = "label_embeddings.npz"
TOP_KS = (3, 5)
#: Labels held out when the job generates its own demo: five of the twelve, so that top-5
#: precision / recall among the unseen labels is defined (the demo module's default holds out 3).
DEMO_UNSEEN = ("hexagon", "crescent", "heart", "pentagon", "arrow")
DEMO_IMAGES = 300


# --------------------------------------------------------------------------------------------
# Loss weights: N workers = 1 worker on the same global batch
# --------------------------------------------------------------------------------------------


def group_loss_weights(
    alpha: float,
    beta: float,
    cls_reduction: str,
    positives_local: float,
    positives_group: float,
    world: int,
) -> tuple[float, float]:
    """This worker's (alpha, beta) such that DDP's gradient average is the global-batch gradient.

    DDP averages the W workers' gradients. ASL with ``sum`` reduction sums over the global batch,
    so each worker's share is scaled by W (with ``mean`` the average of equal-sized local means is
    already the global mean). ``L_clip`` is a mean over the images that have a positive label, and
    those are unevenly spread over workers: the global value is ``sum_w S_w / P`` with ``S_w`` a
    worker's sum and ``P`` the group's count, so worker w weighs its local mean ``S_w / P_w`` by
    ``W * P_w / P``. One worker gets (alpha, beta) unchanged.
    """
    if world == 1:
        return alpha, beta
    clip_share = positives_local / positives_group if positives_group > 0 else 1.0 / world
    beta_w = beta * world if cls_reduction == "sum" else beta
    return alpha * world * clip_share, beta_w


# --------------------------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------------------------


def build_model(cfg: ClipDecoderTrainConfig, text_dim: int) -> CLIPDecoder:
    """The configured model; ``pretrained``: "" random, "timm" timm's weights, else a file."""
    m = cfg.model
    pretrained: bool | str = m.pretrained
    if m.pretrained in ("", "timm"):
        pretrained = m.pretrained == "timm"
    return build_clip_decoder(
        text_dim,
        backbone=m.backbone,
        pretrained=pretrained,
        decoder_embedding=m.decoder_embedding or None,
        num_heads=m.num_heads or None,
        dim_feedforward=m.dim_feedforward or None,
        align_dim=m.align_dim or None,
        dropout=m.dropout,
        seed=m.seed,
    )


def score_images(
    model: CLIPDecoder, images: torch.Tensor, label_sets: list[torch.Tensor]
) -> list[torch.Tensor]:
    """``model(images, labels).logits`` for each label set, with the backbone run once.

    The decoder has no self-attention, so each set's logits are what a separate forward on that
    set gives; evaluation scores the unseen labels (ZSL) and all labels (GZSL) this way.
    """
    feats = model.features(images)
    dtype = model.text_proj.weight.dtype
    return [model.head(feats, labels.to(dtype)) for labels in label_sets]


def score_split(
    model: CLIPDecoder,
    batches: Any,
    label_sets: list[torch.Tensor],
    device: torch.device,
    amp: bool,
) -> dict[str, np.ndarray]:
    """This worker's share of a split: rows, one score matrix per label set, and targets."""
    rows, targets = [], []
    scores: list[list[np.ndarray]] = [[] for _ in label_sets]
    model.eval()
    with torch.no_grad():
        for batch in batches:
            images = batch["image"].to(device, non_blocking=True)
            with autocast(device, amp):
                logits = score_images(model, images, label_sets)
            for out, value in zip(scores, logits, strict=True):
                out.append(value.float().cpu().numpy())
            rows.append(batch["row"].cpu().numpy())  # Ray Train moves batches to the GPU
            targets.append(batch["targets"].cpu().numpy().astype(np.uint8))
    num_labels = [int(s.shape[0]) for s in label_sets]
    return {
        "row": np.concatenate(rows) if rows else np.zeros(0, np.int64),
        "targets": np.concatenate(targets) if targets else np.zeros((0, num_labels[-1]), np.uint8),
        **{
            f"scores{i}": np.concatenate(s) if s else np.zeros((0, n), np.float32)
            for i, (s, n) in enumerate(zip(scores, num_labels, strict=True))
        },
    }


def _gather_to_rank0(part: dict[str, np.ndarray], rank: int, world: int) -> dict | None:
    """Every worker's share on rank 0, in row order (so the metrics do not depend on W)."""
    parts = [part]
    if world > 1:
        gathered: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object(part, gathered, dst=0)
        parts = gathered or []
    if rank != 0:
        return None
    merged = {k: np.concatenate([p[k] for p in parts]) for k in part}
    order = np.argsort(merged["row"], kind="stable")
    return {k: v[order] for k, v in merged.items()}


def zsl_gzsl_metrics(
    zsl_scores: np.ndarray,
    gzsl_scores: np.ndarray,
    targets: np.ndarray,
    unseen_idx: list[int],
    prefix: str = "",
) -> dict[str, float]:
    """ZSL (unseen labels only) and GZSL (all labels) mAP and P/R/F1@3,5 as flat keys.

    A k larger than the number of scored labels is undefined and left out (a label split with
    fewer than 5 unseen labels has no ``zsl_p5``).
    """
    out: dict[str, float] = {}
    for name, scores, tgt in (
        ("zsl", zsl_scores, targets[:, unseen_idx]),
        ("gzsl", gzsl_scores, targets),
    ):
        ks = [k for k in TOP_KS if k <= scores.shape[1]]
        metrics = multilabel_metrics(scores, tgt, None, prefix=name, ks=ks)
        out.update({f"{prefix}{k}": v for k, v in metrics.items()})
    return out


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One worker of the CLIP-Decoder run; see the module docstring."""
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(ClipDecoderTrainConfig, config["cfg"])
    labels = LabelSplit(tuple(config["seen"]), tuple(config["unseen"]))
    embeddings = torch.as_tensor(np.array(config["label_embeddings"], dtype=np.float32))
    run_dir: str = config["run_dir"]
    n_train: int = config["num_train"]
    eval_splits: list[str] = config["eval_splits"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)

    model = build_model(cfg, int(embeddings.shape[1]))
    if world > 1:
        model = sync_batch_norm(model, device)
    model = ray.train.torch.prepare_model(model)
    core_model: CLIPDecoder = unwrap(model)
    backbone_ids = {id(p) for p in core_model.backbone.parameters()}
    steps = steps_per_epoch(n_train, cfg.batch_size)
    optimizer, scheduler = build_optimizer(
        core_model.backbone.parameters(),
        [p for p in core_model.parameters() if id(p) not in backbone_ids],
        cfg.optim,
        steps,
        cfg.epochs,
    )
    scaler = grad_scaler(device, cfg.amp)
    start_epoch, history = restore(core_model, optimizer, scheduler, rank)

    all_emb = embeddings.to(device)
    unseen_emb = all_emb[labels.unseen_idx]
    seen_idx = torch.as_tensor(labels.seen_idx, dtype=torch.long, device=device)
    num_seen = len(labels.seen)
    local_batch = cfg.batch_size // world
    loss_kwargs = {
        "temperature": cfg.temperature,
        "gamma_neg": cfg.gamma_neg,
        "gamma_pos": cfg.gamma_pos,
        "asl_clip": cfg.asl_clip,
        "cls_reduction": cfg.cls_reduction,
    }
    fault_step = min(1, max(steps - 1, 0))
    for epoch, batches in train_epochs(rank, start_epoch, cfg.epochs, local_batch, steps):
        epoch_start = time.perf_counter()
        # Dropout draws from a stream fixed by (seed, epoch, rank): a resumed epoch replays it.
        torch.manual_seed(row_seed(cfg.seed, epoch, rank))
        model.train()
        sums = [0.0, 0.0]  # per-step global L_clip and L_cls, summed over the epoch's steps
        done = 0
        for step, batch in enumerate(batches):
            if step == fault_step:
                maybe_inject_fault(cfg.fail_at_epoch, run_dir, epoch, rank)
            images = batch["image"].to(device, non_blocking=True)
            targets = batch["targets"].to(device, non_blocking=True)
            positives = float((targets[:, :num_seen] > 0).any(dim=1).sum())
            group_positives = all_reduce_sum([positives], device)[0] if world > 1 else positives
            alpha_w, beta_w = group_loss_weights(
                cfg.alpha, cfg.beta, cfg.cls_reduction, positives, group_positives, world
            )
            with autocast(device, cfg.amp):
                terms, _ = seen_label_loss(
                    model, images, all_emb, targets, seen_idx, alpha_w, beta_w, **loss_kwargs
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            share = positives / group_positives if group_positives > 0 else 1.0 / world
            sums[0] += float(terms["clip"]) * share
            sums[1] += float(terms["cls"]) / (1 if cfg.cls_reduction == "sum" else world)
            done += 1
        train_seconds = time.perf_counter() - epoch_start
        clip_total, cls_total = all_reduce_sum(sums, device)
        done = max(done, 1)
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": (cfg.alpha * clip_total + cfg.beta * cls_total) / done,
            "train_clip": clip_total / done,
            "train_cls": cls_total / done,
            "lr_encoder": optimizer.param_groups[0]["lr"],
            "lr_head": optimizer.param_groups[1]["lr"],
            "train_seconds": train_seconds,
        }
        eval_start = time.perf_counter()
        for split in eval_splits:
            batches = ray.train.get_dataset_shard(eval_dataset_name(split, rank))
            part = score_split(
                core_model,
                batches.iter_torch_batches(batch_size=local_batch),
                [unseen_emb, all_emb],
                device,
                cfg.amp,
            )
            merged = _gather_to_rank0(part, rank, world)
            if merged is not None:
                metrics.update(
                    zsl_gzsl_metrics(
                        merged["scores0"],
                        merged["scores1"],
                        merged["targets"],
                        labels.unseen_idx,
                        prefix=f"{split}_",
                    )
                )
        metrics["eval_seconds"] = time.perf_counter() - eval_start
        metrics["epoch_seconds"] = time.perf_counter() - epoch_start
        if rank == 0:
            history.append(metrics)
        report_epoch(
            metrics,
            history,
            training_state(
                core_model,
                optimizer,
                scheduler,
                epoch,
                history,
                label_embeddings=embeddings,
            ),
            functools.partial(_write_meta, cfg=cfg, config=config, epoch=epoch, metrics=metrics),
            run_dir,
            rank,
        )


def _write_meta(
    folder: str, cfg: ClipDecoderTrainConfig, config: dict[str, Any], epoch: int, metrics: dict
) -> None:
    """What ``load_clip_decoder`` needs to rebuild the model, beside the training state."""
    meta = {
        "model": dataclasses.asdict(cfg.model),
        "text_dim": len(config["label_embeddings"][0]),
        "clip": dataclasses.asdict(cfg.clip),
        "templates": list(config["templates"]),
        "seen": list(config["seen"]),
        "unseen": list(config["unseen"]),
        "epoch": epoch,
        "metrics": metrics,
    }
    with open(os.path.join(folder, META_FILE), "w") as f:
        json.dump(meta, f, indent=1)


def load_clip_decoder(checkpoint_dir: str) -> tuple[CLIPDecoder, dict[str, Any], torch.Tensor]:
    """A trained model (eval mode, CPU), its meta data and the label embeddings [L_all, T].

    ``meta["seen"]`` / ``meta["unseen"]`` name the embedding rows (seen first), so
    ``model(images, embeddings[len(meta["seen"]):])`` scores the unseen labels.
    """
    meta_path = storage.join(checkpoint_dir, META_FILE)
    if not storage.exists(meta_path):
        raise FileNotFoundError(f"{checkpoint_dir}: no {META_FILE}; not a CLIP-Decoder checkpoint")
    meta = storage.read_json(meta_path)
    state_bytes = storage.read_bytes(storage.join(checkpoint_dir, STATE_FILE))
    state = torch.load(io.BytesIO(state_bytes), map_location="cpu", weights_only=True)
    cfg = config_from_dict(ClipDecoderTrainConfig, {"model": {**meta["model"], "pretrained": ""}})
    model = build_model(cfg, int(meta["text_dim"]))
    model.load_state_dict(state["model"])
    return model.eval(), meta, state["label_embeddings"]


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


@dataclass
class ClipDecoderRun:
    """A finished CLIP-Decoder run: where it lives, its per-epoch metrics and the final test."""

    name: str
    run_dir: str
    manifest: str
    labels: str
    num_seen: int
    num_unseen: int
    history: list[dict[str, Any]] = field(default_factory=list)
    final_metrics: dict[str, Any] = field(default_factory=dict)
    final_metrics_path: str = ""
    checkpoint_metric: str = ""
    best_checkpoint: str = ""
    latest_checkpoint: str = ""

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_clip_decoder_inputs(cfg: ClipDecoderTrainConfig) -> tuple[str, str]:
    """(manifest, labels.json); with no manifest configured, the demo under the storage root
    (generated on first use, then reused)."""
    manifest = cfg.manifest
    if not manifest:
        root = storage.join(cfg.storage, "multilabel_demo")
        manifest = storage.join(root, "manifest.parquet")
        if not storage.exists(manifest):
            from core.data.multilabel_demo import generate_multilabel_demo

            log.info("no manifest given: writing the multi-label demo to %s", root)
            generate_multilabel_demo(root, num_images=DEMO_IMAGES, unseen=DEMO_UNSEEN)
    if not storage.exists(manifest):
        raise FileNotFoundError(f"manifest: {manifest}: no such file")
    labels = resolve_label_split_path(manifest, cfg.labels)
    if not storage.exists(labels):
        raise FileNotFoundError(
            f"labels: {labels}: no such file (seen / unseen label lists, written next to the "
            "manifest by the NUS-WIDE reader and the demo; set labels=... to point elsewhere)"
        )
    # Absolute: Train workers run in their own folder.
    return absolute_storage(manifest), absolute_storage(labels)


def _templates(cfg: ClipDecoderTrainConfig) -> list[str]:
    from core.text.label_prompts import resolve_templates

    return list(resolve_templates(cfg.custom_templates or cfg.templates))


def compute_label_embeddings(
    cfg: ClipDecoderTrainConfig, label_split: LabelSplit, cache_dir: str = ""
) -> np.ndarray:
    """float32 [L_all, T]: every label's prompts through the frozen CLIP text encoder, once.

    With ``cache_dir`` the result is kept there, keyed by CLIP model, templates and labels, so a
    re-run (e.g. resuming a run) skips loading CLIP.
    """
    from core.models.open_clip_models import build_clip
    from core.text.label_prompts import embed_label_prompts

    templates = _templates(cfg)
    key = json.dumps(
        {"clip": dataclasses.asdict(cfg.clip), "templates": templates, "labels": label_split.all},
        sort_keys=True,
    )
    cache = storage.join(cache_dir, EMBEDDINGS_FILE) if cache_dir else ""
    if cache and storage.exists(cache):
        import io

        with np.load(io.BytesIO(storage.read_bytes(cache))) as saved:
            if str(saved["key"]) == key:
                return saved["embeddings"].astype(np.float32)
    bundle = build_clip(cfg.clip.model_name, cfg.clip.pretrained, cfg.clip.seed)
    start = time.perf_counter()
    emb = embed_label_prompts(bundle, None, label_split.all, templates).numpy().astype(np.float32)
    log.info(
        "embedded %d labels x %d templates with %s in %.1f s",
        len(label_split.all),
        len(templates),
        cfg.clip.model_name,
        time.perf_counter() - start,
    )
    if cache:
        import io

        buf = io.BytesIO()
        np.savez(buf, embeddings=emb, key=np.array(key))
        storage.write_bytes(cache, buf.getvalue())
    return emb


def checkpoint_metric(
    splits: dict[str, MultiLabelRows], label_split: LabelSplit
) -> tuple[str, str]:
    """(metric, mode) ranking checkpoints: ``val_zsl_map`` when val has unseen positives,
    ``val_gzsl_map`` when it has only seen ones (NUS-WIDE's val comes from its train images),
    ``train_loss`` without val."""
    val = splits["val"]
    if val.has_positives(label_split.unseen_idx):
        return "val_zsl_map", "max"
    if val.has_positives(range(len(label_split.all))):
        return "val_gzsl_map", "max"
    return "train_loss", "min"


def _final_metrics(
    history: list[dict[str, Any]], cfg: ClipDecoderTrainConfig, run: ClipDecoderRun, n_test: int
) -> dict[str, Any]:
    last = history[-1]
    out: dict[str, Any] = {
        "split": "test",
        "epoch": last["epoch"],
        "epochs": cfg.epochs,
        "num_images": n_test,
        "num_seen": run.num_seen,
        "num_unseen": run.num_unseen,
        "checkpoint": run.latest_checkpoint,
        "best_checkpoint": run.best_checkpoint,
        "checkpoint_metric": run.checkpoint_metric,
        "note": "fractions in [0, 1] on the test split after the last epoch; zsl = unseen labels "
        "only, gzsl = all labels",
    }
    for key, value in last.items():
        if key.startswith(("test_zsl_", "test_gzsl_")):
            out[key.removeprefix("test_")] = value
    return out


def train_clip_decoder(
    cfg: ClipDecoderTrainConfig, callbacks: list[Any] | None = None
) -> ClipDecoderRun:
    """Train CLIP-Decoder on the seen labels with one TorchTrainer; evaluate ZSL / GZSL.

    Needs a running Ray (``ray_jobs.cli.init_ray``). Returns the run (history, final test metrics,
    checkpoints); calling it again with the same storage and name resumes an interrupted run.
    """
    from core.train.trainer import read_history

    manifest, labels_path = resolve_clip_decoder_inputs(cfg)
    label_split, splits = load_multilabel_splits(manifest, labels_path)
    if len(splits["train"]) < cfg.batch_size:
        raise ValueError(
            f"batch_size {cfg.batch_size} is larger than the {len(splits['train'])} training rows "
            f"of {manifest}"
        )
    if len(splits["test"]) == 0:
        raise ValueError(f"{manifest}: no rows with split 'test'; ZSL evaluation needs them")
    if not splits["test"].has_positives(label_split.unseen_idx):
        log.warning("%s: no test image has an unseen label; ZSL mAP will be NaN", manifest)
    train_tf, eval_tf = build_multilabel_transforms(
        backbone_data_config(cfg.model.backbone), cfg.model.image_size
    )
    root = absolute_storage(storage.join(cfg.storage, "runs"))
    run_dir = storage.join(root, cfg.name)
    embeddings = compute_label_embeddings(cfg, label_split, cache_dir=run_dir)
    datasets = build_train_datasets(
        splits,
        train_tf,
        eval_tf,
        seed=cfg.seed,
        epochs=cfg.epochs,
        global_batch=cfg.batch_size,
        world=cfg.num_workers,
        batch_class=TransformMultiLabelImages,
    )
    metric, mode = checkpoint_metric(splits, label_split)
    run = ClipDecoderRun(
        name=cfg.name,
        run_dir=run_dir,
        manifest=manifest,
        labels=labels_path,
        num_seen=len(label_split.seen),
        num_unseen=len(label_split.unseen),
        checkpoint_metric=metric,
    )
    log.info(
        "training CLIP-Decoder %s: %d seen / %d unseen labels, %d train images → %s",
        cfg.name,
        run.num_seen,
        run.num_unseen,
        len(splits["train"]),
        run_dir,
    )
    launched = launch_torch_trainer(
        train_loop_per_worker,
        {
            "cfg": to_dict(cfg),
            "seen": list(label_split.seen),
            "unseen": list(label_split.unseen),
            "label_embeddings": embeddings,
            "templates": _templates(cfg),
            "run_dir": run_dir,
            "num_train": len(splits["train"]),
            "eval_splits": [s for s in ("val", "test") if len(splits[s])],
        },
        cfg,
        storage_path=root,
        name=cfg.name,
        datasets=datasets,
        metric=metric,
        mode=mode,
        callbacks=callbacks,
    )
    run.history = read_history(run_dir)
    run.best_checkpoint = launched.best_checkpoint
    run.latest_checkpoint = launched.latest_checkpoint
    if run.history:
        run.final_metrics = _final_metrics(run.history, cfg, run, len(splits["test"]))
        run.final_metrics_path = storage.join(run_dir, FINAL_METRICS_FILE)
        storage.write_json(run.final_metrics_path, run.final_metrics)
    return run
