"""Dataclass configs, YAML presets and dotted command-line overrides.

Every job's configuration is a tree of dataclasses. ``load_config`` merges, in order: the dataclass
defaults, a YAML preset, and ``a.b=value`` overrides; then it checks every key, type and value so a
bad setting stops the job before any work, with one line naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


def at(section: str, name: str) -> str:
    """The full key of ``name`` in ``section`` (top level: ``section`` is "" or "config")."""
    return name if section in ("", "config") else f"{section}.{name}"


def check(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError('key: message')`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


# --------------------------------------------------------------------------------------------
# Captioning
# --------------------------------------------------------------------------------------------


@dataclass
class MiniGPT4Config:
    """Where MiniGPT-4's three parts live, and which conversation template its LLM expects."""

    blip2_path: str = ""  # transformers BLIP-2 folder: vision encoder, Q-Former, query tokens
    checkpoint: str = ""  # official MiniGPT-4 .pth (state dict under "model"), holds llama_proj
    llm_path: str = ""  # transformers folder of Vicuna (template vicuna) or LLaMA-2-chat (llama2)
    template: Literal["vicuna", "llama2"] = "vicuna"
    tiny: bool = False  # build tiny random weights in the official layouts (tests, demo)
    seed: int = 0  # seed of the tiny weights

    def validate_paths(self, key: str) -> None:
        """Called by ``CaptionerConfig`` only when this backend is the one selected."""
        if not self.tiny:
            for name in ("blip2_path", "checkpoint", "llm_path"):
                check(bool(getattr(self, name)), f"{key}.{name}", "required unless tiny=true")


@dataclass
class HFVLMConfig:
    """A transformers vision-language model with a processor and a chat template."""

    model_path: str = ""  # local folder or hub id of e.g. LLaVA, Qwen2-VL, InstructBLIP, BLIP-2
    tiny: bool = False  # build a tiny random LLaVA in a temporary folder (tests, demo)
    seed: int = 0

    def validate_paths(self, key: str) -> None:
        """Called by ``CaptionerConfig`` only when this backend is the one selected."""
        if not self.tiny:
            check(bool(self.model_path), f"{key}.model_path", "required unless tiny=true")


@dataclass
class ReferenceConfig:
    """Descriptions a dataset already has: a manifest column, or a file keyed by id."""

    column: str = "description"  # manifest column holding the description(s)
    file: str = ""  # optional Parquet/CSV with columns id and caption (overrides column)


