"""Mean semantic class descriptions: C[c] = mean CLIP text embedding of class c's captions.

The captions of the selected splits go through a frozen CLIP text encoder on a Ray Data actor
pool. Each actor returns only per-(prompt, label) sums and counts, which the driver adds up in
float64, so no stage ever holds every embedding at once.

File format (one safetensors file; the training job reads it through ``load_class_means``):

- ``class_means`` [C, D] float32: means over all captions (every prompt); ``counts`` [C] int64.
- With two or more distinct prompts, for prompt index k: ``class_means.prompt.{k}`` and
  ``counts.prompt.{k}``.
- Metadata: ``classes`` (JSON list, sorted unique labels of the whole manifest, so every job sees
  the same class order), ``prompts`` (JSON list, index k), ``normalize`` ("true"/"false"),
  ``clip_model``, ``clip_pretrained``, ``embed_dim``.

A JSON summary (captions per class and per prompt, skipped captions, time) sits beside it, at the
same path with ``.json`` in place of ``.safetensors``.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from core import storage
from core.captioning.stage import plan_block_rows, read_captions
from core.config import ClassMeansJobConfig, ClipConfig, to_dict
from core.data.manifest import read_manifest
from core.text.encode import ClassSumsMapper

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
MEANS_KEY = "class_means"
COUNTS_KEY = "counts"
PROGRESS_SECONDS = 10.0
_BATCHES_PER_BLOCK = 4


@dataclass
class ClassMeans:
    """Class means as loaded for training: ``means[i]`` belongs to ``classes[i]``.

    ``prompt`` is "" for the means over every caption, else the prompt these means are for;
    ``prompts`` lists every prompt the file was computed from. Without ``normalize`` (the
    default) the means average raw CLIP text embeddings, at the scale of the classifier's raw
    image embedding ``x``. With ``normalize`` the captions' embeddings were L2-normalised before
    averaging; the means themselves are not renormalised, so their norms are at most 1 and shrink
    as a class's descriptions disagree: pair them with a unit-norm ``x``.
    """

    classes: list[str]
    means: torch.Tensor
    counts: list[int]
    prompt: str = ""
    prompts: list[str] = field(default_factory=list)
    normalize: bool = False
    clip_model: str = ""
    clip_pretrained: str = ""


@dataclass
class ClassMeansResult:
    """What one run wrote and counted (``as_dict`` is the JSON summary)."""

    output: str
    summary_path: str
    manifest: str
    captions: str
    splits: list[str]
    classes: list[str]
    prompts: list[str]
    normalize: bool
    clip_model: str
    clip_pretrained: str
    embed_dim: int
    captions_per_class: dict[str, int]
    captions_per_class_per_prompt: dict[str, dict[str, int]]
    captions_used: int
    captions_skipped: int
    skipped_by_reason: dict[str, int]
    seconds: float
    means: ClassMeans | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("means")
        return out


# --------------------------------------------------------------------------------------------
# File format
# --------------------------------------------------------------------------------------------


def summary_path_for(path: str) -> str:
    """The JSON summary's path: ``x.safetensors`` → ``x.json``."""
    if not str(path).endswith(SUFFIX):
        raise ValueError(f"output: {path!r} must end with {SUFFIX}")
    return str(path)[: -len(SUFFIX)] + ".json"


def _counts_tensor(counts: Sequence[int]) -> torch.Tensor:
    return torch.tensor([int(c) for c in counts], dtype=torch.int64)


def save_class_means(
    path: str,
    means: ClassMeans,
    per_prompt: Sequence[ClassMeans] = (),
) -> None:
    """Write ``means`` (all captions) and, with two or more prompts, ``per_prompt[k]`` for
    ``means.prompts[k]`` as one safetensors file, through ``core.storage`` (local or URI)."""
    summary_path_for(path)  # checks the suffix
    n_classes = len(means.classes)
    if means.means.ndim != 2 or means.means.shape[0] != n_classes:
        raise ValueError(
            f"class means: expected shape [{n_classes}, D], got {list(means.means.shape)}"
        )
    if len(means.counts) != n_classes:
        raise ValueError(f"counts: expected {n_classes} values, got {len(means.counts)}")
    if len(means.prompts) >= 2 and len(per_prompt) != len(means.prompts):
        raise ValueError(
            f"per_prompt: expected one entry per prompt ({len(means.prompts)}), "
            f"got {len(per_prompt)}"
        )
    if len(means.prompts) < 2 and per_prompt:
        raise ValueError("per_prompt: only written when there are two or more prompts")
    tensors = {
        MEANS_KEY: means.means.detach().to(torch.float32).contiguous().cpu(),
        COUNTS_KEY: _counts_tensor(means.counts),
    }
    for k, item in enumerate(per_prompt):
        if item.classes != means.classes or item.means.shape != means.means.shape:
            raise ValueError(f"per_prompt[{k}]: classes or shape differ from the overall means")
        tensors[f"{MEANS_KEY}.prompt.{k}"] = item.means.detach().to(torch.float32).contiguous()
        tensors[f"{COUNTS_KEY}.prompt.{k}"] = _counts_tensor(item.counts)
    metadata = {
        "classes": json.dumps(list(means.classes)),
        "prompts": json.dumps(list(means.prompts)),
        "normalize": "true" if means.normalize else "false",
        "clip_model": means.clip_model,
        "clip_pretrained": means.clip_pretrained,
        "embed_dim": str(int(means.means.shape[1])),
    }
    storage.write_bytes(path, st_save(tensors, metadata=metadata))


