"""CLIP-Decoder (Ali & Khan): seen labels in the loss, ZSL / GZSL evaluation each epoch.

Driver side: the multi-label manifest and its label split (the demo is generated when no manifest
is given), every label's prompts embedded ONCE with the frozen CLIP text encoder (cached in the
run folder), and the checkpoint metric. After the run, ``final_metrics.json``: ZSL and GZSL mAP
and P/R/F1 at 3 and 5 on the test split, last epoch.

Worker side: each step scores the SEEN labels only (:func:`core.models.clip_decoder.
seen_label_loss`), so unseen labels never reach the loss or a gradient. Each epoch it scores its
share of val and test against the unseen labels (ZSL) and all labels (GZSL); rank 0 gathers the
score matrices and computes the metrics.

Several workers train like one on the same global batch: BatchNorm's batch statistics are taken
over the whole worker group (``group_batch_norm``), and each worker's loss weights make DDP's
averaged gradient the one-worker gradient of the global batch (:func:`group_loss_weights`).
Without dropout the only difference left is float summation order; dropout masks depend on the
worker that draws them (each epoch reseeds them by (seed, epoch, rank), so a resumed epoch
replays its masks).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import time
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist

from core import storage
from core.config import ClipDecoderTrainConfig, config_from_dict
from core.data.nus_wide import LabelSplit
from core.train.engine import RunResult, fit
from core.train.launch import absolute_storage
from core.train.loop_parts import STATE_FILE, autocast
from core.train.method import Method, MethodWorker, RunPlan, StepResult, WorkerContext

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
    ``W * P_w / P``. One worker gets (alpha, beta) unchanged. The counts may be 0-d device tensors
    (the step's case): the weights then stay on the device too, so the host never waits.
    """
    if world == 1:
        return alpha, beta
    share = clip_share(positives_local, positives_group, world)
    beta_w = beta * world if cls_reduction == "sum" else beta
    return alpha * world * share, beta_w


def clip_share(positives_local: Any, positives_group: Any, world: int) -> Any:
    """This worker's fraction of the group's images with a positive label (1/W when none has
    one); numbers or 0-d device tensors (no host synchronisation)."""
    if isinstance(positives_group, torch.Tensor):
        return torch.where(
            positives_group > 0, positives_local / positives_group.clamp(min=1), 1.0 / world
        )
    return positives_local / positives_group if positives_group > 0 else 1.0 / world


# --------------------------------------------------------------------------------------------
# Model, scoring and metrics
# --------------------------------------------------------------------------------------------


def build_model(cfg: ClipDecoderTrainConfig, text_dim: int) -> Any:
    """The configured model; ``pretrained``: "" random, "timm" timm's weights, else a file."""
    from core.models.clip_decoder import build_clip_decoder

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


def score_images(model: Any, images: torch.Tensor, label_sets: list[torch.Tensor]) -> list:
    """``model(images, labels).logits`` for each label set, with the backbone run once.

    The decoder has no self-attention, so each set's logits are what a separate forward on that
    set gives; evaluation scores the unseen labels (ZSL) and all labels (GZSL) this way.
    """
    feats = model.features(images)
    dtype = model.text_proj.weight.dtype
    return [model.head(feats, labels.to(dtype)) for labels in label_sets]


