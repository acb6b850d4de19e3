"""Contrastive image–text pretraining of an open_clip model (open_clip's own ``ClipLoss``).

Adapts CLIP to a domain from image–description pairs: a manifest with a text column (the demo
world's pool, or any dataset with descriptions), or the captions table the captioning job wrote
(joined to its manifest by id; one pair per caption). Each checkpoint holds ``clip.safetensors``,
the model's open_clip state dict, and the run ends by copying the best one to
``<run>/pretrained_clip.safetensors``: every job takes it as ``clip.pretrained=<path>``.

The loss is computed over the whole global batch whatever the worker count: features are
gathered with their gradients (``ClipLoss(gather_with_grad=True)``), so N workers train like one.
Texts are tokenized once on the driver (int32 rows beside the image paths in Ray's object store);
unreadable images' pairs are left out of the loss. Validation scores retrieval of held-out pairs:
image→text and text→image top-1 accuracy over the whole split (a hit is a row whose text is the
same string, so repeated descriptions are not counted as misses).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from core import storage
from core.config import ClipConfig, OptimConfig, RayConfig, TrainRunConfig
from core.config.loader import check
from core.train.image_data import TransformImages
from core.train.method import (
    Method,
    MethodWorker,
    RunPlan,
    StepResult,
    WorkerContext,
    existing_inputs,
)

log = logging.getLogger(__name__)

#: The file every job reads through ``clip.pretrained``: in each checkpoint, and the best one
#: copied to the run folder at the end.
CLIP_FILE = "clip.safetensors"
PRETRAINED_FILE = "pretrained_clip.safetensors"


@dataclass
class PretrainClipConfig:
    """``python -m ray_jobs.pretrain_clip``: CLIP's contrastive loss on image–text pairs."""

    storage: str = "outputs"
    name: str = "pretrain_clip"  # run folder: storage/runs/<name>
    manifest: str = ""  # "" → the demo world's pool under storage/world/pool (generated once)
    text_column: str = "description"  # the manifest's text column (when captions is "")
    captions: str = ""  # a captioning job's output folder/file: its captions are the texts
    clip: ClipConfig = field(default_factory=ClipConfig)  # the model, and where it starts from
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(encoder_lr=1e-3, head_lr=1e-3))
    run: TrainRunConfig = field(default_factory=lambda: TrainRunConfig(batch_size=128))
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self, key: str) -> None:
        check(bool(self.text_column), "text_column", "must name the manifest's text column")
        check(self.optim.encoder_lr > 0, "optim.encoder_lr", "must be > 0 (both towers train)")


@dataclass
class PairRows:
    """One split's image–text pairs: ids, paths, token rows and an id per distinct text."""

    ids: list[str]
    paths: list[str]
    tokens: np.ndarray  # int32 [n, context_length]
    text_ids: np.ndarray  # int64: equal for equal strings (retrieval counts them as hits)

    def __len__(self) -> int:
        return len(self.ids)

    def table(self) -> pa.Table:
        width = self.tokens.shape[1] if self.tokens.ndim == 2 else 0
        flat = pa.array(self.tokens.reshape(-1), pa.int32())
        return pa.table(
            {
                "id": self.ids,
                "path": self.paths,
                "tokens": pa.FixedSizeListArray.from_arrays(flat, width),
                "text_id": self.text_ids,
            }
        )


class TransformPairs(TransformImages):
    """Ray Data batch function: (row, epoch) → images, their tokens and text ids, ``valid``."""

    @classmethod
    def row_table(cls, rows: PairRows) -> pa.Table:
        return rows.table()

    def targets(self, taken: pa.Table) -> dict[str, np.ndarray]:
        tokens = taken.column("tokens").combine_chunks()
        width = tokens.type.list_size
        flat = tokens.flatten().to_numpy(zero_copy_only=False)
        return {
            "tokens": flat.astype(np.int64).reshape(len(tokens), width),
            "text_id": taken.column("text_id").to_numpy(),
        }


