"""Batch prediction with a trained classifier: a Ray Data actor pool, like captioning.

Each actor loads the checkpoint once; a batch of manifest rows becomes rows of
(id, label, predicted, top-k classes and probabilities, error). An unreadable image becomes a row
with the error instead of failing the job. Accuracy, overall and per class, is computed from the
written rows.
"""

from __future__ import annotations

import logging
import pickle
import posixpath
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch
from PIL import Image

from core import storage
from core.config import PredictJobConfig
from core.data.images import ImageLoadError, load_image
from core.data.manifest import read_manifest
from core.models.clip_classifier import META_FILE, CheckpointError, read_meta
from core.train.registry import get_method

log = logging.getLogger(__name__)

PREDICTION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("label", pa.string()),
        ("predicted", pa.string()),
        ("top_classes", pa.list_(pa.string())),
        ("top_probs", pa.list_(pa.float32())),
        ("error", pa.string()),
    ]
)


class Predictor:
    """Callable class for ``map_batches``: loads the classifier once, predicts per batch."""

    def __init__(self, checkpoint: str, top_k: int = 5, device: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.meta, self.transform = load_classifier_checkpoint(checkpoint)
        self.model.to(self.device)
        self.classes: list[str] = self.meta["classes"]
        self.top_k = min(top_k, len(self.classes))

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        ids = [str(v) for v in batch["id"]]
        labels = [str(v) for v in batch["label"]]
        tensors, ok, errors = [], [], [""] * len(ids)
        for i, path in enumerate(batch["path"]):
            try:
                tensors.append(self.transform(Image.fromarray(load_image(str(path)))))
                ok.append(i)
            except ImageLoadError as exc:
                errors[i] = str(exc)
        predicted = [""] * len(ids)
        top_classes: list[list[str]] = [[] for _ in ids]
        top_probs: list[list[float]] = [[] for _ in ids]
        if tensors:
            with torch.no_grad():
                logits, _ = self.model(torch.stack(tensors).to(self.device))
                probs, index = logits.float().softmax(dim=1).topk(self.top_k, dim=1)
            for row, p, k in zip(ok, probs.cpu().tolist(), index.cpu().tolist(), strict=True):
                top_classes[row] = [self.classes[j] for j in k]
                top_probs[row] = p
                predicted[row] = top_classes[row][0]
        return pa.table(
            {
                "id": ids,
                "label": labels,
                "predicted": predicted,
                "top_classes": top_classes,
                "top_probs": top_probs,
                "error": errors,
            },
            schema=PREDICTION_SCHEMA,
        )


@dataclass
class PredictionSummary:
    checkpoint: str
    manifest: str
    output: str
    accuracy_path: str
    images: int
    failed: int
    accuracy: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def accuracy_report(table: pa.Table) -> dict[str, Any]:
    """Overall and per-class accuracy over rows without errors."""
    rows = [r for r in table.to_pylist() if not r["error"]]
    per_class_total = Counter(r["label"] for r in rows)
    per_class_correct = Counter(r["label"] for r in rows if r["predicted"] == r["label"])
    correct = sum(per_class_correct.values())
    return {
        "images": len(rows),
        "failed": table.num_rows - len(rows),
        "accuracy": correct / len(rows) if rows else float("nan"),
        "per_class": {
            c: {"images": n, "accuracy": per_class_correct[c] / n}
            for c, n in sorted(per_class_total.items())
        },
    }


def load_classifier_checkpoint(checkpoint: str) -> tuple[Any, dict[str, Any], Any]:
    """(model, meta, eval transform) of a classifier checkpoint, loaded by the method that
    wrote it (``meta.json`` names it; checkpoints without the name are the regularized
    method's). Any problem is one error line naming the file."""
    meta = read_meta(checkpoint)
    meta_path = storage.join(checkpoint, META_FILE)
    name = meta.get("method", "regularized")
    try:
        method = get_method(str(name))
    except ValueError as exc:
        raise CheckpointError(f"{meta_path}: 'method': {exc}") from None
    try:
        loaded = method.load_checkpoint(checkpoint)
    except (CheckpointError, FileNotFoundError):
        raise
    except (
        pickle.UnpicklingError,
        RuntimeError,
        ValueError,
        KeyError,
        TypeError,
        OSError,
        EOFError,
    ) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"{checkpoint}: cannot load the {name} checkpoint ({reason})"
        ) from exc
    if not (
        isinstance(loaded, tuple)
        and len(loaded) == 3
        and callable(loaded[2])
        and isinstance(meta.get("classes"), list)
    ):
        raise CheckpointError(
            f"{checkpoint}: a {name} checkpoint, not a single-label classifier's (prediction "
            "needs one with 'classes' in its meta.json)"
        )
    return loaded


