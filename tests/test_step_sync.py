"""No host synchronisation in a training step: every method's step, on CPU, under a detector.

On a GPU, reading a device value on the host (``.item()``, ``float(t)``, ``bool(t)``, ``.cpu()``,
``.tolist()``, a boolean-mask index, ``torch.tensor(number, device=...)``) makes the host wait
for every kernel queued so far, so it cannot run ahead and feed the device. The detector is a
``TorchFunctionMode`` that records each such call with the function that made it; the steps run
on CPU (no GPU needed) with tiny models, and for CLIP-Decoder with the two-worker code path
(loss weights from the group's counts, BatchNorm on group statistics) over an in-process gloo
group. The engine's loop adds the steps' sums on the device and reads them once per epoch.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from core.config import ClipConfig, ClipDecoderTrainConfig, TrainRegularizedConfig
from core.train.method import WorkerContext

ROOT = Path(__file__).resolve().parents[1]
#: Reads the host makes on purpose: none inside a step.
SYNCING = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu"}
SYNCING |= {"nonzero", "masked_select", "unique", "argwhere"}
#: Known host synchronisation outside the step's own files (none left).
KNOWN_ELSEWHERE: set[tuple[str, str]] = set()


def _is_bool_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _caller() -> tuple[str, str]:
    """(project file, function) of the innermost project frame that made the call."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        path = Path(name).resolve()
        inside = not name.startswith("<") and ROOT in path.parents
        if inside and "tests" not in path.relative_to(ROOT).parts:
            return str(path.relative_to(ROOT)), frame.f_code.co_name
        frame = frame.f_back
    return "<outside the project>", ""


class HostSyncDetector(TorchFunctionMode):
    """Records every call that would make the host wait for a GPU: (file, function, op)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        syncing = name in SYNCING
        if name == "__getitem__" and len(args) > 1 and _is_bool_index(args[1]):
            syncing = True
        if name in ("tensor", "as_tensor") and kwargs.get("device") is not None:
            syncing = bool(args) and not isinstance(args[0], torch.Tensor)  # host data copied
        if syncing:
            self.calls.append((*_caller(), name))
        return func(*args, **kwargs)


@pytest.fixture
def gloo_group(monkeypatch) -> Iterator[None]:
    """A one-process gloo group that the code sees as two workers: the collectives run (over
    one member), and the two-worker branches of the step and of GroupBatchNorm are taken."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with tempfile.TemporaryDirectory() as folder:
        store = os.path.join(folder, "store")
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        monkeypatch.setattr("core.train.group_batch_norm.group_size", lambda: 2)
        try:
            yield
        finally:
            dist.destroy_process_group()


def _ctx(world: int = 1) -> WorkerContext:
    return WorkerContext(rank=0, world=world, device=torch.device("cpu"), run_dir="", amp=False)


def _classifier_batch(valid: bool) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(4, 3, 32, 32, generator=generator),
        "label": torch.tensor([0, 1, 2, 1]),
    }
    if valid:
        batch["valid"] = torch.tensor([1, 1, 0, 1], dtype=torch.uint8)
    return batch


def _regularized_worker(world: int) -> Any:
    from core.models.clip_classifier import build_classifier
    from core.train.methods.regularized import RegularizedWorker

    worker = RegularizedWorker.__new__(RegularizedWorker)
    worker.cfg, worker.ctx = TrainRegularizedConfig(alpha=0.5), _ctx(world)
    worker.model, _ = build_classifier(ClipConfig(), 3)
    width = worker.model.head.in_features
    worker.means = torch.randn(3, width, generator=torch.Generator().manual_seed(1))
    return worker


def _linear_probe_worker(world: int) -> Any:
    from core.models.clip_classifier import build_classifier
    from core.train.methods.linear_probe import LinearProbeConfig, LinearProbeWorker

    worker = LinearProbeWorker.__new__(LinearProbeWorker)
    worker.cfg, worker.ctx = LinearProbeConfig(), _ctx(world)
    worker.model, _ = build_classifier(ClipConfig(), 3)
    worker.model.encoder.requires_grad_(False)
    return worker


def _clip_decoder_worker(world: int, reduction: str = "sum") -> Any:
    from core.train.methods.clip_decoder import ClipDecoderWorker

    cfg = ClipDecoderTrainConfig(cls_reduction=reduction)
    cfg.model.image_size, cfg.model.dropout = 32, 0.0
    rng = np.random.default_rng(0)
    payload = {
        "seen": ["a", "b", "c", "d"],
        "unseen": ["e", "f"],
        "label_embeddings": rng.standard_normal((6, 16)).astype(np.float32),
        "templates": ["a photo of a {label}."],
    }
    return ClipDecoderWorker(cfg, payload, _ctx(world))


def _multilabel_batch(valid: bool) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    targets = torch.zeros(4, 6)
    targets[0, 1] = targets[1, 0] = targets[1, 4] = targets[3, 2] = 1.0
    batch = {"image": torch.randn(4, 3, 32, 32, generator=generator), "targets": targets}
    if valid:
        batch["valid"] = torch.tensor([1, 1, 0, 1], dtype=torch.uint8)
    return batch