def read_pairs(cfg: PretrainClipConfig) -> pa.Table:
    """(id, path, split, text) rows of the configured source; bad input names the file."""
    from core.data.manifest import read_manifest

    manifest = read_manifest(cfg.manifest)
    if cfg.captions:
        return _caption_pairs(cfg.captions, manifest)
    if cfg.text_column not in manifest.column_names:
        raise ValueError(
            f"text_column: {cfg.manifest} has no column {cfg.text_column!r} "
            f"(columns: {', '.join(manifest.column_names)}); or set captions="
        )
    return pa.table(
        {
            "id": manifest.column("id"),
            "path": manifest.column("path"),
            "split": manifest.column("split"),
            "text": manifest.column(cfg.text_column).cast(pa.string()),
        }
    )


def _caption_pairs(captions: str, manifest: pa.Table) -> pa.Table:
    """One pair per successful caption, its image and split from the manifest (by id)."""
    table = storage.read_parquet(captions)
    missing = {"id", "caption"} - set(table.column_names)
    if missing:
        raise ValueError(f"captions: {captions} lacks columns {sorted(missing)}")
    if "error" in table.column_names:
        errors = table.column("error").to_pylist()
        table = table.filter(pa.array([not e for e in errors]))
    where = {i: k for k, i in enumerate(manifest.column("id").to_pylist())}
    ids = table.column("id").to_pylist()
    unknown = [i for i in ids if i not in where]
    if unknown:
        raise ValueError(f"captions: {captions}: ids not in the manifest, e.g. {unknown[:3]}")
    rows = [where[i] for i in ids]
    return pa.table(
        {
            "id": ids,
            "path": manifest.column("path").take(rows),
            "split": manifest.column("split").take(rows),
            "text": table.column("caption").cast(pa.string()),
        }
    )


def pairs_metric(pairs: pa.Table) -> tuple[str, str]:
    """Checkpoints ranked by held-out retrieval, or by the training loss without a val split."""
    has_val = "val" in pairs.column("split").to_pylist()
    return ("val_retrieval", "max") if has_val else ("train_loss", "min")


def pair_splits(pairs: pa.Table, tokenizer: Any) -> dict[str, PairRows]:
    """Train/val/test pairs, tokenized; a text without words or no training pair is an error."""
    texts = pairs.column("text").to_pylist()
    empty = [i for i, t in enumerate(texts) if not (t or "").strip()]
    if empty:
        raise ValueError(f"pair {pairs.column('id')[empty[0]]}: empty text ({len(empty)} in all)")
    text_ids = {t: k for k, t in enumerate(dict.fromkeys(texts))}
    split_of = np.asarray(pairs.column("split").to_pylist())
    width = int(tokenizer(["a"]).shape[1])
    out = {}
    for split in ("train", "val", "test"):
        index = np.flatnonzero(split_of == split)
        chosen = [texts[i] for i in index]
        tokens = tokenizer(chosen).numpy().astype(np.int32) if chosen else np.zeros((0, width))
        out[split] = PairRows(
            ids=[pairs.column("id")[int(i)].as_py() for i in index],
            paths=[pairs.column("path")[int(i)].as_py() for i in index],
            tokens=tokens,
            text_ids=np.asarray([text_ids[t] for t in chosen], dtype=np.int64),
        )
    if not len(out["train"]):
        raise ValueError("pretrain_clip: no pairs with split 'train'")
    return out


