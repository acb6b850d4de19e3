"""``python -m ray_jobs.check``: every shipped preset passes, wrong ones fail naming both sides,
and the memory estimate agrees with what a real step allocates.

No Ray, no weights: the check builds real-size models on the meta device in about a second each.
Numbers are checked against values computed here from the architectures (parameter counts), a
real tiny model's generation (KV cache bytes) and the CPU allocator's own accounting of a real
training step (peak memory), never against the check's own output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from core.check import gpus
from core.check.context import Context
from core.check.presets import job_of
from core.check.report import Report
from ray_jobs.check import check

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "ray_jobs" / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))
OK_LINE = re.compile(
    r"^check: ok params=[0-9.e+-]+ peak_gib=[0-9.e+-]+ gpu=\S+ fits=(yes|no) max_batch=\d+$"
)
GIB = 1024**3


def _nodes() -> list[gpus.NodeType]:
    return gpus.read_node_types(REPO / "cluster.yaml")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# Shipped presets pass; wrong ones fail with one line naming both sides
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_shipped_preset_passes(preset: Path) -> None:
    """Every preset passes; those whose workers ask for GPUs land on cluster.yaml's A10Gs and
    fit at the batch size they configure (the demo and tiny ones run on CPU)."""
    status, text = check(["--config", str(preset)])
    last = text.splitlines()[-1]
    assert status == 0, text
    assert OK_LINE.match(last), last
    if " gpu=cpu " not in last:
        assert " gpu=A10G fits=yes " in last, last


def test_class_means_of_another_clip_fail(tmp_path: Path) -> None:
    """ViT-B-32 class means (512 wide) with ViT-L-14 training (768 wide images)."""
    from core.text.class_means import ClassMeans, save_class_means

    means_path = str(tmp_path / "class_means.safetensors")
    classes = [f"c{i}" for i in range(5)]
    save_class_means(
        means_path,
        ClassMeans(classes, torch.zeros(5, 512), [3] * 5, prompts=["p"], clip_model="ViT-B-32"),
    )
    preset = _write(
        tmp_path / "train_regularized_wrong.yaml",
        f"storage: {tmp_path}\nclass_means: {means_path}\nclip: {{model_name: ViT-L-14}}\n"
        "run: {batch_size: 32, num_workers: 1, use_gpu: true}\n",
    )
    status, text = check(["--config", str(preset)])
    last = text.splitlines()[-1]
    assert status == 1
    assert last.startswith("check: failed: mismatch: class-means width")
    assert "ViT-B-32" in last and "512" in last and "ViT-L-14" in last and "768" in last


def test_class_means_clip_from_a_check_key(tmp_path: Path) -> None:
    """Without a class-means file, ``means_clip=`` names the CLIP the means come from."""
    status, text = check(
        ["--config", str(CONFIGS / "train_regularized_vitl14.yaml"), "means_clip=ViT-B-32"]
    )
    last = text.splitlines()[-1]
    assert status == 1 and "512" in last and "768" in last, last


def test_13b_llm_with_the_7b_projection_fails(tmp_path: Path) -> None:
    """A Vicuna-13B folder (hidden 5120) behind MiniGPT-4's 7B ``llama_proj`` (768 -> 4096)."""
    from transformers import LlamaConfig

    llm = tmp_path / "vicuna-13b"
    llm.mkdir()
    LlamaConfig(
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        vocab_size=32000,
        max_position_embeddings=2048,
    ).to_json_file(str(llm / "config.json"))
    status, text = check(
        [
            "--config",
            str(CONFIGS / "caption_minigpt4.yaml"),
            f"captioner.minigpt4.llm_path={llm}",
        ]
    )
    last = text.splitlines()[-1]
    assert status == 1
    assert last.startswith("check: failed: mismatch: llama_proj output")
    assert "4096" in last and "5120" in last and "minigpt4-vicuna0-7b" in last, last


def test_template_of_another_llm_fails() -> None:
    """The LLaMA-2 template over the Vicuna V0 folder of the preset."""
    status, text = check(
        ["--config", str(CONFIGS / "caption_minigpt4.yaml"), "captioner.minigpt4.template=llama2"]
    )
    last = text.splitlines()[-1]
    assert status == 1 and "llama2" in last and "vicuna" in last, last


