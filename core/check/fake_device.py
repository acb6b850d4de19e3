"""Real-size models on a device that is not there: fake tensors, GPU autocast, GPU attention.

A model is built on torch's ``meta`` device (shapes, no storage, no init cost), then its
parameters become ``FakeTensor``s (meta storage under a device label, ``cuda`` or ``cpu``). Ops on
them compute only shapes and dtypes, so a ViT-L/14 training forward or a 7B LLM prefill "runs" in
about a second on a CPU. The device label matters because the GPU's behaviour is what the job
gets: autocast's CUDA rules (which ops run in bfloat16, which in float32) dispatch on it, and
attention must take the fused kernels a GPU takes, not the math fallback that materialises every
attention matrix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode


def new_mode() -> FakeTensorMode:
    """A fake-tensor mode for one estimate (tensors of two modes must not meet)."""
    return FakeTensorMode()


def to_fake(module: nn.Module, mode: FakeTensorMode, device: torch.device) -> nn.Module:
    """Replace ``module``'s meta parameters and buffers, in place, by fake tensors on ``device``.

    ``Module.to`` cannot do this (it swaps tensors that the fake mode holds weak references to),
    so each parameter is rewrapped; tied parameters stay tied.
    """
    done: dict[int, Any] = {}
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None:
                continue
            if id(param) not in done:
                fake = FakeTensor(mode, param.data.to("meta"), device)
                done[id(param)] = nn.Parameter(fake, requires_grad=param.requires_grad)
            sub._parameters[name] = done[id(param)]
        for name, buffer in list(sub._buffers.items()):
            if buffer is None:
                continue
            if id(buffer) not in done:
                done[id(buffer)] = FakeTensor(mode, buffer.to("meta"), device)
            sub._buffers[name] = done[id(buffer)]
    return module


def fake_tensor(
    mode: FakeTensorMode, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """An input of the given shape on the fake device (no data)."""
    return FakeTensor(mode, torch.empty(shape, dtype=dtype, device="meta"), device)


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast for ``device`` even where that device is absent (``dtype`` None: off).

    ``torch.autocast("cuda")`` disables itself without a GPU; the dispatcher's autocast rules
    themselves do not need one, so they are switched on directly, as ``torch.autocast`` does.
    """
    if dtype is None:
        yield
        return
    kind = device.type
    was_enabled, was_dtype = torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
    torch.set_autocast_enabled(kind, True)
    torch.set_autocast_dtype(kind, dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled(kind, was_enabled)
        torch.set_autocast_dtype(kind, was_dtype)


_ORIGINAL_SDPA = F.scaled_dot_product_attention


def _gpu_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """The fused attention a GPU runs: flash for half precision without a mask, else the
    memory-efficient kernel. Both keep only the output and the log-sum-exp for backward."""
    if query.device.type != "cuda" or enable_gqa or query.dim() != 4:
        return _ORIGINAL_SDPA(
            query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
        )
    if torch.is_autocast_enabled("cuda"):
        low = torch.get_autocast_dtype("cuda")
        query, key, value = (t.to(low) for t in (query, key, value))
    if attn_mask is None and query.dtype in (torch.float16, torch.bfloat16):
        aten = torch.ops.aten._scaled_dot_product_flash_attention
        return aten(query, key, value, dropout_p, is_causal, False, scale=scale)[0]
    bias = attn_mask
    if bias is not None:
        if bias.dtype == torch.bool:
            bias = torch.zeros(bias.shape, dtype=query.dtype, device=query.device).masked_fill(
                ~bias, float("-inf")
            )
        shape = (query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        bias = bias.to(query.dtype).expand(shape)
    aten = torch.ops.aten._scaled_dot_product_efficient_attention
    return aten(query, key, value, bias, True, dropout_p, is_causal, scale=scale)[0]


@contextlib.contextmanager
def gpu_attention() -> Iterator[None]:
    """Route ``F.scaled_dot_product_attention`` on fake CUDA tensors to the fused kernels.

    Without a GPU, torch's kernel choice falls back to the math path on a fake CUDA device. The
    module attribute is replaced for the duration (``nn.MultiheadAttention`` and transformers
    look it up at call time) and restored afterwards.
    """
    F.scaled_dot_product_attention = _gpu_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _ORIGINAL_SDPA