def _masked_ce(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the kept rows over the kept columns: a pair whose image could not be
    read takes part in no row and no column. With every pair kept it is exactly ClipLoss's
    term. Shapes stay fixed (no boolean indexing), so nothing waits for the device."""
    masked = logits.float().masked_fill(~keep[None, :], float("-inf"))
    masked = torch.where(keep[:, None], masked, torch.zeros_like(masked))
    per_row = F.cross_entropy(masked, labels, reduction="none") * keep
    return per_row.sum() / keep.sum().clamp(min=1)


class PretrainClipWorker(MethodWorker):
    """The CLIP model and open_clip's contrastive loss over the global batch."""

    def __init__(self, cfg: PretrainClipConfig, payload: dict[str, Any], ctx: WorkerContext):
        import open_clip

        from core.models.open_clip_models import build_clip

        self.cfg, self.ctx = cfg, ctx
        self.model = build_clip(cfg.clip.model_name, cfg.clip.pretrained, cfg.clip.seed).model
        self.loss = open_clip.ClipLoss(
            gather_with_grad=ctx.world > 1, rank=ctx.rank, world_size=ctx.world
        )

    def param_groups(self, model: torch.nn.Module) -> tuple[Any, Any]:
        """Both towers at ``optim.encoder_lr``; the temperature at ``optim.head_lr``."""
        towers = [p for name, p in model.named_parameters() if name != "logit_scale"]
        return towers, [model.logit_scale]

    def step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> StepResult:
        device = self.ctx.device
        images = batch["image"].to(device, non_blocking=True)
        tokens = batch["tokens"].to(device, non_blocking=True)
        image_features, text_features, logit_scale = model(images, tokens)[:3]
        per_image, per_text = self.loss.get_logits(image_features, text_features, logit_scale)
        keep = self._global_valid(batch).bool()
        labels = torch.arange(per_image.shape[0], device=device)
        loss = (_masked_ce(per_image, labels, keep) + _masked_ce(per_text, labels, keep)) / 2
        # Every worker computes the same global loss: each contributes its 1/world share.
        share = loss.detach().to(torch.float64) / self.ctx.world
        scale = logit_scale.detach().to(torch.float64) / self.ctx.world
        return StepResult(loss, {"loss": share, "logit_scale": scale})

    def _global_valid(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``valid`` of the whole global batch, in the order ``ClipLoss`` gathers features."""
        device = self.ctx.device
        local = batch["valid"].to(device) if "valid" in batch else None
        if local is None:
            local = torch.ones(batch["image"].shape[0], dtype=torch.uint8, device=device)
        if self.ctx.world == 1:
            return local
        import torch.distributed as dist

        parts = [torch.empty_like(local) for _ in range(self.ctx.world)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    def train_metrics(self, totals: dict[str, float], steps: int) -> dict[str, Any]:
        return {
            "train_loss": totals["loss"] / max(steps, 1),
            "logit_scale": totals["logit_scale"] / max(steps, 1),
        }

    def evaluate(self, model: torch.nn.Module, split: str, batches: Any) -> dict[str, Any]:
        from core.train.loop_parts import autocast

        parts: dict[str, list[torch.Tensor]] = {"image": [], "text": [], "text_id": []}
        model.eval()
        with torch.no_grad():
            for batch in batches:
                keep = batch["valid"].bool() if "valid" in batch else slice(None)
                images = batch["image"][keep].to(self.ctx.device, non_blocking=True)
                tokens = batch["tokens"][keep].to(self.ctx.device, non_blocking=True)
                with autocast(self.ctx.device, self.ctx.amp):
                    parts["image"].append(model.encode_image(images, normalize=True).float())
                    parts["text"].append(model.encode_text(tokens, normalize=True).float())
                parts["text_id"].append(batch["text_id"][keep].to(self.ctx.device))
        image, text, text_id = (self._gathered(parts[k]) for k in ("image", "text", "text_id"))
        if not len(text_id):
            return {f"{split}_i2t": float("nan"), f"{split}_t2i": float("nan")}
        similarity = image @ text.T
        i2t = (text_id[similarity.argmax(1)] == text_id).double().mean()
        t2i = (text_id[similarity.argmax(0)] == text_id).double().mean()
        out = {f"{split}_i2t": float(i2t), f"{split}_t2i": float(t2i)}
        out[f"{split}_retrieval"] = (out[f"{split}_i2t"] + out[f"{split}_t2i"]) / 2
        out[f"{split}_pairs"] = len(text_id)
        return out

    def _gathered(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """This worker's rows of a split joined with every other worker's (rank order)."""
        local = torch.cat(pieces) if pieces else torch.zeros(0, device=self.ctx.device)
        if self.ctx.world == 1:
            return local
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.ctx.world
        dist.all_gather_object(gathered, local.cpu())
        joined = [g for g in gathered if g.numel()]
        return torch.cat(joined).to(self.ctx.device) if joined else local

    def write_checkpoint_files(
        self, folder: str, model: torch.nn.Module, epoch: int, metrics: dict[str, Any]
    ) -> None:
        import os
        from dataclasses import asdict

        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(folder, CLIP_FILE))
        meta = {"method": PretrainClipMethod.name, "clip": asdict(self.cfg.clip), "epoch": epoch}
        storage.write_json(os.path.join(folder, "meta.json"), {**meta, "metrics": metrics})


class PretrainClipMethod(Method, name="pretrain_clip", config_class=PretrainClipConfig):
    job = "pretrain_clip"

    def resolve_inputs(self, cfg: PretrainClipConfig) -> dict[str, str]:
        manifest = cfg.manifest or demo_pool(cfg.storage)
        return existing_inputs(
            {"manifest": manifest, **({"captions": cfg.captions} if cfg.captions else {})}
        )

    def checkpoint_metric(self, cfg: PretrainClipConfig) -> tuple[str, str]:
        return pairs_metric(read_pairs(cfg))

    def plan(self, cfg: PretrainClipConfig, run_dir: str) -> RunPlan:
        import open_clip

        from core.models.open_clip_models import build_transforms, register_tiny_configs
        from core.train.deferred_transform import deferred_transforms

        register_tiny_configs()
        pairs = read_pairs(cfg)
        splits = pair_splits(pairs, open_clip.get_tokenizer(cfg.clip.model_name))
        train_tf, eval_tf = deferred_transforms(
            build_transforms, cfg.clip.model_name, cfg.clip.pretrained
        )
        metric, mode = pairs_metric(pairs)
        info = {s: len(rows) for s, rows in splits.items()}
        return RunPlan(
            splits, train_tf, eval_tf, {}, metric, mode, batch_class=TransformPairs, info=info
        )

    def worker(
        self, cfg: PretrainClipConfig, payload: dict[str, Any], ctx: WorkerContext
    ) -> PretrainClipWorker:
        return PretrainClipWorker(cfg, payload, ctx)

    def finish(self, cfg: PretrainClipConfig, plan: RunPlan, result: Any) -> None:
        """Copy the best checkpoint's weights to ``<run>/pretrained_clip.safetensors``."""
        best = result.best_checkpoint or result.latest_checkpoint
        if not best:
            return
        target = storage.join(result.run_dir, PRETRAINED_FILE)
        storage.write_bytes(target, storage.read_bytes(storage.join(best, CLIP_FILE)))
        result.final_metrics = {"clip_pretrained": target, "from_checkpoint": best}
        log.info("pretrained CLIP: clip.pretrained=%s (from %s)", target, best)

    def check(self, ctx: Any, cfg: PretrainClipConfig) -> None:
        """The pairs (read as the run reads them, so a bad manifest, captions table or text
        column fails before Ray starts), the starting weights when named, and one worker's
        memory for a contrastive step of both towers at the configured batch."""
        from core.check.training import check_contrastive

        if cfg.manifest and storage.exists(cfg.manifest):
            pairs = read_pairs(cfg)
            ctx.report.note(f"pairs: {len(pairs)} image-text pairs from {cfg.manifest}")
        check_contrastive(ctx, cfg, self.name)

    def load_checkpoint(self, path: str) -> Any:
        """The open_clip model of a checkpoint folder (or of a ``.safetensors`` file)."""
        import json

        from core.models.open_clip_models import build_clip

        weights = path if path.endswith(".safetensors") else storage.join(path, CLIP_FILE)
        folder = path.rsplit("/", 1)[0] if path.endswith(".safetensors") else path
        meta_path = storage.join(folder, "meta.json")
        name = "tiny-vit"
        if storage.exists(meta_path):
            name = json.loads(storage.read_bytes(meta_path))["clip"]["model_name"]
        return build_clip(name, weights).model


def demo_pool(root: str) -> str:
    """The demo world's pretraining pool under ``root/world/pool``, generated once."""
    from core.data.demo_world import generate_pool

    manifest = storage.join(root, "world", "pool", "manifest.parquet")
    if not storage.exists(manifest):
        log.info("no manifest given: generating the demo world's pretraining pool")
        generate_pool(storage.join(root, "world", "pool"))
    return manifest


METHOD = PretrainClipMethod()