def test_llama2_preset_passes() -> None:
    status, text = check(
        [
            "--config",
            str(CONFIGS / "caption_minigpt4.yaml"),
            "captioner.minigpt4.template=llama2",
            "captioner.minigpt4.llm_path=/models/llama-2-7b-chat-hf",
            "captioner.minigpt4.checkpoint=/models/minigpt4/pretrained_minigpt4_llama2_7b.pth",
        ]
    )
    assert status == 0 and "fits=yes" in text.splitlines()[-1], text


def test_label_count_that_does_not_match_the_label_file_fails(tmp_path: Path) -> None:
    labels = tmp_path / "labels.json"
    seen = [f"tag{i}" for i in range(919)]
    unseen = [f"concept{i}" for i in range(81)]
    labels.write_text(json.dumps({"seen": seen, "unseen": unseen}))
    preset = _write(
        tmp_path / "train_clip_decoder_wrong.yaml",
        (CONFIGS / "train_clip_decoder_nus_wide.yaml").read_text()
        + f"\nmanifest: {tmp_path / 'manifest.parquet'}\nlabels: {labels}\n",
    )
    status, text = check(["--config", str(preset), "num_labels=1006"])
    last = text.splitlines()[-1]
    assert status == 1
    assert last.startswith("check: failed: mismatch: label count")
    assert "1006" in last and "1000" in last and str(labels) in last, last


def test_nus_wide_label_count_comes_from_the_protocol_lists() -> None:
    """The preset's labels.json is absent here: said so, and 925 + 81 come from NUS-WIDE's own
    TagList1k.txt / Concepts81.txt (counted here independently)."""
    root = REPO.parent / "shared" / "data" / "nus-wide"
    if not (root / "TagList1k.txt").is_file():
        pytest.skip("NUS-WIDE label lists not available")
    tags = [t for t in (root / "TagList1k.txt").read_text().split() if t]
    concepts = [c for c in (root / "Concepts81.txt").read_text().split() if c]
    seen = [t for t in tags if t not in set(concepts)]
    _, text = check(["--config", str(CONFIGS / "train_clip_decoder_nus_wide.yaml")])
    assert "labels: /data/nus-wide/labels.json is absent" in text
    assert f"training {len(seen)} seen labels x 512" in text
    assert f"GZSL {len(seen) + len(concepts)} labels" in text


def test_require_files_makes_a_missing_weight_an_error() -> None:
    status, text = check(["--config", str(CONFIGS / "caption_minigpt4.yaml"), "--require-files"])
    last = text.splitlines()[-1]
    assert status == 1
    assert last == (
        "check: failed: missing file captioner.minigpt4.blip2_path: /models/blip2-flan-t5-xxl "
        "(--require-files)"
    )


def test_job_from_file_name() -> None:
    assert job_of("x/train_regularized_vitl14.yaml") == ("train_regularized", "")
    assert job_of("train_linear_probe_demo.yaml") == ("train", "linear_probe")
    assert job_of("tune_clip_decoder_demo.yaml") == ("tune", "")
    with pytest.raises(ValueError, match="--job"):
        job_of("my_preset.yaml")


# --------------------------------------------------------------------------------------------
# Sizes against independent values
# --------------------------------------------------------------------------------------------


def test_cluster_gpus_from_cluster_yaml() -> None:
    nodes = _nodes()
    one = gpus.place(nodes, 1.0)
    assert (one.name, one.memory_gib) == ("A10G", 24)
    assert gpus.place(nodes, 0.5).memory_gib == 12  # two actors share one A10G
    assert gpus.cluster_gpus(nodes) == 8 * 1 + 2 * 4  # gpu_1x x 8, gpu_4x x 2


