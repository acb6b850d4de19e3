"""Peak accelerator memory of one worker, estimated on fake tensors (no weights, no GPU).

How each part is counted:

- **Weights, buffers, gradients, optimizer state** from the parameters: AdamW keeps two float32
  tensors per trainable parameter; gradients are float32 like their parameters (autocast
  computes in half precision, but ``.grad`` has the parameter's dtype). With more than one
  worker, DistributedDataParallel keeps a bucket copy of every gradient.
- **Activations**: the forward runs on fake tensors with a ``saved_tensors_hooks`` pack hook
  that sums the bytes of every storage autograd saves for backward (each storage once, the
  weights excluded). Under autocast the hook sees what autocast really saves: half-precision
  copies of matmul inputs and weights, float32 layer-norm inputs, and so on.
- **Transients**: a ``TorchDispatchMode`` follows every storage the forward allocates until it is
  freed (weak references on the storages), which gives the forward's peak of live bytes,
  temporaries included.

The step's peak is then the largest of three moments of the engine's loop
(``core.train.worker``), which drops gradients before each forward: the forward's peak (no
gradients alive); the start of backward, bounded by every saved activation
plus every gradient plus two activation-sized gradient buffers; and the optimizer step (AdamW's
multi-tensor update allocates temporaries the size of a parameter group).

For generation the peak is the weights plus the largest of: encoding the images, the prompt's
prefill (both run on fake tensors the same way), and the full KV cache of batch x (prompt +
new tokens) with the decoding step's temporaries.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

T = TypeVar("T")

GIB = 1024**3


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages allocated under it that are still alive, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # Views and in-place results share an input's storage: nothing new was allocated.
        inputs = {
            id(t.untyped_storage())
            for t in pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and id(tensor.untyped_storage()) not in inputs:
                self._track(tensor.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key in self._sizes:  # a view of a storage already counted
            return
        size = storage.nbytes()
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)


@dataclass
class ForwardStats:
    """One forward on fake tensors: bytes saved for backward, the live peak, the largest save."""

    saved: int
    peak_live: int
    largest_saved: int


def measure_forward(fn: Callable[[], Any], existing: Iterable[torch.Tensor] = ()) -> ForwardStats:
    """Run ``fn`` (inside the caller's fake mode, autocast, grad mode) and count its memory.

    ``existing``: tensors alive before (weights, buffers), not counted as saved activations.
    What ``fn`` returns is kept alive until counting is done, as the loss is in a real step.
    """
    skip = {id(t.untyped_storage()) for t in existing}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if id(storage) not in skip:
            saved[id(storage)] = storage.nbytes()
        return tensor

    tracker = LiveBytes()
    with tracker, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    stats = ForwardStats(sum(saved.values()), tracker.peak, max(saved.values(), default=0))
    del result
    return stats


#: Measurements already made in this process, by what determines them.
_MEASURED: dict[Hashable, Any] = {}


def measured_once(key: Hashable, measure: Callable[[], T]) -> T:
    """``measure()``, made once per process for each ``key``.

    A fake forward of a 7B LLM takes about a second and every preset with the same captioner
    measures the same thing (checking several presets in one process, as the pipeline and the
    test suite do). ``key`` must hold everything the result depends on: the model configuration,
    the shapes and batch, the dtype and the device.
    """
    if key not in _MEASURED:
        _MEASURED[key] = measure()
    return _MEASURED[key]


def config_key(values: dict[str, Any]) -> str:
    """A model configuration's values as one hashable text (for :func:`measured_once`)."""
    return json.dumps(values, sort_keys=True, default=str)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages (tied weights once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        seen.setdefault(id(t.untyped_storage()), t.untyped_storage().nbytes())
    return sum(seen.values())


def parameter_count(module: nn.Module) -> int:
    """Parameters of a module (tied ones once, as ``parameters()`` lists them)."""
    return sum(p.numel() for p in module.parameters())


@dataclass
class TrainingMemory:
    """One training worker's memory at the configured batch (bytes)."""

    weights: int
    buffers: int
    grads: int
    optimizer: int
    ddp: int
    activations: int
    forward_peak: int
    largest_saved: int
    step_temp: int

    @property
    def peak(self) -> int:
        """The largest of the step's three moments (see the module docstring)."""
        static = self.weights + self.buffers + self.optimizer + self.ddp
        forward = self.forward_peak  # the engine drops gradients before each forward
        backward = self.grads + self.activations + 2 * self.largest_saved
        step = self.grads + self.step_temp
        return static + max(forward, backward, step)

    def parts(self) -> str:
        """The estimate's terms in GiB, for the report."""
        g = GIB
        return (
            f"weights {self.weights / g:.2f} + buffers {self.buffers / g:.2f} + grads "
            f"{self.grads / g:.2f} + AdamW {self.optimizer / g:.2f} + DDP buckets "
            f"{self.ddp / g:.2f} + activations {self.activations / g:.2f} (forward live peak "
            f"{self.forward_peak / g:.2f}) GiB"
        )


def training_memory(
    model: nn.Module,
    stats: ForwardStats,
    world: int,
    param_groups: Iterable[Iterable[nn.Parameter]] = (),
) -> TrainingMemory:
    """Combine a model's parameters with one forward's :class:`ForwardStats` (see the module
    docstring). ``param_groups``: the optimizer's groups (their largest sizes AdamW's
    temporaries); default one group of every trainable parameter."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = tensor_bytes(trainable)
    groups = [list(g) for g in param_groups] or [trainable]
    largest_group = max((tensor_bytes(p for p in g if p.requires_grad) for g in groups), default=0)
    return TrainingMemory(
        weights=tensor_bytes(model.parameters()),
        buffers=tensor_bytes(model.buffers()),
        grads=grads,
        optimizer=2 * grads,
        ddp=grads if world > 1 else 0,
        activations=stats.saved,
        forward_peak=stats.peak_live,
        largest_saved=stats.largest_saved,
        step_temp=largest_group,
    )


def max_batch(peak_at: Callable[[int], int], batch: int, budget: int, limit: int = 4096) -> int:
    """The largest batch whose estimated peak stays within ``budget`` bytes (0: none fits).

    Memory grows linearly with the batch (activations, KV cache), so two estimates give the
    line; the predicted batch is then checked with one more estimate and lowered if it is over.
    Answers stop at ``limit`` (tiny models on a CPU host would otherwise "fit" millions).
    """
    low, high = 1, max(batch, 2)
    p_low, p_high = peak_at(low), peak_at(high)
    per_item = (p_high - p_low) / (high - low)
    if per_item <= 0:
        return limit if p_high <= budget else 0
    guess = int((budget - (p_low - per_item * low)) // per_item)
    guess = max(0, min(guess, limit))
    for _ in range(12):
        if guess <= 0 or peak_at(guess) <= budget:
            return guess
        guess = int(guess * 0.95)
    return 0  # the line was far off: claim nothing
