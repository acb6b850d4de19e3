"""Which job a preset is for, its config loaded as the job loads it, and the job's check.

A preset's file name starts with its job (``caption_``, ``class_descriptions_``,
``train_regularized_``, ``train_clip_decoder_``, ``train_<method>_`` for any registered method,
a method's own job name (``Method.job``), ``tune_``, ``predict_``, ``pipeline_``); ``--job``
(and ``--method`` for ``train``) says it for any other name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.check.context import CHECK_KEYS, Context

JOBS = (
    "caption",
    "class_descriptions",
    "train_regularized",
    "train_clip_decoder",
    "train",
    "tune",
    "predict",
    "pipeline",
)


def job_of(path: str | Path) -> tuple[str, str]:
    """(job, method) from a preset's file name; method is "" except for ``train``."""
    from core.train.registry import get_method, method_names

    stem = Path(path).stem
    for job in (
        "class_descriptions",
        "train_regularized",
        "train_clip_decoder",
        "caption",
        "tune",
        "predict",
        "pipeline",
    ):
        if stem == job or stem.startswith(job + "_"):
            return job, ""
    for method in sorted(method_names(), key=len, reverse=True):
        if stem.startswith(f"train_{method}"):
            return "train", method
    for method in method_names():  # a method with its own job (``Method.job``, one word)
        own = get_method(method).job
        if " " not in own and (stem == own or stem.startswith(own + "_")):
            return "train", method
    raise ValueError(
        f"{path}: cannot tell the job from the file name; pass --job ({', '.join(JOBS)})"
    )


def split_keys(overrides: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The job's dotted overrides, and the check's own ``key=value`` pairs (:data:`CHECK_KEYS`)."""
    job, keys = [], {}
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() in CHECK_KEYS:
            keys[key.strip()] = value
        else:
            job.append(item)
    return job, keys


def config_class(job: str, method: str) -> type:
    """The config dataclass the job loads its preset into."""
    from core import config

    if job == "train":
        from core.train.registry import get_method

        return get_method(method).config_class
    if job == "tune":
        from core.tune.config import TuneJobConfig

        return TuneJobConfig
    if job == "pipeline":
        from core.config.pipeline import PipelineJobConfig

        return PipelineJobConfig
    return {
        "caption": config.CaptionJobConfig,
        "class_descriptions": config.ClassMeansJobConfig,
        "train_regularized": config.TrainRegularizedConfig,
        "train_clip_decoder": config.ClipDecoderTrainConfig,
        "predict": config.PredictJobConfig,
    }[job]


def check_training(ctx: Context, method: str, cfg: Any) -> None:
    """One training run of ``method`` (also each Tune trial): the method's own check
    (:meth:`core.train.method.Method.check`)."""
    from core.train.registry import get_method

    get_method(method).check(ctx, cfg)


def check_tune(ctx: Context, cfg: Any) -> None:
    """Each trial is one training run of the target: the training section is checked as that
    job's preset; trials running at once must find their GPUs in the cluster."""
    import dataclasses

    from core.check.gpus import cluster_gpus

    section = cfg.training_config()
    batches = cfg.space.get("run.batch_size", {})
    candidates = [
        v for values in batches.values() for v in (values if isinstance(values, list) else [])
    ]
    if candidates:
        largest = max(int(v) for v in candidates)
        ctx.report.note(f"space: run.batch_size up to {largest}: checked at {largest}")
        section = dataclasses.replace(
            section, run=dataclasses.replace(section.run, batch_size=largest)
        )
    ctx.report.note(
        f"tune: target {cfg.target}, {cfg.num_samples} samples, {cfg.max_concurrent_trials} "
        "at once; the space's ranges were validated by the config loader"
    )
    if section.run.use_gpu:
        needed = cfg.max_concurrent_trials * section.run.num_workers
        available = cluster_gpus(ctx.nodes)
        if needed > available:
            ctx.report.fail(
                f"concurrent trials need {needed} GPUs ({cfg.max_concurrent_trials} trials x "
                f"{section.run.num_workers} workers) but cluster.yaml can start {available}"
            )
        else:
            ctx.report.note(
                f"cluster: {needed} GPUs for concurrent trials <= {available} that cluster.yaml "
                "can start"
            )
    check_training(ctx, cfg.target, section)


def run_check(ctx: Context, job: str, method: str, cfg: Any) -> None:
    """The job's check: models built, parts compared, memory estimated; all into ``ctx.report``."""
    ctx.report.note(f"job: {job}{' --method ' + method if method else ''}")
    # Each job imports only its own check's model stack (the captioning one pulls in
    # transformers, seconds of imports a training job's check at start should not pay).
    if job == "caption":
        from core.check import captioning

        captioning.check_caption(ctx, cfg)
    elif job == "class_descriptions":
        from core.check import inference

        inference.check_class_descriptions(ctx, cfg)
    elif job == "predict":
        from core.check import inference

        inference.check_predict(ctx, cfg)
    elif job == "tune":
        check_tune(ctx, cfg)
    elif job == "train_regularized":
        check_training(ctx, "regularized", cfg)
    elif job == "train_clip_decoder":
        check_training(ctx, "clip_decoder", cfg)
    elif job == "train":
        check_training(ctx, method, cfg)
    elif job == "pipeline":
        from core.check.pipeline import check_pipeline

        check_pipeline(ctx, cfg)
    else:
        raise ValueError(f"unknown job {job!r}; one of {', '.join(JOBS)}")