def test_parameter_counts_of_the_real_architectures() -> None:
    """ViT-L/14's image tower and LLaMA-7B counted from their layer shapes by hand."""
    from core.check import meta_build, published
    from core.check.memory import parameter_count

    w, layers, patch, tokens, out = 1024, 24, 14, 257, 768
    block = 12 * w * w + 13 * w  # qkv + out proj + MLP 4w, with biases and two layer norms
    vit_l = 3 * patch * patch * w + w + tokens * w + 2 * w + layers * block + 2 * w + w * out
    classifier = meta_build.classifier("ViT-L-14", 101)
    assert parameter_count(classifier) == vit_l + out * 101 + 101

    h, inter, n, vocab = 4096, 11008, 32, 32000
    llama_7b = 2 * vocab * h + n * (4 * h * h + 3 * h * inter + 2 * h) + h
    assert llama_7b == 6_738_415_616
    llm = meta_build.causal_lm(published.load("vicuna-7b-v0")["config"])
    assert parameter_count(llm) == llama_7b


def test_kv_cache_matches_a_real_generation() -> None:
    """The check's KV cache for batch x (prompt + new tokens) equals the bytes of the cache a
    real (tiny, random) LLaMA holds after ``generate``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.check import fake_device, meta_build
    from core.check.captioning import generation_peak

    values = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
    }
    batch, prompt, new = 3, 7, 5
    torch.manual_seed(0)
    real = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in values.items() if k != "model_type"}))
    out = real.generate(
        inputs_embeds=torch.randn(batch, prompt, 64),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    cache = out.past_key_values
    real_bytes = sum(
        t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
    )
    # generate stops after the last new token without feeding it back: one position short.
    positions = cache.layers[0].keys.shape[2]
    model = meta_build.causal_lm(values)
    mode = fake_device.new_mode()
    fake_device.to_fake(model, mode, torch.device("cpu"))
    _, estimate, _ = generation_peak(model, values, mode, batch, prompt, new, torch.float32)
    assert positions == prompt + new - 1
    assert estimate == real_bytes * (prompt + new) // positions


# --------------------------------------------------------------------------------------------
# The memory estimate against a real training step's peak
# --------------------------------------------------------------------------------------------
#
# The real peak is read from the CPU allocator: with ``profile_memory=True`` torch's profiler
# records every allocation and free of the CPU allocator ([memory] events, bytes signed); summed
# in time order they give the bytes alive at each moment, and their maximum is the step's true
# peak, temporaries and library workspaces included. Profiling starts before the model is built,
# so weights, gradients and AdamW state are counted as well. The run follows the engine's order
# (zero_grad, forward, backward, optimizer step) for two steps, so the second step meets the
# optimizer state. The estimate never runs a real tensor: it comes
# from shapes on fake tensors (core.check.memory).

TEST_VIT = {
    "embed_dim": 96,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
}


def _real_peak(step) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return peak


def _cpu_context(keys: dict[str, str]) -> Context:
    return Context(Report(), [gpus.NodeType("cpu", "m5.2xlarge", 0, 8, 1)], None, keys)


def test_memory_estimate_of_an_open_clip_vit_training_step(tmp_path: Path) -> None:
    import open_clip

    from core.check.training import check_classifier
    from core.config import TrainRegularizedConfig, config_from_dict
    from core.losses import regularized_ce_loss
    from core.models.clip_classifier import ClipClassifier

    (tmp_path / "check-test-vit.json").write_text(json.dumps(TEST_VIT))
    open_clip.add_model_config(str(tmp_path))
    batch, classes = 16, 10
    cfg = config_from_dict(
        TrainRegularizedConfig,
        {
            "clip": {"model_name": "check-test-vit"},
            "storage": str(tmp_path),
            "run": {"batch_size": batch, "amp": False},
        },
    )
    ctx = _cpu_context({"num_classes": str(classes), "means_clip": "check-test-vit"})
    check_classifier(ctx, cfg, "regularized")

    def step() -> None:
        torch.manual_seed(0)
        clip = open_clip.create_model("check-test-vit")
        model = ClipClassifier(clip.visual, 96, classes)
        del clip
        groups = [{"params": model.encoder.parameters()}, {"params": model.head.parameters()}]
        optimizer = torch.optim.AdamW(groups, lr=1e-4)
        means = torch.randn(classes, 96)
        for _ in range(2):
            images = torch.randn(batch, 3, 64, 64)
            labels = torch.randint(0, classes, (batch,))
            optimizer.zero_grad(set_to_none=True)
            logits, x = model(images)
            loss = regularized_ce_loss(logits, x, labels, means, 1.0)["loss"]
            loss.backward()
            optimizer.step()

    measured = _real_peak(step)
    assert measured > 40 * 2**20  # a step of some size, not a trivial one
    assert abs(ctx.report.peak - measured) <= 0.25 * measured, (ctx.report.peak, measured)


def test_memory_estimate_of_a_tresnet_ml_decoder_training_step() -> None:
    from core.check.training import check_clip_decoder
    from core.config import ClipDecoderTrainConfig, config_from_dict
    from core.models.clip_decoder import build_clip_decoder, seen_label_loss

    batch, size = 16, 128
    cfg = config_from_dict(
        ClipDecoderTrainConfig,
        {
            "clip": {"model_name": "tiny-vit"},
            "model": {"backbone": "tresnet-tiny", "image_size": size},
            "run": {"batch_size": batch, "amp": False},
        },
    )
    ctx = _cpu_context({})
    check_clip_decoder(ctx, cfg, "clip_decoder")  # no manifest: the demo's 7 seen + 5 unseen labels

    def step() -> None:
        torch.manual_seed(0)
        model = build_clip_decoder(32, "tresnet-tiny", dropout=0.1).train()
        backbone = {id(p) for p in model.backbone.parameters()}
        head = [p for p in model.parameters() if id(p) not in backbone]
        optimizer = torch.optim.AdamW(
            [{"params": model.backbone.parameters()}, {"params": head}], lr=1e-4
        )
        embeddings = torch.randn(12, 32)
        for _ in range(2):
            images = torch.randn(batch, 3, size, size)
            targets = torch.as_tensor(np.random.default_rng(0).random((batch, 12)) < 0.3)
            optimizer.zero_grad(set_to_none=True)
            terms, _ = seen_label_loss(
                model, images, embeddings, targets.float(), list(range(7)), 1.0, 1.0
            )
            terms["loss"].backward()
            optimizer.step()

    measured = _real_peak(step)
    assert measured > 15 * 2**20
    assert abs(ctx.report.peak - measured) <= 0.25 * measured, (ctx.report.peak, measured)


def test_job_flag_for_any_file_name(tmp_path: Path) -> None:
    """``--job train --method linear_probe`` for a preset whose name does not say its job."""
    preset = _write(tmp_path / "probe.yaml", (CONFIGS / "train_linear_probe_demo.yaml").read_text())
    status, text = check(["--config", str(preset)])
    assert status == 1 and "--job" in text.splitlines()[-1]
    status, text = check(["--job", "train", "--method", "linear_probe", "--config", str(preset)])
    assert status == 0 and "job: train --method linear_probe" in text, text


def test_concurrent_trials_beyond_the_cluster_fail() -> None:
    """5 trials x 4 GPU workers need 20 GPUs; cluster.yaml starts at most 8 + 2 x 4 = 16."""
    status, text = check(
        ["--config", str(CONFIGS / "tune_regularized_vitl14.yaml"), "max_concurrent_trials=5"]
    )
    last = text.splitlines()[-1]
    assert status == 1 and "20 GPUs" in last and "16" in last, last


def test_a_measurement_is_made_once_per_configuration(monkeypatch) -> None:
    """Checking a preset again measures nothing again and reports the same numbers; a preset
    that changes what a measurement depends on (here the prompt's length) is measured anew."""
    from core.check import memory

    calls: list[int] = []
    measure = memory.measure_forward

    def counted(*args, **kwargs):
        calls.append(1)
        return measure(*args, **kwargs)

    monkeypatch.setattr(memory, "_MEASURED", {})
    monkeypatch.setattr(memory, "measure_forward", counted)
    preset = ["--config", str(CONFIGS / "caption_minigpt4_tiny.yaml")]
    first, first_text = check(preset)
    made = len(calls)
    again, again_text = check(preset)
    assert first == again == 0 and made > 0

    assert len(calls) == made
    assert again_text.splitlines()[-1] == first_text.splitlines()[-1]  # params, peak, max batch
    longer = "Describe every object in this image, its colour, its size and where it is."
    status, text = check([*preset, f"captioner.prompts=[{longer}]"])
    assert status == 0 and len(calls) > made
    assert text.splitlines()[-1] != first_text.splitlines()[-1]  # a larger prefill
