"""BatchNorm whose training statistics span the Ray Train worker group, on any device.

Per-worker statistics of a B/W batch differ from the one-worker statistics of B images, so without
this a BatchNorm model's result depends on the worker count. torch's ``SyncBatchNorm`` refuses CPU
tensors, which leaves CPU clusters and the gloo tests without it; :class:`GroupBatchNorm` works on
any backend, without synchronising the host with the device. GPUs keep torch's fused
``SyncBatchNorm``, which reads one boolean mask's size per BatchNorm layer per step (it drops
empty workers' statistics): a known host wait, kept until a replacement is validated on GPUs.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from core.train.loop_parts import group_size

log = logging.getLogger(__name__)


class _GroupSum(torch.autograd.Function):
    """Sum over the worker group. Every worker's loss depends on every worker's inputs through
    the summed value, so the gradient is summed over the group the same way."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class GroupBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics span the worker group, on any device (gloo included).

    torch's ``SyncBatchNorm`` refuses CPU tensors (its kernels are GPU-only), which leaves CPU
    clusters and the gloo tests without synchronised statistics; this computes the group mean and
    (biased) variance with two all-reduces and lets autograd carry the gradient back through them.
    Outside training, or with one worker, it is a plain BatchNorm. Parameter and buffer names are
    BatchNorm's, so state dicts load both ways.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or group_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        xf = x.float()
        local = xf.new_tensor([x.numel() // channels])
        summed = _GroupSum.apply(torch.cat([xf.sum(dims), local]))
        count = summed[-1].detach()
        mean = summed[:channels] / count
        centered = xf - mean.view(shape)
        var = _GroupSum.apply(centered.pow(2).sum(dims)) / count
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            # Tensor arithmetic only: reading count or num_batches_tracked as a Python number
            # would wait for the device.
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor: Any = self.momentum
                if factor is None:  # cumulative average
                    factor = 1.0 / self.num_batches_tracked.to(self.running_mean.dtype)
                unbiased = var * (count / (count - 1.0).clamp(min=1.0))
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype) * factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype) * factor)
        return y.to(x.dtype)


class GroupBatchNormAct2d(GroupBatchNorm):
    """timm's ``BatchNormAct2d`` (BatchNorm, then dropout and activation) on group statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def _group_norm_from(module: nn.modules.batchnorm._BatchNorm) -> nn.Module | None:
    from timm.layers import BatchNormAct2d

    if isinstance(module, BatchNormAct2d):
        cls: type[GroupBatchNorm] = GroupBatchNormAct2d
    elif type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        cls = GroupBatchNorm
    else:
        log.warning("%s keeps per-worker batch statistics", type(module).__name__)
        return None
    out = cls(
        module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
    )
    if module.affine:
        out.weight, out.bias = module.weight, module.bias
    out.running_mean, out.running_var = module.running_mean, module.running_var
    out.num_batches_tracked = module.num_batches_tracked
    if cls is GroupBatchNormAct2d:
        out.act, out.drop = module.act, module.drop
    out.train(module.training)
    return out


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm use worker-group statistics in training (call before DDP wrapping).

    Per-worker statistics of a B/W batch differ from the one-worker statistics of B images, so
    without this the result depends on the worker count (and small per-GPU batches train worse).
    GPUs use torch's ``SyncBatchNorm`` through timm's converter (which keeps ``BatchNormAct2d``'s
    activation); other devices use :class:`GroupBatchNorm`.
    """
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)

    def convert(module: nn.Module) -> nn.Module:
        for name, child in module.named_children():
            replacement = None
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
                child, GroupBatchNorm
            ):
                replacement = _group_norm_from(child)
            if replacement is not None:
                setattr(module, name, replacement)
            convert(getattr(module, name))
        return module

    return convert(model)
