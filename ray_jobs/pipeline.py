"""One command from a folder of images to a trained, evaluated model and its report.

    python -m ray_jobs.pipeline --config ray_jobs/configs/pipeline_folder.yaml \\
        root=/data/flowers storage=outputs/flowers

Stages, in order: manifest → captions → class_means → training (baseline and regularized, same
seed and data order) → predict (the test split, with both) → report (``<storage>/report``).

Every stage resumes. ``<storage>/pipeline_state.json`` records each finished stage with a key
of its settings (chained through the stages before it); a rerun skips a stage whose key and
outputs are unchanged, and runs a stage whose settings changed, and every later stage. A stage
that was interrupted resumes through its own mechanism: captions skip the ids already written,
training continues from its last checkpoint, and a training run whose ``metrics.jsonl`` already
has every epoch (and whose last checkpoint exists) is not fitted again. Outputs that would mix
two settings if resumed (captions, training runs) live in folders named by their key, so an old
result is never continued with new settings, and returning to old settings finds it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import posixpath
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from core import storage
from core.config import CaptionJobConfig, PredictJobConfig, to_dict
from core.config.datasets import DATASETS, VIDEO_DATASETS
from core.config.pipeline import PipelineJobConfig
from core.data.manifest import (
    IMAGE_SUFFIXES,
    SPLIT_NAMES,
    ManifestError,
    manifest_from_image_folder,
    manifest_from_table,
    read_manifest,
    write_manifest,
)
from core.models.clip_classifier import read_meta
from core.report import REPORT_JSON, ModelOutcome, report_files, write_report
from core.train.engine import read_history
from core.train.launch import absolute_storage
from ray_jobs.cli import init_ray, parse_job_config, run_main

log = logging.getLogger("ray_jobs.pipeline")

STATE_FILE = "pipeline_state.json"
STAGES = ("manifest", "captions", "class_means", "training", "predict", "report")
VARIANTS = ("baseline", "regularized")
#: Settings that size a stage's resources but do not change what it computes: changing them
#: reruns only the report (which lists every setting).
RESOURCE_KEYS = {
    "captioner": {"batch_size", "batches_per_block", "num_gpus", "num_cpus", "min_actors"}
    | {"max_actors"},
    "run": {"num_workers", "use_gpu", "cpus_per_worker", "keep_checkpoints", "max_failures"}
    | {"fail_at_epoch", "max_bad_images", "channels_last", "compile"},
}


def settings_key(*parts: Any) -> str:
    """A short, stable hash of JSON-able settings."""
    text = storage.dumps_json(parts, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def without_resources(section: str, values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in RESOURCE_KEYS.get(section, set())}


# --------------------------------------------------------------------------------------------
# State: which stages finished, with which settings
# --------------------------------------------------------------------------------------------


@dataclass
class StageResult:
    """What a stage leaves for the later ones: files that must exist, and plain data."""

    outputs: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)


class PipelineState:
    """``<storage>/pipeline_state.json``: each stage's last finished run (key, settings,
    outputs, info, seconds) and one line per invocation (stages run and skipped)."""

    def __init__(self, root: str) -> None:
        self.path = storage.join(root, STATE_FILE)
        self.data: dict[str, Any] = {"stages": {}, "invocations": []}
        if storage.exists(self.path):
            self.data = storage.read_json(self.path)

    def finished(self, stage: str, key: str) -> StageResult | None:
        """The stage's recorded result, if it finished with ``key`` and its outputs still exist."""
        entry = self.data["stages"].get(stage)
        if not entry or entry.get("key") != key:
            return None
        if not all(storage.exists(p) for p in entry["outputs"].values()):
            return None
        return StageResult(entry["outputs"], entry.get("info", {}))

    def record(self, stage: str, entry: dict[str, Any]) -> None:
        self.data["stages"][stage] = entry
        storage.write_json(self.path, self.data)

    def record_invocation(self, entry: dict[str, Any]) -> None:
        self.data["invocations"] = [*self.data.get("invocations", []), entry][-50:]
        storage.write_json(self.path, self.data)


