"""``python -m ray_jobs.demo``: the end-to-end run on one machine, with its own small defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.config.captioning import CaptionerConfig
from core.config.common import ClipConfig, DemoDataConfig, OptimConfig, RayConfig
from core.config.loader import check


def _demo_optim() -> OptimConfig:
    return OptimConfig(encoder_lr=1e-3, head_lr=3e-3, weight_decay=0.01, warmup_epochs=1.0)


def _pretrain_optim() -> OptimConfig:
    return OptimConfig(encoder_lr=2e-3, head_lr=2e-3, weight_decay=0.01, warmup_epochs=1.0)


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
    pretrain: bool = True  # pretrain the CLIP on the world's described images first
    pretrain_pairs: int = 2048  # training pairs of the pool (plus 256 held out)
    pretrain_epochs: int = 16
    pretrain_optim: OptimConfig = field(default_factory=_pretrain_optim)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self, key: str) -> None:
        check(self.alpha > 0, "alpha", "must be > 0 (the demo compares it with alpha = 0)")
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(self.clip_decoder_epochs >= 1, "clip_decoder_epochs", "must be >= 1")
        check(self.pretrain_epochs >= 1, "pretrain_epochs", "must be >= 1")
        check(self.pretrain_pairs >= 128, "pretrain_pairs", "must be >= 128 (one batch)")