@dataclass
class CaptionerConfig:
    """Which backend captions, with which prompts, and how its actor pool is sized."""

    backend: Literal["reference", "minigpt4", "hf_vlm"] = "reference"
    prompts: list[str] = field(default_factory=lambda: ["Describe this image in detail."])
    split_numbered: bool = False  # split a numbered-list answer into one row per item
    max_new_tokens: int = 64
    num_beams: int = 1
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    batch_size: int = 8
    # Rows per Ray Data block, in batches: bigger blocks cut per-task overhead, smaller ones spread
    # a short job over more actors (blocks shrink automatically so each actor gets work).
    batches_per_block: int = 8
    num_gpus: float = 0.0  # per actor; fractions share a GPU
    num_cpus: float = 1.0  # per actor
    min_actors: int = 1
    max_actors: int = 1
    minigpt4: MiniGPT4Config = field(default_factory=MiniGPT4Config)
    hf_vlm: HFVLMConfig = field(default_factory=HFVLMConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)

    def validate(self, key: str) -> None:
        check(len(self.prompts) > 0, f"{key}.prompts", "needs at least one prompt")
        check(self.max_new_tokens >= 1, f"{key}.max_new_tokens", "must be >= 1")
        check(self.num_beams >= 1, f"{key}.num_beams", "must be >= 1")
        check(self.batch_size >= 1, f"{key}.batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.batches_per_block >= 1, f"{key}.batches_per_block", "must be >= 1")
        check(self.num_gpus >= 0, f"{key}.num_gpus", "must be >= 0")
        check(self.num_cpus >= 0, f"{key}.num_cpus", "must be >= 0")
        check(self.min_actors >= 1, f"{key}.min_actors", "must be >= 1 (Ray Data needs one)")
        check(
            self.max_actors >= self.min_actors,
            f"{key}.max_actors",
            f"must be >= min_actors ({self.min_actors}), got {self.max_actors}",
        )
        if self.backend == "minigpt4":
            self.minigpt4.validate_paths(f"{key}.minigpt4")
        if self.backend == "hf_vlm":
            self.hf_vlm.validate_paths(f"{key}.hf_vlm")


@dataclass
class RayConfig:
    """Where to run: an existing cluster, or a local Ray started by the job (the default)."""

    address: str = ""  # "" → RAY_ADDRESS if set, else start a local instance; "auto" → running one
    num_cpus: int = 0  # logical CPUs of a local instance; 0 → enough for the job's operators
    # A local instance's dashboard (127.0.0.1:8265): Ray's state API needs it, and so does Ray
    # Train's placement-group cleaner, which otherwise logs a warning every second of a run.
    dashboard: bool = True

    def validate(self, key: str) -> None:
        check(self.num_cpus >= 0, f"{key}.num_cpus", "must be >= 0")


@dataclass
class DemoDataConfig:
    """The generated demo dataset, used when no manifest is given."""

    images_per_class: int = 40
    image_size: int = 64
    seed: int = 0

    def validate(self, key: str) -> None:
        check(self.images_per_class >= 3, f"{key}.images_per_class", "must be >= 3")
        check(self.image_size >= 16, f"{key}.image_size", "must be >= 16")


@dataclass
class ImageLoadConfig:
    """Limits for decoding: larger images are shrunk, enormous ones become error rows."""

    max_side: int = 1024  # longest side after decoding (the models resize further)
    max_pixels: int = 100_000_000  # more pixels than this is an error row, not an OOM
    num_cpus: float = 1.0  # per image-loading task

    def validate(self, key: str) -> None:
        check(self.max_side >= 16, f"{key}.max_side", "must be >= 16")
        check(self.max_pixels >= 256, f"{key}.max_pixels", "must be >= 256")
        check(self.num_cpus > 0, f"{key}.num_cpus", "must be > 0")


@dataclass
class CaptionJobConfig:
    """``python -m ray_jobs.caption``: manifest → captions Parquet folder."""

    storage: str = "outputs"  # root folder or URI for every output of the job
    manifest: str = ""  # manifest Parquet; "" → generate the demo dataset under storage/demo
    splits: list[str] = field(default_factory=lambda: ["train"])  # [] → every split
    output: str = ""  # captions folder; "" → storage/captions
    retry_errors: bool = False  # caption again the ids whose earlier rows are errors
    limit: int = 0  # caption at most this many new images (0 → all)
    flush_rows: int = 512  # caption rows per output part file
    progress_seconds: float = 10.0  # how often progress is logged
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    images: ImageLoadConfig = field(default_factory=ImageLoadConfig)
    demo: DemoDataConfig = field(default_factory=DemoDataConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self, key: str) -> None:
        allowed = ("train", "val", "test")
        for s in self.splits:
            check(s in allowed, "splits", f"got {s!r}, allowed: {', '.join(allowed)}")
        check(self.limit >= 0, "limit", "must be >= 0")
        check(self.flush_rows >= 1, "flush_rows", "must be >= 1")
        check(self.progress_seconds > 0, "progress_seconds", "must be > 0")


# --------------------------------------------------------------------------------------------
# CLIP text encoding, class means, regularized training
# --------------------------------------------------------------------------------------------


@dataclass
class ClipConfig:
    """An open_clip model: a registered name plus a pretrained tag or a local checkpoint file."""

    model_name: str = "tiny-vit"  # e.g. ViT-L-14 (the paper's), ViT-B-32; tiny-vit for tests
    pretrained: str = ""  # open_clip tag (openai, laion2b_s32b_b82k, ...) or a local file path
    seed: int = 0  # seed of random weights when pretrained is ""


@dataclass
class ClassMeansJobConfig:
    """``python -m ray_jobs.class_descriptions``: captions → mean semantic class descriptions."""

    storage: str = "outputs"
    captions: str = ""  # captions folder; "" → storage/captions
    manifest: str = ""  # defines the classes and splits; "" → storage/demo/manifest.parquet
    splits: list[str] = field(default_factory=lambda: ["train"])  # captions of these splits count
    output: str = ""  # "" → storage/class_means.safetensors (+ .json summary beside it)
    normalize: bool = True  # L2-normalise each description embedding before averaging
    clip: ClipConfig = field(default_factory=ClipConfig)
    batch_size: int = 256  # captions per text-encoder batch
    num_gpus: float = 0.0  # per encoder actor
    num_actors: int = 1
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self, key: str) -> None:
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.num_actors >= 1, "num_actors", "must be >= 1")
        check(self.num_gpus >= 0, "num_gpus", "must be >= 0")