def score_split(
    model: Any,
    batches: Any,
    label_sets: list[torch.Tensor],
    device: torch.device,
    amp: bool,
) -> dict[str, np.ndarray]:
    """This worker's share of a split: rows, one score matrix per label set, and targets.

    Everything stays on the device until the split is scored, then moves to the host in one
    transfer per array: a copy per batch would make the host wait for every batch's forward.
    """
    rows, targets, valid = [], [], []
    scores: list[list[torch.Tensor]] = [[] for _ in label_sets]
    model.eval()
    with torch.no_grad():
        for batch in batches:
            images = batch["image"].to(device, non_blocking=True)
            with autocast(device, amp):
                logits = score_images(model, images, label_sets)
            for out, value in zip(scores, logits, strict=True):
                out.append(value.float())
            rows.append(batch["row"])  # Ray Train moves batches to the GPU
            targets.append(batch["targets"].to(torch.uint8))
            ok = batch["valid"] if "valid" in batch else torch.ones(len(images), device=device)
            valid.append(ok.to(torch.uint8))
    num_labels = [int(s.shape[0]) for s in label_sets]

    def host(parts: list[torch.Tensor], empty: np.ndarray) -> np.ndarray:
        return torch.cat(parts).cpu().numpy() if parts else empty

    return {
        "row": host(rows, np.zeros(0, np.int64)),
        "valid": host(valid, np.zeros(0, np.uint8)),
        "targets": host(targets, np.zeros((0, num_labels[-1]), np.uint8)),
        **{
            f"scores{i}": host(s, np.zeros((0, n), np.float32))
            for i, (s, n) in enumerate(zip(scores, num_labels, strict=True))
        },
    }


def gather_to_rank0(part: dict[str, np.ndarray], rank: int, world: int) -> dict | None:
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
    map_protocol: str = "reference",
) -> dict[str, float]:
    """ZSL (unseen labels only) and GZSL (all labels) mAP and P/R/F1@3,5 as flat keys.

    ``zsl_map`` / ``gzsl_map`` follow ``map_protocol`` (:data:`core.metrics.MapProtocol`);
    ``*_map_reference`` and ``*_map_skip_empty`` always give both, so the final metrics can
    quote the configured one. A k larger than the number of scored labels is undefined and left
    out (a label split with fewer than 5 unseen labels has no ``zsl_p5``).
    """
    from core.metrics import multilabel_metrics

    out: dict[str, float] = {}
    for name, scores, tgt in (
        ("zsl", zsl_scores, targets[:, unseen_idx]),
        ("gzsl", gzsl_scores, targets),
    ):
        ks = [k for k in TOP_KS if k <= scores.shape[1]]
        metrics = multilabel_metrics(
            scores, tgt, None, prefix=name, ks=ks, map_protocol=map_protocol
        )
        out.update({f"{prefix}{k}": v for k, v in metrics.items()})
    return out


# --------------------------------------------------------------------------------------------
# The worker side
# --------------------------------------------------------------------------------------------