class StageRunner:
    """Runs the stages in order; a stage is skipped when it finished before with the same key
    and no earlier stage ran in this invocation (a rerun earlier stage may have changed its
    inputs). Keys chain: each stage's key covers the keys before it."""

    def __init__(self, state: PipelineState) -> None:
        self.state = state
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.key = ""

    def key_for(self, name: str, settings: dict[str, Any]) -> str:
        """The key stage ``name`` gets with ``settings`` after the stages run so far."""
        return settings_key(name, settings, self.key)

    def run(
        self, name: str, settings: dict[str, Any], fn: Callable[[], StageResult]
    ) -> StageResult:
        self.key = self.key_for(name, settings)
        number = f"[{STAGES.index(name) + 1}/{len(STAGES)}]"
        done = None if self.ran else self.state.finished(name, self.key)
        if done is not None:
            log.info("%s %s: skipped (finished earlier with the same settings)", number, name)
            self.skipped.append(name)
            return done
        log.info("%s %s", number, name)
        start = time.monotonic()
        result = fn()
        self.state.record(
            name,
            {
                "key": self.key,
                "settings": settings,
                "outputs": result.outputs,
                "info": result.info,
                "seconds": round(time.monotonic() - start, 1),
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        self.ran.append(name)
        return result


# --------------------------------------------------------------------------------------------
# Stage 1: the manifest
# --------------------------------------------------------------------------------------------


def check_class_folders(root: str) -> None:
    """``root`` holds class folders (``<class>/<image>`` or ``<split>/<class>/<image>``), each
    with at least one image; otherwise one line naming the folder."""
    fs, inner = storage.resolve(root)
    kind = fs.get_file_info(inner).type
    if kind == pafs.FileType.NotFound:
        raise ManifestError(f"root: {root}: no such folder")
    if kind != pafs.FileType.Directory:
        raise ManifestError(f"root: {root}: not a folder")
    entries = []
    for info in fs.get_file_info(pafs.FileSelector(inner, recursive=True)):
        rel = PurePosixPath(info.path[len(inner) :].strip("/"))
        if not any(part.startswith(".") for part in rel.parts):
            entries.append((rel, info.type))
    top = {r.parts[0] for r, t in entries if t == pafs.FileType.Directory and len(r.parts) == 1}
    depth = 2 if top and top <= set(SPLIT_NAMES) else 1
    folders = sorted(
        r for r, t in entries if t == pafs.FileType.Directory and len(r.parts) == depth
    )
    layout = "<split>/<class>/<image>" if depth == 2 else "<class>/<image>"
    if not folders:
        raise ManifestError(f"root: {root} has no class folders (expected {layout})")
    images = Counter(
        r.parent
        for r, t in entries
        if t == pafs.FileType.File
        and len(r.parts) == depth + 1
        and r.suffix.lower() in IMAGE_SUFFIXES
    )
    empty = [f for f in folders if not images[f]]
    if empty:
        more = f" ({len(empty) - 1} more such folders)" if len(empty) > 1 else ""
        raise ManifestError(
            f"root: class folder {storage.join(root, str(empty[0]))} holds no images "
            f"({', '.join(IMAGE_SUFFIXES)}){more}"
        )


def check_for_training(table: pa.Table, source: str) -> tuple[list[str], dict[str, int]]:
    """A single-label manifest where every class has a training image and the test split has
    rows (the report compares on it); returns (classes, images per split)."""
    if "label" not in table.column_names:
        raise ManifestError(f"{source}: the pipeline needs a single-label 'label' column")
    labels = table.column("label").cast(pa.string()).to_pylist()
    splits = table.column("split").cast(pa.string()).to_pylist()
    classes = sorted(set(labels))
    train = Counter(label for label, split in zip(labels, splits, strict=True) if split == "train")
    missing = [c for c in classes if not train[c]]
    if missing:
        raise ManifestError(
            f"{source}: class {missing[0]!r} has no training image"
            f"{f' ({len(missing) - 1} more classes too)' if len(missing) > 1 else ''}; add "
            "images or change split_fractions"
        )
    counts = Counter(splits)
    if not counts["test"]:
        raise ManifestError(f"{source}: no image in the test split; change split_fractions")
    return classes, {s: counts[s] for s in SPLIT_NAMES}


def fingerprint(table: pa.Table) -> str:
    """A hash of the manifest's rows (id, path, label, split): a changed folder changes it."""
    columns = ("id", "path", "label", "split")
    rows = zip(*(table.column(c).cast(pa.string()).to_pylist() for c in columns), strict=True)
    return settings_key(sorted("\t".join(map(str, r)) for r in rows))


def source_settings(cfg: PipelineJobConfig) -> dict[str, Any]:
    """The settings that define the data (what a changed value must rebuild)."""
    out: dict[str, Any] = {"source": cfg.source}
    if cfg.source in ("folder", *DATASETS):
        out["root"] = cfg.root
    if cfg.source in ("table", "manifest"):
        out["manifest"] = cfg.manifest
    if cfg.source in ("folder", "table"):
        out["split_fractions"] = cfg.split_fractions
    if cfg.source == "table":
        out["table"] = to_dict(cfg.table)
    if cfg.source in DATASETS:
        out["dataset"] = to_dict(cfg.dataset)
    return out


def read_source(cfg: PipelineJobConfig) -> pa.Table | None:
    """The manifest table of the cheap sources (a listing or a table; re-read every run so a
    changed folder is noticed), or None for the dataset readers (keyed by settings only)."""
    if cfg.source == "folder":
        check_class_folders(cfg.root)
        return manifest_from_image_folder(cfg.root, cfg.split_fractions)
    if cfg.source == "table":
        t = cfg.table
        return manifest_from_table(
            cfg.manifest,
            path_column=t.path_column,
            label_column=t.label_column,
            split_column=t.split_column or None,
            base_dir=t.base_dir or None,
            split_fractions=cfg.split_fractions,
        )
    if cfg.source == "manifest":
        return read_manifest(cfg.manifest)
    return None


def manifest_stage(
    cfg: PipelineJobConfig, runner: StageRunner, ensure_ray: Callable[[], None]
) -> StageResult:
    table = read_source(cfg)
    settings = source_settings(cfg)
    if table is not None:
        settings["rows"] = fingerprint(table)
    folder = storage.join(cfg.storage, "manifest")

    def build() -> StageResult:
        if cfg.source == "manifest":
            path, built = cfg.manifest, table
        elif table is not None:
            path, built = storage.join(folder, "manifest.parquet"), table
        else:
            if cfg.source in VIDEO_DATASETS:
                ensure_ray()  # frames are decoded in Ray Data tasks
            from ray_jobs.dataset_manifest import build_dataset_manifest

            result = build_dataset_manifest(cfg.dataset_manifest_job(folder))
            path, built = result.manifest, read_manifest(result.manifest)
        classes, counts = check_for_training(built, path)
        if table is not None and cfg.source != "manifest":
            write_manifest(built, path)
        return StageResult({"manifest": path}, {"classes": classes, "images": counts})

    return runner.run("manifest", settings, build)


# --------------------------------------------------------------------------------------------
# Stages 2-3: captions and class means
# --------------------------------------------------------------------------------------------


def check_reference_descriptions(cfg: PipelineJobConfig, manifest: str) -> None:
    """The reference captioner reads descriptions the data already has: check on the driver
    that every training image has one (inside Ray Data the error would lose its file name)."""
    from core.captioning.reference import ReferenceCaptionModel

    ref = cfg.captioner.reference
    if cfg.captioner.backend != "reference":
        return
    if not ref.file and ref.column not in storage.read_parquet(manifest).column_names:
        raise ValueError(
            f"captioner: the reference captioner reads descriptions from the manifest column "
            f"{ref.column!r}, which {manifest} lacks; caption with an LMM instead "
            "(captioner=minigpt4_tiny, captioner=minigpt4_vicuna7b) or name a file of "
            "descriptions (captioner.reference.file)"
        )
    ids = read_manifest(manifest, ["train"]).column("id").to_pylist()
    try:
        ReferenceCaptionModel(ref, manifest).describe(ids, [None] * len(ids), "")
    except KeyError as exc:  # names the source and the first id without a description
        raise ValueError(f"captioner.reference: {exc.args[0]}") from None


def captions_stage(
    cfg: PipelineJobConfig, runner: StageRunner, manifest: str, ensure_ray: Callable[[], None]
) -> StageResult:
    settings = {
        "captioner": without_resources("captioner", to_dict(cfg.captioner)),
        "images": {"max_side": cfg.images.max_side, "max_pixels": cfg.images.max_pixels},
    }
    # Same data and captioner → same folder, so an interrupted run (or an added image) only
    # captions what is missing; other data or another captioner → another folder.
    data = {k: v for k, v in source_settings(cfg).items() if k != "split_fractions"}
    output = storage.join(cfg.storage, "captions", settings_key(data, settings))

    def build() -> StageResult:
        from ray_jobs.caption import caption

        check_reference_descriptions(cfg, manifest)
        ensure_ray()
        summary = caption(
            CaptionJobConfig(
                storage=cfg.storage,
                manifest=manifest,
                splits=["train"],
                output=output,
                captioner=cfg.captioner,
                images=cfg.images,
                ray=cfg.ray,
            )
        )
        info = {k: getattr(summary, k) for k in ("captioned", "skipped", "failed", "caption_rows")}
        if summary.failed:
            log.warning(
                "%d images could not be captioned (error rows in %s)", summary.failed, output
            )
        return StageResult({"captions": output}, info)

    return runner.run("captions", settings, build)


def class_means_stage(
    cfg: PipelineJobConfig,
    runner: StageRunner,
    manifest: str,
    captions: str,
    ensure_ray: Callable[[], None],
) -> StageResult:
    settings = {"clip": to_dict(cfg.clip), "normalize": cfg.class_means.normalize}

    def build() -> StageResult:
        from ray_jobs.class_descriptions import class_descriptions

        ensure_ray()
        result = class_descriptions(
            cfg.class_means_job(
                captions=captions,
                manifest=manifest,
                splits=["train"],
                output=storage.join(cfg.storage, "class_means.safetensors"),
            )
        )
        return StageResult(
            {"class_means": result.output, "summary": result.summary_path},
            {"captions_per_class": result.captions_per_class},
        )

    return runner.run("class_means", settings, build)


# --------------------------------------------------------------------------------------------
# Stages 4-5: training and prediction
# --------------------------------------------------------------------------------------------


def finished_checkpoint(run_dir: str, epochs: int) -> str:
    """The last epoch's checkpoint of a run whose ``metrics.jsonl`` has every epoch, or "" for
    a run that has not finished (or whose last checkpoint is gone)."""
    done = {int(h.get("epoch", -1)) for h in read_history(run_dir)}
    if not done >= set(range(epochs)):
        return ""
    for name in reversed(storage.list_dirs(run_dir, prefix="checkpoint_")):
        folder = storage.join(run_dir, name)
        try:
            if int(read_meta(folder).get("epoch", -1)) == epochs - 1:
                return folder
        except (OSError, ValueError):
            continue
    return ""


def training_stage(
    cfg: PipelineJobConfig,
    runner: StageRunner,
    manifest: str,
    means: str,
    ensure_ray: Callable[[], None],
) -> StageResult:
    settings = {
        "alpha": cfg.alpha,
        "optim": to_dict(cfg.optim),
        "run": without_resources("run", to_dict(cfg.run)),
    }
    name = f"{cfg.name}-{runner.key_for('training', settings)[:8]}"
    compare_root = storage.join(cfg.storage, "runs", name)
    comparison = storage.join(compare_root, "comparison.json")

    def build() -> StageResult:
        epochs = cfg.run.epochs
        runs = {v: storage.join(compare_root, v) for v in VARIANTS}
        finals = {v: finished_checkpoint(d, epochs) for v, d in runs.items()}
        if all(finals.values()) and storage.exists(comparison):
            log.info("both training runs in %s have every epoch: not fitted again", compare_root)
        else:
            from ray_jobs.train_regularized import train

            ensure_ray()
            train(
                cfg.training(name=name, manifest=manifest, class_means=means, compare_baseline=True)
            )
            finals = {v: finished_checkpoint(d, epochs) for v, d in runs.items()}
            unfinished = [v for v, path in finals.items() if not path]
            if unfinished:
                raise RuntimeError(
                    f"{runs[unfinished[0]]}: training ended without a checkpoint of epoch {epochs}"
                )
        alphas = {"baseline": 0.0, "regularized": cfg.alpha}
        info = {
            v: {"run_dir": runs[v], "checkpoint": finals[v], "alpha": alphas[v]} for v in VARIANTS
        }
        info["compare_root"] = compare_root
        outputs = {
            "comparison": comparison,
            "plot": storage.join(compare_root, "test_accuracy.png"),
        }
        outputs |= {f"{v}_checkpoint": finals[v] for v in VARIANTS}
        return StageResult(outputs, info)

    return runner.run("training", settings, build)


def predict_stage(
    cfg: PipelineJobConfig,
    runner: StageRunner,
    manifest: str,
    trained: dict,
    ensure_ray: Callable[[], None],
) -> StageResult:
    def build() -> StageResult:
        from concurrent.futures import ThreadPoolExecutor

        from ray_jobs.predict import predict

        ensure_ray()
        p = cfg.predict

        def one(variant: str) -> Any:
            run = trained[variant]
            return predict(
                PredictJobConfig(
                    storage=cfg.storage,
                    checkpoint=run["checkpoint"],
                    manifest=manifest,
                    splits=["test"],
                    output=storage.join(run["run_dir"], "predictions"),
                    batch_size=p.batch_size,
                    num_actors=p.num_actors,
                    num_gpus=p.num_gpus,
                    top_k=p.top_k,
                    ray=cfg.ray,
                )
            )

        # The two models' predictions are independent Ray Data jobs: side by side, each one's
        # actor start-up overlaps the other's work (and on a cluster they share its GPUs).
        with ThreadPoolExecutor(max_workers=len(VARIANTS)) as pool:
            summaries = dict(zip(VARIANTS, pool.map(one, VARIANTS), strict=True))
        outputs, info = {}, {}
        for variant, summary in summaries.items():
            outputs[f"{variant}_predictions"] = summary.output
            outputs[f"{variant}_accuracy"] = summary.accuracy_path
            info[variant] = {"accuracy": summary.accuracy, "images": summary.images}
        return StageResult(outputs, info)

    return runner.run("predict", {"top_k": cfg.predict.top_k}, build)


# --------------------------------------------------------------------------------------------
# Stage 6: the report, and the whole chain
# --------------------------------------------------------------------------------------------


def report_title(cfg: PipelineJobConfig) -> str:
    if cfg.source in DATASETS:
        data = cfg.source
    else:
        data = posixpath.basename((cfg.root or cfg.manifest).rstrip("/")) or cfg.source
    return f"LMM-regularized CLIP ({cfg.clip.model_name}) on {data}"


@dataclass
class PipelineResult:
    """The report's data, where it lies, and what this invocation ran and skipped."""

    storage: str
    report: dict[str, Any]
    files: dict[str, str]
    ran: list[str]
    skipped: list[str]
    seconds: float


def absolute(cfg: PipelineJobConfig) -> PipelineJobConfig:
    """Paths made absolute: manifests record image paths, and Train workers run elsewhere."""
    table = cfg.table
    if table.base_dir:
        table = dataclasses.replace(table, base_dir=absolute_storage(table.base_dir))
    return dataclasses.replace(
        cfg,
        storage=absolute_storage(cfg.storage),
        root=absolute_storage(cfg.root) if cfg.root else "",
        manifest=absolute_storage(cfg.manifest) if cfg.manifest else "",
        table=table,
    )


def run_pipeline(cfg: PipelineJobConfig) -> PipelineResult:
    """Run (or resume) every stage for ``cfg``; return the report."""
    start, started_at = time.monotonic(), datetime.now(UTC).isoformat(timespec="seconds")
    cfg.check_inputs()
    cfg = absolute(cfg)
    state = PipelineState(cfg.storage)
    runner = StageRunner(state)

    def ensure_ray() -> None:
        c, r = cfg.captioner, cfg.run
        init_ray(
            cfg.ray,
            cpus_needed=max(
                3,
                c.max_actors * c.num_cpus + cfg.images.num_cpus,
                cfg.class_means.num_actors + 1,
                r.num_workers * r.cpus_per_worker + 2,
                cfg.predict.num_actors + 1,
            ),
        )

    manifest = manifest_stage(cfg, runner, ensure_ray)
    manifest_path = manifest.outputs["manifest"]
    captions = captions_stage(cfg, runner, manifest_path, ensure_ray)
    means = class_means_stage(cfg, runner, manifest_path, captions.outputs["captions"], ensure_ray)
    trained = training_stage(cfg, runner, manifest_path, means.outputs["class_means"], ensure_ray)
    predicted = predict_stage(cfg, runner, manifest_path, trained.info, ensure_ray)
    folder = storage.join(cfg.storage, "report")

    def build_report() -> StageResult:
        outcomes = [
            ModelOutcome(
                name=v,
                alpha=trained.info[v]["alpha"],
                history=read_history(trained.info[v]["run_dir"]),
                run_dir=trained.info[v]["run_dir"],
                checkpoint=trained.info[v]["checkpoint"],
                predictions=predicted.outputs[f"{v}_predictions"],
                accuracy_json=predicted.outputs[f"{v}_accuracy"],
            )
            for v in VARIANTS
        ]
        artefacts = {
            "manifest": manifest_path,
            "captions": captions.outputs["captions"],
            "class_means": means.outputs["class_means"],
            "class_means_summary": means.outputs["summary"],
            "runs": trained.info["compare_root"],
            "comparison": trained.outputs["comparison"],
            "training_plot": trained.outputs["plot"],
            "state": state.path,
        }
        write_report(
            folder,
            outcomes,
            manifest.info["classes"],
            manifest.info["images"],
            to_dict(cfg),
            artefacts,
            report_title(cfg),
        )
        return StageResult(report_files(folder))

    runner.run("report", {"settings": to_dict(cfg)}, build_report)
    seconds = round(time.monotonic() - start, 1)
    state.record_invocation(
        {
            "started_at": started_at,
            "ran": runner.ran,
            "skipped": runner.skipped,
            "seconds": seconds,
        }
    )
    report = storage.read_json(storage.join(folder, REPORT_JSON))
    return PipelineResult(
        cfg.storage, report, report_files(folder), runner.ran, runner.skipped, seconds
    )


def _pct(value: Any) -> str:
    return "  n/a " if value is None else f"{100 * value:6.2f}"


def print_summary(result: PipelineResult) -> None:
    report = result.report
    print()
    print(report["title"])
    print(f"{'model':<12} {'alpha':>6} {'test acc %':>11} {'predicted %':>12} {'best val':>9}")
    for name in report["models"]:
        m = report[name]
        print(
            f"{name:<12} {m['alpha']:>6g} {_pct(m['test_acc']):>11} "
            f"{_pct(m['predicted_test_acc']):>12} {m['best_val_epoch'] or '-':>9}"
        )
    print()
    print(f"stages run: {', '.join(result.ran) or 'none'}")
    print(f"stages skipped (finished earlier): {', '.join(result.skipped) or 'none'}")
    for key, path in result.files.items():
        print(f"  {key:<15} {path}")
    print(f"done in {result.seconds:.0f} s")


def main(argv: list[str] | None = None) -> PipelineResult:
    cfg = parse_job_config(
        PipelineJobConfig,
        "A folder of images to a trained, evaluated model and a report.",
        argv,
        job="pipeline",
    )
    result = run_pipeline(cfg)
    print_summary(result)
    return result


if __name__ == "__main__":
    run_main(main)
