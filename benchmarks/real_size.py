"""Real-size models with random weights, measured side by side in one run (no Ray, no files).

    python benchmarks/real_size.py           # full size, on the GPU when there is one
    python benchmarks/real_size.py --quick   # a reduced form for a CPU: minutes on 2 cores

Three measurements, each with the project's own code paths:

1. LMM-regularized CLIP: a ViT-L/14 image tower + linear head (101 classes), one training step
   as the engine runs it (bfloat16 autocast on a GPU that has it, float16 otherwise, float32 on
   CPU; ``J = CE + alpha * J_reg``; the engine's AdamW): images/s, and model FLOP/s (counted by
   ``torch.utils.flop_counter`` on one step) as a fraction of the same device's dense matmul
   throughput measured in this run (bfloat16 on GPU, float32 on CPU).
2. CLIP-Decoder: TResNet-M + zero-shot ML-Decoder, 1006 labels (the step scores the 925 seen
   ones, as NUS-WIDE training does): images/s and the same fraction.
3. MiniGPT-4 generation: EVA ViT-g/14 + Q-Former + llama_proj + a 7B LLaMA-architecture LLM
   (float16 on GPU): generated tokens/s and images/s of batched generation (batches 1, 8, 32;
   300 new tokens) against one image at a time, as the official demo loop does. Every sequence
   generates exactly the requested tokens (random weights would otherwise stop at random), and a
   word-level stand-in tokenizer writes the official prompt in about as many tokens as LLaMA's.

4. Training-step options, side by side on the TResNet-M step (``run.channels_last``,
   ``run.compile``): images/s with each on and off against the plain step, and how long the first
   compiled step took. ``--quick`` times them at its small batch (on a CPU without compile,
   which takes minutes there); ``--skip options`` leaves them out.

On a GPU each part also prints its measured peak memory beside ``python -m ray_jobs.check``'s
estimate for the same model and batch. ``--quick`` keeps every width but cuts depth (ViT-L to 2
of 24 blocks, ViT-g to 2 of 39, the LLM to 2 of 32 layers), batch sizes, steps and new tokens,
and says so in its output. The last line:
``vitl14_img_s=<x> vitl14_mfu=<y> clip_decoder_img_s=<z> minigpt4_batched_vs_single=<w>``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.models.seeded_init import is_norm_module

GIB = 1024**3


@dataclass
class Settings:
    """What one run measures; ``--quick`` shrinks depth, batches, steps and tokens."""

    device: torch.device
    quick: bool
    vit_layers: int = 24
    vit_batch: int = 32  # per worker: train_regularized_vitl14.yaml's 128 over 4 workers
    decoder_batch: int = 32  # per worker: train_clip_decoder_nus_wide.yaml's 128 over 4
    steps: int = 10
    warmup: int = 3
    vitg_layers: int = 39
    llm_layers: int = 32
    new_tokens: int = 300
    batches: tuple[int, ...] = (1, 8, 32)
    single_images: int = 2  # images captioned one at a time for the baseline

    @classmethod
    def make(cls, quick: bool, device: torch.device) -> Settings:
        if not quick:
            return cls(device, quick)
        return cls(
            device,
            quick,
            vit_layers=2,
            vit_batch=2,
            decoder_batch=2,
            steps=2,
            warmup=1,
            vitg_layers=2,
            llm_layers=2,
            new_tokens=8,
            batches=(1, 4),
            single_images=2,
        )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_init_(module: nn.Module) -> nn.Module:
    """Fast random weights on the module's device: norms 1, biases 0, others N(0, 1/fan_in)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            owner = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
            if name.endswith("bias") or param.dim() == 0:
                param.zero_()
            elif name.endswith("weight") and is_norm_module(owner):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 1.0 / math.sqrt(param.shape[-1]))
        for name, buffer in module.named_buffers():
            if name.endswith("running_var"):
                buffer.fill_(1.0)
            elif name.endswith("running_mean"):
                buffer.zero_()
    return module