def _read_metadata(data: bytes, path: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors buffer: an 8-byte length, then a JSON header."""
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
    (size,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a safetensors file ({exc})") from None
    return header.get("__metadata__") or {}


def load_class_means(path: str, prompt: str = "") -> ClassMeans:
    """Load the means over all captions (``prompt=""``) or those of one prompt.

    A file computed from a single prompt stores only the overall means, which are that prompt's.
    """
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no such class-means file")
    data = storage.read_bytes(path)
    metadata = _read_metadata(data, path)
    tensors = st_load(data)
    for key in (MEANS_KEY, COUNTS_KEY):
        if key not in tensors:
            raise ValueError(f"{path}: no tensor {key!r}; is this a class-means file?")
    for key in ("classes", "prompts"):
        if key not in metadata:
            raise ValueError(f"{path}: metadata has no {key!r}; is this a class-means file?")
    classes = json.loads(metadata["classes"])
    prompts = json.loads(metadata["prompts"])
    means_key, counts_key = MEANS_KEY, COUNTS_KEY
    if prompt:
        if prompt not in prompts:
            raise ValueError(
                f"{path}: no class means for prompt {prompt!r}; "
                f"available prompts: {json.dumps(prompts)} (or '' for all captions)"
            )
        if len(prompts) >= 2:
            k = prompts.index(prompt)
            means_key, counts_key = f"{MEANS_KEY}.prompt.{k}", f"{COUNTS_KEY}.prompt.{k}"
            if means_key not in tensors or counts_key not in tensors:
                raise ValueError(f"{path}: prompt {prompt!r} is listed but {means_key} is missing")
    means = tensors[means_key].to(torch.float32)
    if means.shape[0] != len(classes):
        raise ValueError(
            f"{path}: {means_key} has {means.shape[0]} rows but {len(classes)} classes"
        )
    return ClassMeans(
        classes=classes,
        means=means,
        counts=[int(c) for c in tensors[counts_key].tolist()],
        prompt=prompt,
        prompts=prompts,
        normalize=metadata.get("normalize", "true") == "true",
        clip_model=metadata.get("clip_model", ""),
        clip_pretrained=metadata.get("clip_pretrained", ""),
    )


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """The captions to encode and everything decided before any encoding starts."""

    table: pa.Table  # label, prompt, caption
    classes: list[str]
    prompts: list[str]
    total_rows: int
    skipped_by_reason: dict[str, int]


def _plan(cfg: ClassMeansJobConfig, captions_path: str, manifest_path: str) -> _Plan:
    """Read and filter the captions; every check that can stop the job happens here."""
    for path, what in ((manifest_path, "manifest"), (captions_path, "captions")):
        if not storage.exists(path):
            hint = "run python -m ray_jobs.caption first" if what == "captions" else "set manifest="
            raise FileNotFoundError(f"{path}: no such {what} file or folder ({hint})")
    full = read_manifest(manifest_path)
    if "label" not in full.column_names:
        raise ValueError(
            f"{manifest_path}: class means need a single-label manifest (a 'label' column); "
            f"columns are {', '.join(full.column_names)}"
        )
    manifest_labels = full.column("label").cast(pa.string()).to_pylist()
    classes = sorted({str(v) for v in manifest_labels if v is not None})
    if not classes:
        raise ValueError(f"{manifest_path}: the manifest has no labelled rows")
    selected = read_manifest(manifest_path, cfg.splits)
    label_of = dict(
        zip(
            selected.column("id").to_pylist(),
            selected.column("label").cast(pa.string()).to_pylist(),
            strict=True,
        )
    )

    rows = read_captions(captions_path, keep_errors=True)
    for name in ("id", "label", "prompt", "caption", "error"):
        if name not in rows.column_names:
            raise ValueError(
                f"{captions_path}: captions have no column {name!r}; "
                f"columns are {', '.join(rows.column_names)}"
            )
    total = rows.num_rows
    is_error = pc.not_equal(pc.fill_null(rows.column("error"), ""), "")
    rows = rows.filter(pc.invert(is_error))
    n_error = total - rows.num_rows
    in_splits = pc.is_in(rows.column("id"), pa.array(list(label_of), pa.string()))
    before = rows.num_rows
    rows = rows.filter(in_splits)
    n_outside = before - rows.num_rows
    is_blank = pc.equal(pc.utf8_trim_whitespace(pc.fill_null(rows.column("caption"), "")), "")
    before = rows.num_rows
    rows = rows.filter(pc.invert(is_blank))
    n_blank = before - rows.num_rows

    ids = rows.column("id").to_pylist()
    labels = [str(v) for v in pc.fill_null(rows.column("label"), "").to_pylist()]
    known = set(classes)
    unknown = sorted(set(labels) - known)
    if unknown:
        example = next(i for i, lab in zip(ids, labels, strict=True) if lab not in known)
        raise ValueError(
            f"{captions_path}: caption labels not among the manifest's classes: {unknown[:20]} "
            f"(e.g. caption id {example!r}); classes are {classes[:20]}"
            f"{' ...' if len(classes) > 20 else ''} from {manifest_path}"
        )
    stale = [(i, lab) for i, lab in zip(ids, labels, strict=True) if label_of[i] != lab]
    if stale:
        i, lab = stale[0]
        raise ValueError(
            f"{captions_path}: {len(stale)} captions disagree with {manifest_path} on the label "
            f"(e.g. id {i!r}: caption says {lab!r}, manifest says {label_of[i]!r}); "
            "caption the dataset again into a fresh folder"
        )
    missing = sorted(known - set(labels))
    if missing:
        raise ValueError(
            f"{captions_path}: no usable captions for classes {missing} (manifest {manifest_path}, "
            f"splits {cfg.splits or 'all'}; {len(ids)} of {total} caption rows usable); every "
            "class needs at least one caption of the selected splits"
        )
    prompt_list = [str(v) for v in pc.fill_null(rows.column("prompt"), "").to_pylist()]
    prompts = sorted(set(prompt_list))
    if len(prompts) >= 2:  # each prompt gets its own means, so each must cover every class
        pairs = set(zip(prompt_list, labels, strict=True))
        for p in prompts:
            empty = [c for c in classes if (p, c) not in pairs]
            if empty:
                raise ValueError(
                    f"{captions_path}: prompt {p!r} has no usable captions for classes {empty}; "
                    "its per-prompt means would be undefined (caption them with this prompt, "
                    "or keep one prompt)"
                )
    table = pa.table(
        {
            "label": pa.array(labels, pa.string()),
            "prompt": pa.array(prompt_list, pa.string()),
            "caption": rows.column("caption").cast(pa.string()),
        }
    )
    skipped = {"error": n_error, "outside_splits": n_outside, "blank": n_blank}
    return _Plan(table, classes, prompts, total, skipped)


def _encode_sums(
    cfg: ClassMeansJobConfig, plan: _Plan
) -> tuple[dict[tuple[str, str], np.ndarray], dict[tuple[str, str], int], int]:
    """Run the encoder actor pool and add up its partial sums per (prompt, label) in float64."""
    import ray.data

    n = plan.table.num_rows
    block_rows = plan_block_rows(n, cfg.batch_size, _BATCHES_PER_BLOCK, cfg.num_actors)
    blocks = [plan.table.slice(i, block_rows) for i in range(0, n, block_rows)]
    ds = ray.data.from_arrow(blocks).map_batches(
        ClassSumsMapper,
        fn_constructor_kwargs={
            "clip": to_dict(cfg.clip),
            "normalize": cfg.normalize,
            "classes": plan.classes,
        },
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.num_actors, initial_size=1),
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        num_gpus=cfg.num_gpus,
    )
    sums: dict[tuple[str, str], np.ndarray] = {}
    counts: dict[tuple[str, str], int] = {}
    encoded, embed_dim = 0, 0
    start = last_log = time.monotonic()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        if not batch.num_rows:
            continue
        column = batch.column("sum").combine_chunks()
        embed_dim = column.type.list_size
        values = column.flatten().to_numpy().reshape(-1, embed_dim)
        prompts = batch.column("prompt").to_pylist()
        labels = batch.column("label").to_pylist()
        for j, (key, count) in enumerate(
            zip(zip(prompts, labels, strict=True), batch.column("count").to_pylist(), strict=True)
        ):
            if key in sums:
                sums[key] += values[j]
            else:
                sums[key] = values[j].astype(np.float64, copy=True)
            counts[key] = counts.get(key, 0) + int(count)
            encoded += int(count)
        now = time.monotonic()
        if now - last_log >= PROGRESS_SECONDS:
            log.info(
                "encoded %d/%d captions (%.1f captions/s)", encoded, n, encoded / (now - start)
            )
            last_log = now
    log.info("encoded %d/%d captions in %.1f s", encoded, n, time.monotonic() - start)
    if encoded != n:
        raise RuntimeError(f"encoder pool returned sums for {encoded} captions, expected {n}")
    return sums, counts, embed_dim


def _means_for(
    classes: list[str],
    sums: dict[tuple[str, str], np.ndarray],
    counts: dict[tuple[str, str], int],
    prompts: Sequence[str],
    embed_dim: int,
) -> tuple[torch.Tensor, list[int]]:
    """Means over the given prompts' captions, one row per class in ``classes`` order."""
    total = np.zeros((len(classes), embed_dim), dtype=np.float64)
    n = np.zeros(len(classes), dtype=np.int64)
    for i, label in enumerate(classes):
        for p in prompts:
            if (p, label) in sums:
                total[i] += sums[(p, label)]
                n[i] += counts[(p, label)]
    means = total / np.maximum(n, 1)[:, None]
    return torch.from_numpy(means.astype(np.float32)), [int(v) for v in n]


def compute_class_means(cfg: ClassMeansJobConfig) -> ClassMeansResult:
    """Compute, check and write the class means for ``cfg`` on the current Ray instance.

    By default the raw caption embeddings are averaged (the paper's C_c, at the scale of the raw
    image embedding the regularizer pulls toward it). With ``cfg.normalize`` every caption
    embedding is L2-normalised before averaging; the means are not renormalised afterwards (the
    regularizer pulls toward the mean itself). Nothing is written unless every class of the
    manifest has captions.
    """
    start = time.monotonic()
    captions_path = cfg.captions or storage.join(cfg.storage, "captions")
    manifest_path = cfg.manifest or storage.join(cfg.storage, "demo", "manifest.parquet")
    output = cfg.output or storage.join(cfg.storage, "class_means" + SUFFIX)
    summary_path = summary_path_for(output)
    plan = _plan(cfg, captions_path, manifest_path)
    log.info(
        "class means: %d captions, %d classes, %d prompt(s), normalize=%s, clip %s",
        plan.table.num_rows,
        len(plan.classes),
        len(plan.prompts),
        cfg.normalize,
        cfg.clip.model_name,
    )
    sums, counts, embed_dim = _encode_sums(cfg, plan)

    per_prompt: list[ClassMeans] = []
    per_prompt_counts: dict[str, dict[str, int]] = {}
    for p in plan.prompts:
        means, n = _means_for(plan.classes, sums, counts, [p], embed_dim)
        per_prompt_counts[p] = dict(zip(plan.classes, n, strict=True))
        per_prompt.append(_class_means(cfg, plan, means, n, p))
    if len(plan.prompts) < 2:
        per_prompt = []  # the file keeps per-prompt tensors only when they differ from the total
    means, n = _means_for(plan.classes, sums, counts, plan.prompts, embed_dim)
    overall = _class_means(cfg, plan, means, n, "")

    save_class_means(output, overall, per_prompt)
    skipped = sum(plan.skipped_by_reason.values())
    result = ClassMeansResult(
        output=output,
        summary_path=summary_path,
        manifest=manifest_path,
        captions=captions_path,
        splits=list(cfg.splits),
        classes=plan.classes,
        prompts=plan.prompts,
        normalize=cfg.normalize,
        clip_model=cfg.clip.model_name,
        clip_pretrained=cfg.clip.pretrained,
        embed_dim=embed_dim,
        captions_per_class=dict(zip(plan.classes, n, strict=True)),
        captions_per_class_per_prompt=per_prompt_counts,
        captions_used=plan.table.num_rows,
        captions_skipped=skipped,
        skipped_by_reason=plan.skipped_by_reason,
        seconds=round(time.monotonic() - start, 3),
        means=overall,
    )
    storage.write_json(summary_path, result.as_dict())
    return result


def _class_means(
    cfg: ClassMeansJobConfig, plan: _Plan, means: torch.Tensor, counts: list[int], prompt: str
) -> ClassMeans:
    clip: ClipConfig = cfg.clip
    return ClassMeans(
        classes=list(plan.classes),
        means=means,
        counts=counts,
        prompt=prompt,
        prompts=list(plan.prompts),
        normalize=cfg.normalize,
        clip_model=clip.model_name,
        clip_pretrained=clip.pretrained,
    )
