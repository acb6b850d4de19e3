"""A seeded weight initialisation of the project's own, for every tiny random model it builds.

Why: the tiny models (tests, the demo) must compute the same thing whatever versions of torch,
transformers, timm or open_clip are installed. Library init defaults change between releases
(transformers 5 started the BLIP-2 vision tower at std 1e-10, so every image gave the same
tokens), and library init draws from the global RNG in an order that changes with the code. So
after a library builds a tiny model, :func:`seeded_init_` overwrites every parameter by these
rules, which depend only on the seed, each parameter's name and its shape:

- Each parameter draws from its own ``torch.Generator`` seeded with ``crc32(f"{seed}:{name}")``:
  adding, removing or reordering a parameter elsewhere does not shift any other.
- Biases (the name ends in ``bias``): 0.
- Weights of normalisation modules (LayerNorm, GroupNorm, RMSNorm, BatchNorm*, InstanceNorm*,
  and any module whose class name ends in ``Norm``, e.g. transformers' ``LlamaRMSNorm``): 1.
- Weights of convolutions (``nn.Conv1d/2d/3d``): normal(0, 1/sqrt(fan_in)), with
  fan_in = prod(shape[1:]) (input channels per group x kernel size).
- Every other parameter with at least one dimension (Linear weights, embeddings, positional
  embeddings, class embeddings, query tokens, ``in_proj_weight``, projection matrices):
  normal(0, 1/sqrt(shape[d])) with d = -1, the input size of a ``Linear`` and the width of an
  embedding. Matrices that a model applies as ``x @ W`` (open_clip's ``proj``, ML-Decoder's
  ``duplicate_pooling``) have their input size elsewhere: ``fan_in_dims`` names that dimension.
  The scale keeps activations of order one through each layer, which is all a tiny random model
  needs for its outputs to depend on its inputs.
- 0-dim parameters: ``logit_scale`` is log(1 / 0.07), CLIP's starting temperature; any other
  raises, so that a parameter a new library version adds gets a rule instead of a guess.
- Buffers: BatchNorm running statistics are reset (mean 0, var 1, count 0); every other buffer
  (position ids, attention masks, rotary frequencies, anti-alias filters) is derived from the
  config by the library and is left alone.

Tied parameters (a language model's head sharing its embedding) are initialised once, under
their first name, as ``named_parameters`` lists them.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import torch
from torch import nn

#: CLIP's initial temperature: logits = exp(logit_scale) * cosine, exp(...) = 1 / 0.07.
LOGIT_SCALE_INIT = math.log(1 / 0.07)

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*
)
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM_BUFFERS = {"running_mean": 0.0, "running_var": 1.0, "num_batches_tracked": 0}


def parameter_seed(seed: int, name: str) -> int:
    """The generator seed of parameter ``name``: a stable hash of the run's seed and the name.

    ``crc32`` (not Python's ``hash``, which is salted per process) gives the same value in every
    process, so Ray workers rebuild identical models. It is 32 bits because torch's CPU generator
    (mt19937) only uses the low 32 bits of its seed: a wider seed would make seeds that differ
    above bit 32 give the same weights.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return zlib.crc32(f"{seed}:{name}".encode())


def is_norm_module(module: nn.Module) -> bool:
    """Normalisation layers, including library classes that only follow the naming habit."""
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith("Norm")


def _new_value(
    name: str,
    owner: nn.Module,
    param: torch.Tensor,
    generator: torch.Generator,
    fan_in_dims: Mapping[str, int],
) -> torch.Tensor:
    """The initial value of one parameter (float32, CPU), by the rules of the module docstring."""
    leaf = name.rpartition(".")[2]
    shape = tuple(param.shape)
    if param.dim() == 0:
        if leaf == "logit_scale":
            return torch.tensor(LOGIT_SCALE_INIT)
        raise ValueError(
            f"seeded_init_: no rule for the scalar parameter {name!r} of "
            f"{type(owner).__name__}; add one to core/models/seeded_init.py"
        )
    if leaf.endswith("bias"):
        return torch.zeros(shape)
    if leaf == "weight" and is_norm_module(owner):
        return torch.ones(shape)
    if leaf == "weight" and isinstance(owner, _CONV_TYPES):
        fan_in = math.prod(shape[1:])
    else:
        dim = fan_in_dims.get(leaf, -1)
        if not -param.dim() <= dim < param.dim():
            raise ValueError(
                f"seeded_init_: fan_in_dims[{leaf!r}] = {dim} is not a dimension of {name!r} "
                f"with shape {list(shape)}"
            )
        fan_in = shape[dim]
    if fan_in == 0:
        return torch.zeros(shape)
    return torch.randn(shape, generator=generator) / math.sqrt(fan_in)


def seeded_init_(
    module: nn.Module,
    seed: int,
    fan_in_dims: Mapping[str, int] | None = None,
    exclude: Sequence[str] = (),
) -> nn.Module:
    """Overwrite every parameter of ``module`` in place by the rules above; return ``module``.

    ``fan_in_dims`` maps a parameter's own name (the last part, e.g. ``"proj"``) to the dimension
    holding its input size, for matrices used as ``x @ W``. ``exclude`` lists name prefixes to
    leave untouched (e.g. ``"backbone."`` when the backbone came from a checkpoint). The same
    (seed, names, shapes) give the same values whatever the library's own init did before and
    whatever the global RNG state is; the global RNG is not used.
    """
    fan_in_dims = dict(fan_in_dims or {})
    modules = dict(module.named_modules())

    def owner_of(name: str) -> nn.Module:
        return modules[name.rpartition(".")[0]]

    def skipped(name: str) -> bool:
        return any(name.startswith(prefix) for prefix in exclude)

    with torch.no_grad():
        for name, param in module.named_parameters():
            if skipped(name):
                continue
            generator = torch.Generator().manual_seed(parameter_seed(seed, name))
            value = _new_value(name, owner_of(name), param, generator, fan_in_dims)
            param.copy_(value.to(param.dtype))
        for name, buffer in module.named_buffers():
            leaf = name.rpartition(".")[2]
            if skipped(name) or leaf not in _BATCHNORM_BUFFERS:
                continue
            if isinstance(owner_of(name), nn.modules.batchnorm._BatchNorm):
                buffer.fill_(_BATCHNORM_BUFFERS[leaf])
    return module