def materialise(module: nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """A meta-built module on ``device`` with random weights (no CPU init of billions).

    ``to_empty`` leaves buffers uninitialised too; the ones derived from the config (rotary
    frequencies, position ids) are computed again.
    """
    if dtype is not None:
        module = module.to(dtype)  # on meta: free, and the device never holds float32 copies
    module = module.to_empty(device=device)
    random_init_(module)
    for sub in module.modules():
        if hasattr(sub, "inv_freq") and hasattr(sub, "config"):
            with torch.device("cpu"):
                fresh = type(sub)(sub.config)
            for name, buffer in fresh.named_buffers(recurse=False):
                setattr(sub, name, buffer.to(device))
        for name, buffer in sub.named_buffers(recurse=False):
            if name == "position_ids":
                positions = torch.arange(buffer.shape[-1], device=device)
                buffer.copy_(positions.expand_as(buffer))
    return module


def matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Dense matmul throughput (FLOP/s) of this device: the best of several square products."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    repeats = 20 if device.type == "cuda" else 3
    for _ in range(2):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * n**3 / best


def step_flops(step: Callable[[], torch.Tensor]) -> int:
    """FLOPs of one forward + backward, counted op by op (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step().backward()
    return counter.get_total_flops()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else float("nan")


def check_estimate(job: str, values: dict[str, Any], keys: dict[str, str]) -> float:
    """``ray_jobs.check``'s peak (GiB) for the same model and batch on one GPU worker."""
    from core.check.context import Context
    from core.check.gpus import NodeType
    from core.check.presets import config_class, run_check
    from core.check.report import Report
    from core.config import config_from_dict

    ctx = Context(Report(), [NodeType("bench", "p5.48xlarge", 8, 96, 1)], None, keys)
    run_check(ctx, job, "", config_from_dict(config_class(job, ""), values))
    return ctx.report.peak / GIB


def train_loop(
    settings: Settings, loss_of: Callable[[], torch.Tensor], groups: tuple, count: bool = True
) -> tuple[float, int]:
    """Seconds per step of the engine's step (autocast forward, zero_grad, backward, AdamW) and
    the FLOPs of one step (0 without ``count``)."""
    from core.config import OptimConfig
    from core.train.loop_parts import autocast, build_optimizer, grad_scaler

    device = settings.device
    optimizer, scheduler = build_optimizer(*groups, OptimConfig(), 1000, 1)
    scaler = grad_scaler(device, True)

    def step() -> None:
        with autocast(device, True):
            loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

    for _ in range(settings.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(settings.steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / settings.steps

    def counted() -> torch.Tensor:
        with autocast(device, True):
            return loss_of()

    optimizer.zero_grad(set_to_none=True)
    return seconds, step_flops(counted) if count else 0


# --------------------------------------------------------------------------------------------
# ViT-L/14 regularized training
# --------------------------------------------------------------------------------------------


def vit_name(layers: int) -> str:
    """open_clip's ViT-L-14, registered under another name when its depth is cut."""
    import open_clip

    if layers == 24:
        return "ViT-L-14"
    name = f"ViT-L-14-{layers}layers"
    if name not in open_clip.list_models():
        cfg = json.loads(json.dumps(open_clip.get_model_config("ViT-L-14")))
        cfg["vision_cfg"]["layers"] = layers
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, f"{name}.json").write_text(json.dumps(cfg))
            open_clip.add_model_config(folder)
    return name


def bench_vit(settings: Settings) -> tuple[float, float]:
    """(images/s, model FLOP/s) of the regularized ViT-L/14 training step."""
    from core.check import meta_build
    from core.losses import regularized_ce_loss

    device, batch, classes = settings.device, settings.vit_batch, 101
    name = vit_name(settings.vit_layers)
    model = materialise(meta_build.classifier(name, classes), device).train()
    means = torch.randn(classes, 768, device=device)

    def loss_of() -> torch.Tensor:
        images = torch.randn(batch, 3, 224, 224, device=device)
        labels = torch.randint(0, classes, (batch,), device=device)
        logits, x = model(images)
        return regularized_ce_loss(logits, x, labels, means, 0.1)["loss"]

    reset_peak(device)
    groups = (model.encoder.parameters(), model.head.parameters())
    seconds, flops = train_loop(settings, loss_of, groups)
    img_s = batch / seconds
    print(
        f"vit-l/14 regularized step: {settings.vit_layers} of 24 blocks, batch {batch}: "
        f"{seconds * 1000:.0f} ms/step, {img_s:.1f} images/s, {flops / 1e9:.0f} GFLOP/step"
    )
    if device.type == "cuda" and not settings.quick:
        values = {"clip": {"model_name": "ViT-L-14"}, "run": {"batch_size": batch, "use_gpu": True}}
        estimate = check_estimate(
            "train_regularized", values, {"num_classes": "101", "means_clip": "ViT-L-14"}
        )
        print(f"  peak memory: measured {peak_gib(device):.2f} GiB, check {estimate:.2f} GiB")
    return img_s, flops / seconds


# --------------------------------------------------------------------------------------------
# TResNet-M + ML-Decoder (CLIP-Decoder)
# --------------------------------------------------------------------------------------------


def decoder_step(
    settings: Settings, channels_last: bool = False, compile: bool = False
) -> tuple[Any, Callable[[], torch.Tensor], tuple]:
    """(model, loss of one step, parameter groups) of the CLIP-Decoder step on 925 seen labels,
    with the worker loop's ``run.channels_last`` / ``run.compile`` handling."""
    from core.models.clip_decoder import build_clip_decoder, seen_label_loss
    from core.train.loop_parts import maybe_compile, to_device

    device, batch, seen, unseen, text_dim = settings.device, settings.decoder_batch, 925, 81, 512
    torch.manual_seed(0)
    model = build_clip_decoder(text_dim, "tresnet_m").to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run_model = maybe_compile(model, compile)
    embeddings = torch.randn(seen + unseen, text_dim, device=device)
    seen_idx = torch.arange(seen, device=device)

    def loss_of() -> torch.Tensor:
        batch_data = {
            "image": torch.randn(batch, 3, 224, 224, device=device),
            "targets": (torch.rand(batch, seen + unseen, device=device) < 0.01).float(),
        }
        batch_data = to_device(batch_data, device, channels_last)
        terms, _ = seen_label_loss(
            run_model, batch_data["image"], embeddings, batch_data["targets"], seen_idx, 1.0, 1.0
        )
        return terms["loss"]

    backbone = {id(p) for p in model.backbone.parameters()}
    head = [p for p in model.parameters() if id(p) not in backbone]
    return model, loss_of, (model.backbone.parameters(), head)


def bench_clip_decoder(settings: Settings) -> tuple[float, float]:
    """(images/s, model FLOP/s) of the CLIP-Decoder training step on 925 seen labels."""
    device, batch = settings.device, settings.decoder_batch
    _, loss_of, groups = decoder_step(settings)
    reset_peak(device)
    seconds, flops = train_loop(settings, loss_of, groups)
    img_s = batch / seconds
    print(
        f"tresnet-m + ml-decoder step: 1006 labels (925 seen), batch {batch}: "
        f"{seconds * 1000:.0f} ms/step, {img_s:.1f} images/s, {flops / 1e9:.0f} GFLOP/step"
    )
    if device.type == "cuda" and not settings.quick:
        values = {
            "clip": {"model_name": "ViT-B-32"},
            "model": {"backbone": "tresnet_m", "image_size": 224},
            "manifest": "/nonexistent/nus-wide/manifest.parquet",
            "run": {"batch_size": batch, "use_gpu": True},
        }
        estimate = check_estimate("train_clip_decoder", values, {})
        print(f"  peak memory: measured {peak_gib(device):.2f} GiB, check {estimate:.2f} GiB")
    return img_s, flops / seconds


# --------------------------------------------------------------------------------------------
# MiniGPT-4 batched generation
# --------------------------------------------------------------------------------------------


def word_tokenizer(texts: list[str]) -> Any:
    """A word-level tokenizer over the prompt's words (LLaMA special tokens), so the official
    prompt takes about as many tokens as under LLaMA's SentencePiece."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(("<unk>", "<s>", "</s>", "<pad>"))}
    splitter = pre_tokenizers.Whitespace()
    for text in texts:
        for word, _ in splitter.pre_tokenize_str(text):
            vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = splitter
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def build_minigpt4(settings: Settings, prompt: str) -> Any:
    """The project's MiniGPT-4 captioner around real-size parts with random weights."""
    from core.captioning.base import GenerationSettings
    from core.captioning.minigpt4 import MiniGPT4CaptionModel, build_prompt
    from core.check import meta_build, published

    device = settings.device
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    blip2 = json.loads(json.dumps(published.load("blip2-flan-t5-xxl")))
    blip2["vision_config"]["num_hidden_layers"] = settings.vitg_layers
    llm_values = dict(published.load("vicuna-7b-v0")["config"])
    llm_values["num_hidden_layers"] = settings.llm_layers
    side = meta_build.blip2_image_side(blip2)
    model = MiniGPT4CaptionModel.__new__(MiniGPT4CaptionModel)
    model.cfg, model.template, model.model_name = None, "vicuna", "minigpt4-benchmark"
    model.generation = GenerationSettings(max_new_tokens=settings.new_tokens)
    model.device, model.dtype, model.image_size = device, dtype, side.image_size
    model.vision = materialise(side.vision, device, dtype).eval()
    model.qformer = materialise(side.qformer, device, torch.float32).eval()
    model.query_tokens = torch.randn(tuple(side.query_tokens.shape), device=device) * 0.02
    with torch.device("meta"):
        proj = nn.Linear(768, int(llm_values["hidden_size"]))
    model.llama_proj = materialise(proj, device, dtype).eval()
    model.llm = materialise(meta_build.causal_lm(llm_values), device, dtype).eval()
    model.llm.generation_config.eos_token_id = None  # fixed-length answers (see module doc)
    model.tokenizer = word_tokenizer([build_prompt("vicuna", prompt)])
    model.tokenizer.padding_side = "left"
    model.num_query_tokens = int(side.query_tokens.shape[1])
    return model


def generate(model: Any, images: list[np.ndarray], prompt: str, new_tokens: int) -> None:
    """The captioner's batched path (prompt embedding, left padding) with a fixed answer length."""
    embeds, mask = model.build_inputs_embeds(images, prompt)
    with torch.inference_mode():
        out = model.llm.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=model.tokenizer.pad_token_id,
        )
    if out.shape[1] != new_tokens:
        raise RuntimeError(f"generated {out.shape[1]} tokens, asked for {new_tokens}")


def bench_minigpt4(settings: Settings) -> float:
    from core.captioning.minigpt4 import IMAGE_PLACEHOLDER, build_prompt

    prompt = "Give 10 semantic descriptions for the image."
    device, new = settings.device, settings.new_tokens
    model = build_minigpt4(settings, prompt)
    before, after = build_prompt("vicuna", prompt).split(IMAGE_PLACEHOLDER)
    prompt_tokens = len(model.tokenizer(before + after).input_ids) + model.num_query_tokens
    rng = np.random.default_rng(0)

    def images(n: int) -> list[np.ndarray]:
        return [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(n)]

    generate(model, images(1), prompt, min(new, 4))  # warm-up
    sync(device)
    start = time.perf_counter()
    for image in images(settings.single_images):
        generate(model, [image], prompt, new)
    sync(device)
    single = settings.single_images / (time.perf_counter() - start)
    print(
        f"minigpt4: vit-g {settings.vitg_layers} of 39 blocks, LLM {settings.llm_layers} of 32 "
        f"layers, prompt {prompt_tokens} tokens, {new} new tokens; one image at a time: "
        f"{single:.3f} images/s, {single * new:.1f} tokens/s"
    )
    best = single
    for batch in settings.batches:
        if batch == 1:
            continue
        reset_peak(device)
        sync(device)
        start = time.perf_counter()
        generate(model, images(batch), prompt, new)
        sync(device)
        rate = batch / (time.perf_counter() - start)
        best = max(best, rate)
        line = (
            f"  batch {batch}: {rate:.3f} images/s, {rate * new:.1f} tokens/s, "
            f"{rate / single:.2f}x one at a time"
        )
        if device.type == "cuda" and not settings.quick:
            caption = {
                "backend": "minigpt4",
                "minigpt4": {
                    "blip2_path": "/x/blip2",
                    "checkpoint": "/x/c.pth",
                    "llm_path": "/x/v",
                },
                "batch_size": batch,
                "max_new_tokens": new,
                "num_gpus": 1.0,
                "dtype": "float16",
                "prompts": [prompt],
            }
            estimate = check_estimate("caption", {"captioner": caption}, {"llm": "vicuna-7b-v0"})
            line += f"; peak memory {peak_gib(device):.2f} GiB, check {estimate:.2f} GiB"
        print(line)
    return best / single


def bench_step_options(settings: Settings, plain_img_s: float) -> dict[str, float]:
    """images/s of the TResNet-M step with ``run.channels_last`` and ``run.compile`` on, each
    against the plain step measured just before (same batch, steps and device)."""
    from core.train.loop_parts import compile_unsupported

    batch = settings.decoder_batch
    rates = {"plain": plain_img_s}
    variants = [("channels_last", True, False), ("compile", False, True)]
    if settings.device.type == "cuda":
        variants.append(("channels_last+compile", True, True))
    reason = compile_unsupported()
    if not reason and settings.quick and settings.device.type == "cpu":
        # Inductor had not compiled TResNet-M's forward and backward after 90 s on 2 shared
        # cores, longer than all of --quick's extras; the full run and GPUs measure it.
        reason = "--quick on a CPU: compiling TResNet-M takes minutes here"
    for name, channels_last, compile in variants:
        if compile and reason:
            print(f"  {name}: skipped ({reason})")
            continue
        _, loss_of, groups = decoder_step(settings, channels_last, compile)
        first = 0.0
        if compile:  # the first step compiles: timed on its own, outside the steady rate
            import torch._dynamo

            torch._dynamo.reset()
            start = time.perf_counter()
            loss_of().backward()
            sync(settings.device)
            first = time.perf_counter() - start
        seconds, _ = train_loop(settings, loss_of, groups, count=False)
        rates[name] = batch / seconds
        extra = f", first step (compiling) {first:.1f} s" if compile else ""
        print(
            f"  {name}: {rates[name]:.2f} images/s = {rates[name] / plain_img_s:.2f}x the plain "
            f"step{extra}"
        )
    return rates


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced depth, batches, tokens")
    parser.add_argument("--device", default="", help="cuda / cpu (default: cuda when present)")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["vit", "decoder", "options", "minigpt4"]
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = Settings.make(args.quick, device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # Measured again after the models: on a shared host the better of the two is the device's.
    matmul = matmul_flops(device, dtype)
    print(f"device: {name}; dense {str(dtype)[6:]} matmul {matmul / 1e12:.2f} TFLOP/s")
    if args.quick:
        print(
            "quick: widths as published, depth cut (ViT-L 2/24 blocks, ViT-g 2/39, LLM 2/32), "
            f"batches {settings.vit_batch} (training) and {settings.batches} (generation), "
            f"{settings.steps} timed steps, {settings.new_tokens} new tokens; not the real numbers"
        )
    nan = float("nan")
    vit = bench_vit(settings) if "vit" not in args.skip else (nan, nan)
    decoder = bench_clip_decoder(settings) if "decoder" not in args.skip else (nan, nan)
    if "decoder" not in args.skip and "options" not in args.skip:
        print("tresnet-m + ml-decoder step options (run.channels_last, run.compile):")
        bench_step_options(settings, decoder[0])
    ratio = bench_minigpt4(settings) if "minigpt4" not in args.skip else nan
    again = matmul_flops(device, dtype)
    matmul = max(matmul, again)
    print(f"dense matmul again: {again / 1e12:.2f} TFLOP/s; fractions use {matmul / 1e12:.2f}")
    for label, (_, flop_s) in (("vit-l/14", vit), ("tresnet-m + ml-decoder", decoder)):
        print(f"{label}: {flop_s / 1e12:.3f} TFLOP/s = {flop_s / matmul:.3f} of dense matmul")
    vit = (vit[0], vit[1] / matmul)
    last = (
        f"vitl14_img_s={vit[0]:.2f} vitl14_mfu={vit[1]:.3f} clip_decoder_img_s={decoder[0]:.2f} "
        f"minigpt4_batched_vs_single={ratio:.2f}"
    )
    print(last)
    return last


if __name__ == "__main__":
    main()