class ClipDecoderWorker(MethodWorker):
    """The model, the label embeddings on the device, the seen-label step, ZSL/GZSL scoring."""

    group_batch_norm: ClassVar[bool] = True

    def __init__(self, cfg: ClipDecoderTrainConfig, payload: dict[str, Any], ctx: WorkerContext):
        self.cfg, self.ctx, self.payload = cfg, ctx, payload
        self.labels = LabelSplit(tuple(payload["seen"]), tuple(payload["unseen"]))
        self.embeddings = torch.as_tensor(np.array(payload["label_embeddings"], dtype=np.float32))
        self.model = build_model(cfg, int(self.embeddings.shape[1]))
        self.all_emb = self.embeddings.to(ctx.device)
        self.unseen_emb = self.all_emb[self.labels.unseen_idx]
        self.seen_idx = torch.as_tensor(self.labels.seen_idx, dtype=torch.long, device=ctx.device)
        self.loss_kwargs = {
            "temperature": cfg.temperature,
            "gamma_neg": cfg.gamma_neg,
            "gamma_pos": cfg.gamma_pos,
            "asl_clip": cfg.asl_clip,
            "cls_reduction": cfg.cls_reduction,
        }

    def param_groups(self, model: torch.nn.Module) -> tuple[Any, Any]:
        backbone_ids = {id(p) for p in model.backbone.parameters()}
        head = [p for p in model.parameters() if id(p) not in backbone_ids]
        return model.backbone.parameters(), head

    def start_epoch(self, epoch: int) -> None:
        from core.train.image_data import row_seed

        # Dropout draws from a stream fixed by (seed, epoch, rank): a resumed epoch replays it.
        torch.manual_seed(row_seed(self.cfg.run.seed, epoch, self.ctx.rank))

    def step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> StepResult:
        from core.models.clip_decoder import seen_label_loss

        cfg, ctx = self.cfg, self.ctx
        images = batch["image"].to(ctx.device, non_blocking=True)
        targets = batch["targets"].to(ctx.device, non_blocking=True)
        # Unreadable images (valid == 0) are left out of both terms.
        weights = (
            batch["valid"].to(ctx.device, torch.float32, non_blocking=True)
            if "valid" in batch
            else None
        )
        rows: Any = float(images.shape[0])  # this worker's share of the group's usable rows
        share, alpha_w, beta_w = 1.0, cfg.alpha, cfg.beta
        if ctx.world > 1:  # the group's positives and rows set this worker's loss weights
            # All on the device: one small all-reduce, no host synchronisation.
            usable = targets[:, : len(self.labels.seen)] > 0
            local_rows = torch.full((), rows, dtype=torch.float32, device=ctx.device)
            if weights is not None:
                usable = usable & (weights > 0)[:, None]
                local_rows = weights.sum()
            counts = torch.stack([usable.any(dim=1).sum().to(torch.float32), local_rows])
            group = ctx.group_sum(counts)
            alpha_w, beta_w = group_loss_weights(
                cfg.alpha, cfg.beta, cfg.cls_reduction, counts[0], group[0], ctx.world
            )
            share = clip_share(counts[0], group[0], ctx.world)
            rows = group[1] / ctx.world
        elif weights is not None:
            rows = weights.sum()
        # ASL is summed here; "mean" divides by the share of usable rows x labels, so that
        # DDP's average over workers is the global batch's mean.
        cls_scale = 1.0
        if cfg.cls_reduction == "mean":
            cls_scale = 1.0 / (max(rows, 1.0) if isinstance(rows, float) else rows.clamp(min=1))
            cls_scale = cls_scale / len(self.labels.seen)
        kwargs = {**self.loss_kwargs, "cls_reduction": "sum", "weights": weights}
        terms, _ = seen_label_loss(
            model, images, self.all_emb, targets, self.seen_idx, alpha_w, beta_w * cls_scale,
            **kwargs,
        )  # fmt: skip
        cls = terms["cls"].detach().to(torch.float64) * cls_scale
        cls_share = 1 if cfg.cls_reduction == "sum" else ctx.world
        return StepResult(
            terms["loss"],
            {
                "clip": terms["clip"].detach().to(torch.float64) * share,
                "cls": cls / cls_share,
            },
        )

    def train_metrics(self, totals: dict[str, float], steps: int) -> dict[str, Any]:
        clip, cls = totals["clip"], totals["cls"]
        return {
            "train_loss": (self.cfg.alpha * clip + self.cfg.beta * cls) / steps,
            "train_clip": clip / steps,
            "train_cls": cls / steps,
        }

    def evaluate(self, model: torch.nn.Module, split: str, batches: Any) -> dict[str, Any]:
        ctx = self.ctx
        label_sets = [self.unseen_emb, self.all_emb]
        part = score_split(model, batches, label_sets, ctx.device, ctx.amp)
        merged = gather_to_rank0(part, ctx.rank, ctx.world)
        if merged is None:
            return {}
        ok = merged["valid"] > 0  # unreadable images are left out of the metrics
        metrics = zsl_gzsl_metrics(
            merged["scores0"][ok],
            merged["scores1"][ok],
            merged["targets"][ok],
            self.labels.unseen_idx,
            prefix=f"{split}_",
            map_protocol=self.cfg.map_protocol,
        )
        return {**metrics, f"{split}_skipped": int((~ok).sum())}

    def checkpoint_state(self) -> dict[str, Any]:
        return {"label_embeddings": self.embeddings}

    def write_checkpoint_files(
        self, folder: str, model: torch.nn.Module, epoch: int, metrics: dict[str, Any]
    ) -> None:
        """What :func:`load_clip_decoder` needs to rebuild the model, beside the state."""
        meta = {
            "method": ClipDecoderMethod.name,
            "model": dataclasses.asdict(self.cfg.model),
            "text_dim": int(self.embeddings.shape[1]),
            "clip": dataclasses.asdict(self.cfg.clip),
            "templates": list(self.payload["templates"]),
            "seen": list(self.labels.seen),
            "unseen": list(self.labels.unseen),
            "epoch": epoch,
            "metrics": metrics,
        }
        with open(os.path.join(folder, META_FILE), "w") as f:
            f.write(storage.dumps_json(meta, indent=1))