@dataclass
class OptimConfig:
    """AdamW with separate encoder and head learning rates; linear warmup, then cosine decay."""

    encoder_lr: float = 1e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of each peak learning rate

    def validate(self, key: str) -> None:
        check(self.encoder_lr >= 0, f"{key}.encoder_lr", "must be >= 0")
        check(self.head_lr > 0, f"{key}.head_lr", "must be > 0")
        check(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        check(self.warmup_epochs >= 0, f"{key}.warmup_epochs", "must be >= 0")
        check(0 <= self.min_lr_ratio <= 1, f"{key}.min_lr_ratio", "must be in [0, 1]")


def check_training_run(cfg: Any, key: str = "") -> None:
    """The checks every Ray Train job shares: epochs, workers, global batch, checkpoints.

    ``key``: the section the run's settings sit in (a sweep nests them under its target).
    """
    check(cfg.epochs >= 1, at(key, "epochs"), "must be >= 1")
    check(cfg.num_workers >= 1, at(key, "num_workers"), "must be >= 1")
    check(
        cfg.batch_size >= cfg.num_workers and cfg.batch_size % cfg.num_workers == 0,
        at(key, "batch_size"),
        f"must be a positive multiple of num_workers ({cfg.num_workers}), got {cfg.batch_size}",
    )
    check(cfg.keep_checkpoints >= 1, at(key, "keep_checkpoints"), "must be >= 1")
    check(cfg.max_failures >= 0, at(key, "max_failures"), "must be >= 0")
    check(cfg.cpus_per_worker > 0, at(key, "cpus_per_worker"), "must be > 0")


@dataclass
class TrainRegularizedConfig:
    """``python -m ray_jobs.train_regularized``: CLIP encoder + linear head, J = CE + alpha*Jreg."""

    storage: str = "outputs"
    name: str = "regularized"  # run folder: storage/runs/<name>
    manifest: str = ""  # "" → storage/demo/manifest.parquet
    class_means: str = ""  # "" → storage/class_means.safetensors
    prompt: str = ""  # with per-prompt means: which prompt's means; "" → the all-prompt means
    alpha: float = 1.0  # regularizer weight; 0 → the baseline
    compare_baseline: bool = False  # also train alpha=0 with the same seed and data order
    clip: ClipConfig = field(default_factory=ClipConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 10
    batch_size: int = 32  # global batch, split across workers
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    seed: int = 0
    amp: bool = True  # mixed precision (bfloat16/float16 autocast) when on GPU
    keep_checkpoints: int = 2  # best N by val_acc
    max_failures: int = 3  # worker failures survived by resuming from the last checkpoint
    fail_at_epoch: int = -1  # fault injection for tests: kill a worker once after this epoch
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self, key: str) -> None:
        check(self.alpha >= 0, at(key, "alpha"), f"must be >= 0, got {self.alpha}")
        check_training_run(self, key)


@dataclass
class PredictJobConfig:
    """``python -m ray_jobs.predict``: a trained checkpoint + a manifest → predictions."""

    storage: str = "outputs"
    checkpoint: str = ""  # a checkpoint folder written by train_regularized
    manifest: str = ""  # "" → storage/demo/manifest.parquet
    splits: list[str] = field(default_factory=lambda: ["test"])
    output: str = ""  # "" → <checkpoint>/../predictions
    batch_size: int = 64
    num_actors: int = 1
    num_gpus: float = 0.0
    top_k: int = 5
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self, key: str) -> None:
        check(bool(self.checkpoint), "checkpoint", "required: a checkpoint folder")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.num_actors >= 1, "num_actors", "must be >= 1")
        check(self.top_k >= 1, "top_k", "must be >= 1")