def _train_steps(
    worker: Any, model: torch.nn.Module, batch: dict, detector: HostSyncDetector, steps: int = 2
) -> list:
    """The engine's inner loop: forward + loss (the method's step), backward and the device-side
    epoch sums run under ``detector``; AdamW steps outside it (its step counters are host
    tensors by design, ``torch.tensor(0.0, device="cpu")``)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    totals: dict[str, torch.Tensor] = {}
    model.train()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with detector:
            result = worker.step(model, batch)
            result.loss.backward()
            for key, value in result.sums.items():
                value = value.detach().to(torch.float64)
                totals[key] = totals[key] + value if key in totals else value
        optimizer.step()
    return list(totals.values())


def _own_calls(detector: HostSyncDetector) -> list[tuple[str, str, str]]:
    return [c for c in detector.calls if (c[0], c[1]) not in KNOWN_ELSEWHERE]


@pytest.mark.parametrize("valid", [False, True], ids=["all-readable", "with-unreadable"])
@pytest.mark.parametrize("method", ["regularized", "linear_probe"])
def test_classifier_steps_do_not_sync(method: str, valid: bool) -> None:
    worker = {"regularized": _regularized_worker, "linear_probe": _linear_probe_worker}[method](1)
    detector = HostSyncDetector()
    sums = _train_steps(worker, worker.model, _classifier_batch(valid), detector)
    assert detector.calls == [], detector.calls
    assert all(s.dim() == 0 and s.dtype == torch.float64 for s in sums)


@pytest.mark.parametrize("valid", [False, True], ids=["all-readable", "with-unreadable"])
@pytest.mark.parametrize("method", ["regularized", "linear_probe"])
def test_classifier_steps_do_not_sync_with_two_workers(gloo_group, method: str, valid) -> None:
    worker = {"regularized": _regularized_worker, "linear_probe": _linear_probe_worker}[method](2)
    detector = HostSyncDetector()
    _train_steps(worker, worker.model, _classifier_batch(valid), detector)
    assert detector.calls == [], detector.calls


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("valid", [False, True], ids=["all-readable", "with-unreadable"])
def test_clip_decoder_step_does_not_sync_with_two_workers(gloo_group, valid, reduction) -> None:
    """The two-worker path: loss weights from the group's positives and rows (an all-reduce
    that stays on the device) and BatchNorm on group statistics (GroupBatchNorm)."""
    from core.train.group_batch_norm import GroupBatchNorm, sync_batch_norm

    worker = _clip_decoder_worker(2, reduction)
    model = sync_batch_norm(worker.model, torch.device("cpu"))
    assert any(isinstance(m, GroupBatchNorm) for m in model.modules())
    detector = HostSyncDetector()
    sums = _train_steps(worker, model, _multilabel_batch(valid), detector)
    assert _own_calls(detector) == [], _own_calls(detector)
    assert all(s.dim() == 0 and torch.isfinite(s) for s in sums)


def test_clip_decoder_step_does_not_sync_with_one_worker() -> None:
    worker = _clip_decoder_worker(1)
    detector = HostSyncDetector()
    _train_steps(worker, worker.model, _multilabel_batch(True), detector)
    assert _own_calls(detector) == [], _own_calls(detector)


def test_clip_decoder_loss_does_not_sync_at_all() -> None:
    worker = _clip_decoder_worker(1)
    detector = HostSyncDetector()
    _train_steps(worker, worker.model, _multilabel_batch(False), detector, steps=1)
    assert detector.calls == [], detector.calls


def test_two_worker_weights_match_the_host_computation() -> None:
    """The device-side loss weights equal the float formula they replaced."""
    from core.train.methods.clip_decoder import clip_share, group_loss_weights

    for local, group in ((3.0, 4.0), (0.0, 0.0), (0.0, 5.0)):
        expected = group_loss_weights(0.5, 2.0, "sum", local, group, 2)
        got = group_loss_weights(0.5, 2.0, "sum", torch.tensor(local), torch.tensor(group), 2)
        assert float(got[0]) == pytest.approx(expected[0]) and got[1] == expected[1]
        share = clip_share(torch.tensor(local), torch.tensor(group), 2)
        assert float(share) == pytest.approx(clip_share(local, group, 2))


def test_the_detector_sees_each_kind_of_sync() -> None:
    x = torch.randn(4)
    detector = HostSyncDetector()
    with detector:
        x.sum().item()
        float(x.sum())
        bool(x[0] > 0)
        x.tolist()
        x[x > 0]
        torch.tensor(1.0, device="cpu")
        torch.as_tensor(x, device="cpu")  # a tensor already: not counted
    ops = [op for _, _, op in detector.calls]
    assert ops == ["item", "__float__", "__bool__", "tolist", "__getitem__", "tensor"], ops