def load_clip_decoder(checkpoint_dir: str) -> tuple[Any, dict[str, Any], torch.Tensor]:
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
# The driver side
# --------------------------------------------------------------------------------------------


def templates_of(cfg: ClipDecoderTrainConfig) -> list[str]:
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

    templates = templates_of(cfg)
    key = json.dumps(
        {"clip": dataclasses.asdict(cfg.clip), "templates": templates, "labels": label_split.all},
        sort_keys=True,
    )
    cache = storage.join(cache_dir, EMBEDDINGS_FILE) if cache_dir else ""
    if cache and storage.exists(cache):
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
        buf = io.BytesIO()
        np.savez(buf, embeddings=emb, key=np.array(key))
        storage.write_bytes(cache, buf.getvalue())
    return emb


def metric_for(splits: dict[str, Any], label_split: LabelSplit) -> tuple[str, str]:
    """(metric, mode) ranking checkpoints: ``val_zsl_map`` when val has unseen positives,
    ``val_gzsl_map`` when it has only seen ones (NUS-WIDE's val comes from its train images),
    ``train_loss`` without val."""
    val = splits["val"]
    if val.has_positives(label_split.unseen_idx):
        return "val_zsl_map", "max"
    if val.has_positives(range(len(label_split.all))):
        return "val_gzsl_map", "max"
    return "train_loss", "min"


def final_test_metrics(
    history: list[dict[str, Any]], cfg: ClipDecoderTrainConfig, run: RunResult
) -> dict[str, Any]:
    """The last epoch's test-split ZSL / GZSL metrics, with where they come from.

    ``zsl_map`` / ``gzsl_map`` are taken under ``cfg.map_protocol``, named in ``map_protocol``;
    ``*_map_reference`` and ``*_map_skip_empty`` keep both.
    """
    last = history[-1]
    protocol = cfg.map_protocol
    if f"test_zsl_map_{protocol}" not in last:
        protocol = "skip_empty"  # a history recorded before both protocols were: its only mAP
    out: dict[str, Any] = {
        "split": "test",
        "epoch": last["epoch"],
        "epochs": cfg.run.epochs,
        "num_images": run.info["num_test"],
        "num_seen": run.info["num_seen"],
        "num_unseen": run.info["num_unseen"],
        "checkpoint": run.latest_checkpoint,
        "best_checkpoint": run.best_checkpoint,
        "checkpoint_metric": run.checkpoint_metric,
        "map_protocol": protocol,
        "note": "fractions in [0, 1] on the test split after the last epoch; zsl = unseen labels "
        "only, gzsl = all labels; map: "
        + (
            "AP averaged over every label, a label without positives counting 0 (reference)"
            if protocol == "reference"
            else "AP averaged over the labels with positives (skip_empty)"
        ),
    }
    for key, value in last.items():
        if key.startswith(("test_zsl_", "test_gzsl_")):
            out[key.removeprefix("test_")] = value
    for setting in ("zsl", "gzsl"):
        if f"{setting}_map_{protocol}" in out:
            out[f"{setting}_map"] = out[f"{setting}_map_{protocol}"]
    return out


