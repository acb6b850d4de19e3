"""The project's seeded init: reproducible, by the documented rules, independent of library init."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from core.models.clip_decoder import build_clip_decoder
from core.models.open_clip_models import build_clip
from core.models.seeded_init import parameter_seed, seeded_init_


class FancyNorm(nn.Module):
    """A library-style norm layer known only by its class name (like ``LlamaRMSNorm``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))


class Toy(nn.Module):
    """One of each kind of parameter the tiny models hold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.embed = nn.Embedding(50, 16)
        self.positional_embedding = nn.Parameter(torch.empty(10, 16))
        self.query_tokens = nn.Parameter(torch.empty(1, 4, 16))
        self.attn = nn.MultiheadAttention(16, 2)
        self.ln = nn.LayerNorm(16)
        self.rms = FancyNorm(16)
        self.fc = nn.Linear(16, 24)
        self.proj = nn.Parameter(torch.empty(16, 6))  # used as x @ proj
        self.logit_scale = nn.Parameter(torch.empty(()))


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_same_state_different_seed_different() -> None:
    a, b, c = seeded_init_(Toy(), 7), seeded_init_(Toy(), 7), seeded_init_(Toy(), 8)
    assert states_equal(a, b)
    sa, sc = a.state_dict(), c.state_dict()
    random = ["conv.weight", "embed.weight", "positional_embedding", "query_tokens"]
    random += ["attn.in_proj_weight", "attn.out_proj.weight", "fc.weight", "proj"]
    for name in random:
        assert not torch.equal(sa[name], sc[name]), name


def test_independent_of_library_init_and_global_rng() -> None:
    """Whatever the library drew before (and with whatever global seed), the result is equal."""
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    torch.manual_seed(1)
    first = LlamaForCausalLM(config)
    torch.manual_seed(2)
    second = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in second.parameters():
            p.uniform_(-3, 3)  # a library with very different defaults
    assert not states_equal(first, second)
    seeded_init_(first, 3)
    seeded_init_(second, 3)
    assert states_equal(first, second)

    # ... and the global RNG is neither used nor moved.
    torch.manual_seed(11)
    expected = torch.rand(4)
    torch.manual_seed(11)
    seeded_init_(first, 0)
    assert torch.equal(torch.rand(4), expected)


def test_linear_and_conv_weights_follow_the_rule() -> None:
    linear = seeded_init_(nn.Linear(512, 256), 0).weight.detach()
    conv = seeded_init_(nn.Conv2d(16, 64, 3), 0).weight.detach()
    for weight, fan_in in ((linear, 512), (conv, 16 * 9)):
        n, std = weight.numel(), 1 / math.sqrt(fan_in)
        # The sample std of n normals has a relative error of about 1/sqrt(2n): 0.2% for the
        # linear layer, 0.7% for the conv; 5% is many of those, yet catches any wrong fan-in.
        assert abs(float(weight.std()) / std - 1) < 0.05
        assert abs(float(weight.mean())) < 5 * std / math.sqrt(n)


def test_norms_biases_scalars_and_fan_in_dims() -> None:
    toy = Toy()
    toy.bn.running_mean.fill_(3.0)
    toy.bn.running_var.fill_(5.0)
    toy.bn.num_batches_tracked.fill_(9)
    seeded_init_(toy, 0, fan_in_dims={"proj": 0})
    for norm_weight in (toy.bn.weight, toy.ln.weight, toy.rms.weight):
        assert torch.equal(norm_weight, torch.ones_like(norm_weight))
    for bias in (toy.conv.bias, toy.bn.bias, toy.ln.bias, toy.fc.bias, toy.attn.in_proj_bias):
        assert torch.equal(bias, torch.zeros_like(bias))
    assert torch.equal(toy.bn.running_mean, torch.zeros(8))
    assert torch.equal(toy.bn.running_var, torch.ones(8))
    assert int(toy.bn.num_batches_tracked) == 0
    assert float(toy.logit_scale.detach()) == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    # proj [16, 6] draws with std 1/sqrt(16) (its dim 0), the same stream as the default rule
    # would scale by 1/sqrt(6).
    default = seeded_init_(Toy(), 0).proj.detach()
    torch.testing.assert_close(toy.proj.detach() * math.sqrt(16), default * math.sqrt(6))

    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.temperature = nn.Parameter(torch.ones(()))

    with pytest.raises(ValueError, match="temperature"):
        seeded_init_(Odd(), 0)
    with pytest.raises(ValueError, match="fan_in_dims"):
        seeded_init_(Toy(), 0, fan_in_dims={"proj": 2})
    with pytest.raises(ValueError, match="seed"):
        seeded_init_(Toy(), -1)


def test_other_parameters_do_not_shift_and_exclude_is_left_alone() -> None:
    small = seeded_init_(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), 5)
    bigger = seeded_init_(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2), nn.Linear(2, 9)), 5)
    for name, value in small.state_dict().items():
        assert torch.equal(bigger.state_dict()[name], value), name

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    kept = model[0].weight.detach().clone()
    seeded_init_(model, 5, exclude=("0.",))
    assert torch.equal(model[0].weight, kept)
    assert torch.equal(model[1].weight, small[1].weight)


@pytest.mark.parametrize("preset", ["tiny-vit", "tresnet-tiny"])
def test_tiny_presets_are_seeded_init_and_names_do_not_collide(preset: str) -> None:
    """A tiny preset's weights are exactly seeded_init_'s with the builder's seed (whatever the
    model held before), and no two parameters of a preset share a generator seed."""
    if preset == "tiny-vit":
        model = build_clip(preset, "", seed=4).model
        again = seeded_init_(
            build_clip(preset, "", seed=0).model, 4, {"proj": 0, "text_projection": 0}
        )
    else:
        model = build_clip_decoder(32, backbone=preset, seed=4)
        again = seeded_init_(
            build_clip_decoder(32, backbone=preset, seed=0), 4, {"duplicate_pooling": -2}
        )
    assert states_equal(model, again)
    names = [n for n, _ in model.named_parameters()]
    for seed in (0, 1, 4):
        assert len({parameter_seed(seed, n) for n in names}) == len(names)


def test_tiny_clip_decoder_keeps_a_backbone_loaded_from_a_checkpoint(tmp_path) -> None:
    donor = build_clip_decoder(32, backbone="tresnet-tiny", seed=1)
    ckpt = tmp_path / "backbone.pth"
    torch.save(donor.backbone.state_dict(), ckpt)
    model = build_clip_decoder(32, backbone="tresnet-tiny", pretrained=str(ckpt), seed=2)
    fresh = build_clip_decoder(32, backbone="tresnet-tiny", seed=2)
    assert states_equal(model.backbone, donor.backbone)
    assert states_equal(model.head, fresh.head)
    assert states_equal(model.image_proj, fresh.image_proj)
