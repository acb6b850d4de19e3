"""Sections several jobs share: where Ray runs, the demo dataset, the CLIP model, the optimizer."""

from __future__ import annotations

from dataclasses import dataclass

from core.config.loader import check


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
class ClipConfig:
    """An open_clip model: a registered name plus a pretrained tag or a local checkpoint file."""

    model_name: str = "tiny-vit"  # e.g. ViT-L-14 (the paper's), ViT-B-32; tiny-vit for tests
    pretrained: str = ""  # open_clip tag (openai, laion2b_s32b_b82k, ...) or a local file path
    seed: int = 0  # seed of random weights when pretrained is ""


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
