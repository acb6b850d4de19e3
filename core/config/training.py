"""The Ray Train jobs: the run section every method shares, LMM-regularized CLIP, CLIP-Decoder."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from core.config.common import ClipConfig, OptimConfig, RayConfig
from core.config.loader import at, check


@dataclass
class TrainRunConfig:
    """The Ray Train settings every training method shares (the ``run:`` section)."""

    epochs: int = 10
    batch_size: int = 32  # global batch, split across workers
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    seed: int = 0  # data order, augmentation and dropout streams
    amp: bool = True  # mixed precision (bfloat16/float16 autocast) when on GPU
    keep_checkpoints: int = 2  # the best N by the method's checkpoint metric
    max_failures: int = 3  # worker failures survived by resuming from the last checkpoint
    fail_at_epoch: int = -1  # fault injection for tests: kill a worker once in this epoch
    # Unreadable images skipped per epoch before the run stops: < 1 is a fraction of the
    # training rows (rounded up), >= 1 a count; 0 stops at the first one.
    max_bad_images: float = 0.01
    # Speed knobs (results unchanged up to float rounding): convolution weights and images in
    # channels-last layout (faster NHWC kernels on GPUs, e.g. TResNet); torch.compile the model
    # (first step compiles; skipped with a warning where torch cannot compile).
    channels_last: bool = False
    compile: bool = False

    def validate(self, key: str) -> None:
        check(self.epochs >= 1, at(key, "epochs"), "must be >= 1")
        check(self.num_workers >= 1, at(key, "num_workers"), "must be >= 1")
        check(
            self.batch_size >= self.num_workers and self.batch_size % self.num_workers == 0,
            at(key, "batch_size"),
            f"must be a positive multiple of num_workers ({self.num_workers}), "
            f"got {self.batch_size}",
        )
        check(self.keep_checkpoints >= 1, at(key, "keep_checkpoints"), "must be >= 1")
        check(self.max_failures >= 0, at(key, "max_failures"), "must be >= 0")
        check(self.cpus_per_worker > 0, at(key, "cpus_per_worker"), "must be > 0")
        check(self.max_bad_images >= 0, at(key, "max_bad_images"), "must be >= 0")

    def bad_image_limit(self, rows: int) -> int:
        """How many unreadable images of ``rows`` one epoch may skip."""
        if self.max_bad_images >= 1:
            return int(self.max_bad_images)
        return math.ceil(self.max_bad_images * rows)


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
    run: TrainRunConfig = field(default_factory=TrainRunConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self, key: str) -> None:
        check(self.alpha >= 0, at(key, "alpha"), f"must be >= 0, got {self.alpha}")


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
    # mAP of final_metrics.json and the printed table: "reference" averages AP over every label,
    # one without positives counting 0 (the published ZSL numbers); "skip_empty" leaves such
    # labels out. Each epoch's metrics also hold both as *_map_reference / *_map_skip_empty.
    map_protocol: Literal["reference", "skip_empty"] = "reference"
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: TrainRunConfig = field(default_factory=TrainRunConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self, key: str) -> None:
        check(self.alpha >= 0, at(key, "alpha"), "must be >= 0")
        check(self.beta >= 0, at(key, "beta"), "must be >= 0")
        check(self.alpha + self.beta > 0, at(key, "beta"), "alpha and beta cannot both be 0")
        check(self.temperature > 0, at(key, "temperature"), "must be > 0")
        for i, template in enumerate(self.custom_templates):
            where = at(key, f"custom_templates[{i}]")
            check("{label}" in template, where, "needs a {label} placeholder")