def check_checkpoint(checkpoint: str) -> dict[str, Any]:
    """Open the checkpoint on the driver, before any actor starts: a bad one is then one line
    naming the file, not a traceback from every actor of the pool. Returns its meta data."""
    _, meta, _ = load_classifier_checkpoint(checkpoint)
    return meta


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder, or a run folder whose newest ``checkpoint_*`` folder is taken."""
    if storage.exists(storage.join(path, META_FILE)):
        return path
    fs, inner = storage.resolve(path)
    names = []
    if fs.get_file_info(inner).type == pafs.FileType.Directory:
        names = sorted(
            item.base_name
            for item in fs.get_file_info(pafs.FileSelector(inner))
            if item.type == pafs.FileType.Directory and item.base_name.startswith("checkpoint_")
        )
    if not names:
        raise FileNotFoundError(
            f"checkpoint: {path}: neither a classifier checkpoint folder (no meta.json) nor a run "
            "folder with checkpoint_* folders"
        )
    return storage.join(path, names[-1])


def run_prediction(cfg: PredictJobConfig) -> PredictionSummary:
    """Predict every manifest row of the configured splits; write Parquet and accuracy JSON."""
    import ray.data

    start = time.monotonic()
    manifest_path = cfg.manifest or storage.join(cfg.storage, "demo", "manifest.parquet")
    checkpoint = resolve_checkpoint(cfg.checkpoint)
    check_checkpoint(checkpoint)
    manifest = read_manifest(manifest_path, cfg.splits)
    if "label" not in manifest.column_names:
        raise ValueError(f"{manifest_path}: prediction needs a single-label 'label' column")
    if manifest.num_rows == 0:
        raise ValueError(
            f"{manifest_path}: no rows in split(s) {', '.join(cfg.splits) or '(all)'}; "
            "nothing to predict (choose 'splits' the manifest has)"
        )
    run_dir = posixpath.dirname(checkpoint.rstrip("/"))
    output = cfg.output or storage.join(run_dir, "predictions")
    table = manifest.select(["id", "path", "label"])
    rows_per_block = max(1, min(cfg.batch_size * 4, -(-table.num_rows // (2 * cfg.num_actors))))
    blocks = [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)]
    log.info("predicting %d images with %s", table.num_rows, checkpoint)
    ds = ray.data.from_arrow(blocks or [table]).map_batches(
        Predictor,
        fn_constructor_kwargs={"checkpoint": checkpoint, "top_k": cfg.top_k},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.num_actors),
        batch_size=cfg.batch_size,
        batch_format="numpy",
        num_gpus=cfg.num_gpus,
    )
    parts = list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    result = pa.concat_tables(parts) if parts else PREDICTION_SCHEMA.empty_table()
    predictions_path = storage.join(output, "predictions.parquet")
    storage.write_parquet(result, predictions_path)
    report = accuracy_report(result)
    accuracy_path = storage.join(output, "accuracy.json")
    storage.write_json(accuracy_path, {"checkpoint": checkpoint, **report})
    return PredictionSummary(
        checkpoint=checkpoint,
        manifest=manifest_path,
        output=predictions_path,
        accuracy_path=accuracy_path,
        images=report["images"],
        failed=report["failed"],
        accuracy=report["accuracy"],
        seconds=round(time.monotonic() - start, 2),
    )
