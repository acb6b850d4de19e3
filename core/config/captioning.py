"""``python -m ray_jobs.caption``: the captioner backends, image decoding limits, the job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.config.common import DemoDataConfig, RayConfig
from core.config.loader import check


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
    """Which backend captions, with which prompts, and how its actor pool is sized.

    Named presets of this section live in ``ray_jobs/configs/captioner/<name>.yaml``.
    """

    backend: Literal["reference", "minigpt4", "hf_vlm"] = "reference"
    prompts: list[str] = field(default_factory=lambda: ["Describe this image in detail."])
    split_numbered: bool = False  # split a numbered-list answer into one row per item
    max_new_tokens: int = 64
    num_beams: int = 1
    # greedy: deterministic (beam search with num_beams > 1). sample: the official MiniGPT-4
    # demo's nucleus sampling (top_p 0.9, temperature 1.0, repetition_penalty 1.05 there), each
    # (image, prompt) seeded from (seed, image id, prompt) so a rerun gives the same captions;
    # sampling generates one image at a time (several times slower on a GPU than a batch).
    decoding: Literal["greedy", "sample"] = "greedy"
    top_p: float = 0.9  # sample only
    top_k: int = 50  # sample only; transformers' default, which the official demo relied on
    temperature: float = 1.0  # sample only
    # The official demo uses 1.05. 1.0: none when sampling; greedy then passes nothing, so a
    # checkpoint's own generation_config value (if any) still applies.
    repetition_penalty: float = 1.0
    seed: int = 0  # sample only: base of every (image, prompt) seed
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
        check(0 < self.top_p <= 1, f"{key}.top_p", f"must be in (0, 1], got {self.top_p}")
        check(self.top_k >= 0, f"{key}.top_k", "must be >= 0 (0 = off)")
        check(self.temperature > 0, f"{key}.temperature", "must be > 0")
        check(self.repetition_penalty > 0, f"{key}.repetition_penalty", "must be > 0")
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