class ClipDecoderMethod(Method, name="clip_decoder", config_class=ClipDecoderTrainConfig):
    """The driver side of CLIP-Decoder (see the module docstring)."""

    job = "train_clip_decoder"
    colour_key = "templates"

    def resolve_inputs(self, cfg: ClipDecoderTrainConfig) -> dict[str, str]:
        """The manifest and labels.json; with no manifest configured, the demo under the storage
        root (generated on first use, then reused)."""
        from core.train.multilabel_data import resolve_label_split_path

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
        return {"manifest": absolute_storage(manifest), "labels": absolute_storage(labels)}

    def checkpoint_metric(self, cfg: ClipDecoderTrainConfig) -> tuple[str, str]:
        from core.train.multilabel_data import load_multilabel_splits

        label_split, splits = load_multilabel_splits(cfg.manifest, cfg.labels)
        return metric_for(splits, label_split)

    def plan(self, cfg: ClipDecoderTrainConfig, run_dir: str) -> RunPlan:
        from core.train.deferred_transform import deferred_transforms
        from core.train.multilabel_data import (
            TransformMultiLabelImages,
            backbone_transforms,
            load_multilabel_splits,
        )

        label_split, splits = load_multilabel_splits(cfg.manifest, cfg.labels)
        if len(splits["test"]) == 0:
            raise ValueError(
                f"{cfg.manifest}: no rows with split 'test'; ZSL evaluation needs them"
            )
        if not splits["test"].has_positives(label_split.unseen_idx):
            log.warning("%s: no test image has an unseen label; ZSL mAP will be NaN", cfg.manifest)
        train_tf, eval_tf = deferred_transforms(
            backbone_transforms, cfg.model.backbone, cfg.model.image_size
        )
        embeddings = compute_label_embeddings(cfg, label_split, cache_dir=run_dir)
        metric, mode = metric_for(splits, label_split)
        log.info(
            "CLIP-Decoder: %d seen / %d unseen labels, %d train images",
            len(label_split.seen),
            len(label_split.unseen),
            len(splits["train"]),
        )
        return RunPlan(
            splits=splits,
            train_transform=train_tf,
            eval_transform=eval_tf,
            payload={
                "seen": list(label_split.seen),
                "unseen": list(label_split.unseen),
                "label_embeddings": embeddings,
                "templates": templates_of(cfg),
            },
            metric=metric,
            mode=mode,
            eval_splits=tuple(s for s in ("val", "test") if len(splits[s])),
            batch_class=TransformMultiLabelImages,
            info={
                "manifest": cfg.manifest,
                "labels": cfg.labels,
                "num_seen": len(label_split.seen),
                "num_unseen": len(label_split.unseen),
                "num_test": len(splits["test"]),
            },
        )

    def worker(
        self, cfg: ClipDecoderTrainConfig, payload: dict[str, Any], ctx: WorkerContext
    ) -> ClipDecoderWorker:
        return ClipDecoderWorker(cfg, payload, ctx)

    def finish(self, cfg: ClipDecoderTrainConfig, plan: RunPlan, result: RunResult) -> None:
        if not result.history:
            return
        result.final_metrics = final_test_metrics(result.history, cfg, result)
        result.final_metrics_path = storage.join(result.run_dir, FINAL_METRICS_FILE)
        storage.write_json(result.final_metrics_path, result.final_metrics)

    def check(self, ctx: Any, cfg: ClipDecoderTrainConfig) -> None:
        """TResNet + zero-shot ML-Decoder: label queries = labels x CLIP text width, the
        cached label embeddings, memory per worker for one step on the seen labels."""
        from core.check.training import check_clip_decoder

        check_clip_decoder(ctx, cfg, self.name)

    def load_checkpoint(self, path: str) -> Any:
        return load_clip_decoder(path)


METHOD = ClipDecoderMethod()


def train_clip_decoder(
    cfg: ClipDecoderTrainConfig, callbacks: list[Any] | None = None
) -> RunResult:
    """Train CLIP-Decoder on the seen labels with one TorchTrainer; evaluate ZSL / GZSL.

    Needs a running Ray (``ray_jobs.cli.init_ray``). The run lives in
    ``<storage>/runs/<name>``; calling it again with the same storage and name resumes it.
    """
    root = absolute_storage(storage.join(cfg.storage, "runs"))
    return fit(METHOD, cfg, root, cfg.name, callbacks=callbacks)