@dataclass
class ClipDecoderModelConfig:
    """CLIP-Decoder's image side: a timm backbone and the ML-Decoder head's sizes."""

    backbone: str = "tresnet-tiny"  # tresnet_m / tresnet_l (the paper's) or any timm name
    pretrained: str = ""  # "" random, "timm" timm's pretrained weights, or a local checkpoint path
    decoder_embedding: int = 0  # 0 → the backbone's default (768 for real, 32 for tiny)
    num_heads: int = 0  # 0 → default
    dim_feedforward: int = 0  # 0 → default
    align_dim: int = 0  # shared image/label-text dimension of L_clip; 0 → default
    dropout: float = 0.1
    image_size: int = 224  # the demo uses 64
    seed: int = 0


@dataclass
class ClipDecoderTrainConfig:
    """``python -m ray_jobs.train_clip_decoder``: zero-shot multi-label training (seen labels)."""

    storage: str = "outputs"
    name: str = "clip_decoder"  # run folder: storage/runs/<name>
    manifest: str = ""  # multi-label manifest; "" → the multi-label demo under storage
    labels: str = ""  # labels.json (seen / unseen); "" → next to the manifest
    clip: ClipConfig = field(default_factory=ClipConfig)  # frozen text encoder of label prompts
    templates: str = "default"  # a named prompt-template set (see core.text.label_prompts)
    custom_templates: list[str] = field(default_factory=list)  # overrides ``templates`` if set
    model: ClipDecoderModelConfig = field(default_factory=ClipDecoderModelConfig)
    alpha: float = 1.0  # weight of L_clip
    beta: float = 1.0  # weight of L_cls (ASL)
    temperature: float = 0.07
    gamma_neg: float = 4.0
    gamma_pos: float = 0.0
    asl_clip: float = 0.05
    cls_reduction: Literal["sum", "mean"] = "sum"
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 10
    batch_size: int = 32  # global batch, split across workers
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    seed: int = 0
    amp: bool = True
    keep_checkpoints: int = 2
    max_failures: int = 3
    fail_at_epoch: int = -1  # fault injection for tests
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self, key: str) -> None:
        check(self.alpha >= 0, at(key, "alpha"), "must be >= 0")
        check(self.beta >= 0, at(key, "beta"), "must be >= 0")
        check(self.alpha + self.beta > 0, at(key, "beta"), "alpha and beta cannot both be 0")
        check(self.temperature > 0, at(key, "temperature"), "must be > 0")
        check_training_run(self, key)
        for i, template in enumerate(self.custom_templates):
            where = at(key, f"custom_templates[{i}]")
            check("{label}" in template, where, "needs a {label} placeholder")


def _demo_optim() -> OptimConfig:
    return OptimConfig(encoder_lr=1e-3, head_lr=3e-3, weight_decay=0.01, warmup_epochs=1.0)


@dataclass
class NusWideManifestConfig:
    """``python -m ray_jobs.nus_wide_manifest``: NUS-WIDE's own files → manifest + labels.json."""

    root: str = ""  # the dataset folder (TagList1k.txt, Concepts81.txt, ImageList/, ...)
    output: str = ""  # manifest path; labels.json is written next to it
    image_root: str = ""  # "" → <root>/Flickr
    val_fraction: float = 0.0  # share of training images (by id hash) that becomes "val"
    train_unseen_labels: bool = False  # the protocol keeps unseen labels off training images
    drop_unlabelled: bool = True

    def validate(self, key: str) -> None:
        check(bool(self.root), "root", "required: the NUS-WIDE folder")
        check(bool(self.output), "output", "required: where to write manifest.parquet")
        check(0.0 <= self.val_fraction < 1.0, "val_fraction", "must be in [0, 1)")


@dataclass
class DemoJobConfig:
    """``python -m ray_jobs.demo``: every stage end to end on one machine with a local Ray."""

    storage: str = "outputs"
    demo: DemoDataConfig = field(default_factory=DemoDataConfig)
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)  # reference by default
    clip: ClipConfig = field(default_factory=ClipConfig)
    alpha: float = 0.1
    epochs: int = 8
    batch_size: int = 32
    num_workers: int = 1
    seed: int = 0
    optim: OptimConfig = field(default_factory=_demo_optim)
    clip_decoder: bool = True  # also train CLIP-Decoder on the multi-label demo
    clip_decoder_epochs: int = 4
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self, key: str) -> None:
        check(self.alpha > 0, "alpha", "must be > 0 (the demo compares it with alpha = 0)")
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(self.clip_decoder_epochs >= 1, "clip_decoder_epochs", "must be >= 1")


# Named presets for whole sections: ``captioner=minigpt4_tiny`` on the command line (or
# ``captioner: minigpt4_tiny`` in YAML) starts the section from one of these; later dotted
# overrides such as ``captioner.batch_size=4`` apply on top.
SECTION_PRESETS: dict[type, dict[str, dict[str, Any]]] = {
    CaptionerConfig: {
        "reference": {"backend": "reference", "batch_size": 32},
        "minigpt4_tiny": {
            "backend": "minigpt4",
            "minigpt4": {"tiny": True, "template": "vicuna"},
            "max_new_tokens": 16,
            "batch_size": 8,
        },
        "minigpt4_vicuna7b": {
            "backend": "minigpt4",
            "minigpt4": {
                "template": "vicuna",
                "blip2_path": "/models/blip2-flan-t5-xxl",
                "checkpoint": "/models/minigpt4/pretrained_minigpt4_7b.pth",
                "llm_path": "/models/vicuna-7b-v0",
            },
            "prompts": ["Give 10 semantic descriptions for the image."],
            "split_numbered": True,
            "max_new_tokens": 300,
            "batch_size": 8,
            "num_gpus": 1.0,
            "dtype": "float16",
        },
        "hf_vlm_tiny": {
            "backend": "hf_vlm",
            "hf_vlm": {"tiny": True},
            "max_new_tokens": 16,
            "batch_size": 8,
        },
    },
}


# --------------------------------------------------------------------------------------------
# Loading: defaults <- YAML <- dotted overrides, then type and value checks
# --------------------------------------------------------------------------------------------

T = TypeVar("T")
PRESET_KEY = "_preset"


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[x, y]"]`` into a nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r}: expected key=value, e.g. captioner.batch_size=16"
            )
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: cannot parse value {raw!r} ({exc.problem})") from None
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if isinstance(child, str):  # a section preset, refined by this override
                child = node[part] = {PRESET_KEY: child}
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: conflicts with an earlier override of {part}")
            node = child
        if isinstance(value, str) and isinstance(node.get(parts[-1]), dict):
            value = {PRESET_KEY: value}  # "section=preset" after "section.x=..." resets it
        node[parts[-1]] = value
    return tree


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, str) or (isinstance(value, dict) and PRESET_KEY in value):
            out[key] = value  # a preset replaces the whole section
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        presets = SECTION_PRESETS.get(tp, {})
        if isinstance(value, str) and presets:
            value = {PRESET_KEY: value}
        if isinstance(value, dict) and PRESET_KEY in value:
            name = value[PRESET_KEY]
            if name not in presets:
                allowed = ", ".join(sorted(presets)) or "none"
                raise ConfigError(f"{key}: unknown preset {name!r}; allowed: {allowed}")
            rest = {k: v for k, v in value.items() if k != PRESET_KEY}
            value = _merge(presets[name], rest)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return _build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: got {value!r}, allowed: {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: got {value!r}, expected a mapping")
        _, value_tp = typing.get_args(tp)
        return {str(k): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: got {value!r}, expected null")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}, expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: got {value!r}, expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: got {value!r}, expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: got {value!r}, expected a string")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def _build(cls: type[T], values: dict[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"{full}: unknown key; allowed here: {allowed}")
        kwargs[key] = _coerce(value, hints[key], full)
    # Nested sections that were not mentioned still get built from their defaults.
    return cls(**kwargs)


def _validate(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate(value, f"{prefix}.{f.name}" if prefix else f.name)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(prefix or "config")


def config_from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build and validate ``cls`` from a plain nested dict (e.g. a Ray Train worker's config)."""
    obj = _build(cls, values, "")
    _validate(obj, "")
    return obj


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Defaults, then the YAML preset at ``path``, then dotted ``overrides``; validated."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config: no such file {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        values = loaded
    values = _merge(values, parse_overrides(list(overrides)))
    return config_from_dict(cls, values)


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-dict form of a config (for YAML dumps and Ray worker configs)."""
    return dataclasses.asdict(config)
