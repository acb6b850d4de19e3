"""The method interface: what a training method tells the one engine that runs every method.

A method (LMM-regularized CLIP, CLIP-Decoder, a linear probe, ...) is two small objects:

- :class:`Method`, on the driver: its config class, how it resolves its inputs (absolute paths,
  generated demo data), how it plans a run (the splits, the transforms, what every worker needs,
  which metric ranks checkpoints), what it writes once the run is over, and how a checkpoint it
  wrote is loaded back.
- :class:`MethodWorker`, in each Ray Train worker: the model, which parameters are the encoder's
  and which the head's, the per-batch step returning named loss terms, the per-epoch training
  metrics, evaluation of one split, and the files a checkpoint holds beside the training state.

The engine (:mod:`core.train.engine` on the driver, :mod:`core.train.worker` in the workers) does
everything else the same way for every method: deterministic per-rank streams, optimizer and
schedule, precision, resume, fault injection, the per-epoch report with its checkpoint and
``metrics.jsonl``. Methods are found by name in :mod:`core.train.registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


def existing_inputs(paths: dict[str, str]) -> dict[str, str]:
    """``paths`` (config key → path or URI), each checked to exist (``FileNotFoundError``
    naming the key) and made absolute: what every :meth:`Method.resolve_inputs` returns."""
    from core import storage
    from core.train.launch import absolute_storage

    for key, path in paths.items():
        if not storage.exists(path):
            raise FileNotFoundError(f"{key}: {path}: no such file")
    return {key: absolute_storage(path) for key, path in paths.items()}


@dataclass
class RunPlan:
    """What a method settles on the driver before any worker starts."""

    splits: dict[str, Any]  # "train" / "val" / "test" rows (LabelledRows, MultiLabelRows, ...)
    train_transform: Callable
    eval_transform: Callable
    payload: dict[str, Any]  # what every worker needs besides the config (through Ray's store)
    metric: str  # the metric that ranks checkpoints, and a sweep's default
    mode: str = "max"
    eval_splits: tuple[str, ...] = ("val", "test")
    batch_class: type | None = None  # Ray Data batch function class; None → single-label images
    info: dict[str, Any] = field(default_factory=dict)  # shown in the run's summary


@dataclass
class WorkerContext:
    """Where a worker runs: its rank, the group size, its device, its run folder."""

    rank: int
    world: int
    device: torch.device
    run_dir: str
    amp: bool

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few scalars over the worker group (a no-op with one worker)."""
        from core.train.loop_parts import all_reduce_sum

        return all_reduce_sum(values, self.device)

    def group_sum(self, value: torch.Tensor) -> torch.Tensor:
        """A tensor summed over the worker group, staying on the device (no host sync)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        total = value.detach().clone()
        dist.all_reduce(total)
        return total


@dataclass
class StepResult:
    """One training step: the loss to back-propagate and this worker's sums for the epoch.

    ``sums`` are 0-d tensors; the engine adds them up over the epoch's steps on the device and
    all-reduces them once per epoch, so they must be shares that add up to the group's totals.
    """

    loss: torch.Tensor
    sums: dict[str, torch.Tensor]


class MethodWorker:
    """A method inside one Ray Train worker (see the module docstring)."""

    #: BatchNorm statistics over the whole worker group, so N workers train like one.
    group_batch_norm: ClassVar[bool] = False

    model: nn.Module

    def param_groups(
        self, model: nn.Module
    ) -> tuple[Iterable[nn.Parameter], Iterable[nn.Parameter]]:
        """(encoder parameters, head parameters): they get separate learning rates."""
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        """Called before each epoch's first step (e.g. to reseed dropout for exact resume)."""

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepResult:
        """The forward pass and loss of one batch (inside autocast; the engine steps)."""
        raise NotImplementedError

    def train_metrics(self, totals: dict[str, float], steps: int) -> dict[str, Any]:
        """The epoch's training metrics from the group's summed ``StepResult.sums``."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split: str, batches: Iterator[dict]) -> dict[str, Any]:
        """Metrics of this worker's share of ``split``; every worker calls it (collectives)."""
        raise NotImplementedError

    def checkpoint_state(self) -> dict[str, Any]:
        """Entries stored in the training state beside model, optimizer and history."""
        return {}

    def write_checkpoint_files(
        self, folder: str, model: nn.Module, epoch: int, metrics: dict[str, Any]
    ) -> None:
        """The method's own files in each checkpoint (what its loader reads back)."""


class Method:
    """A training method on the driver (see the module docstring).

    A subclass names itself and its config class in its class statement, e.g. ``class
    MyMethod(Method, name="my_method", config_class=MyMethodConfig)``.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    #: The job that trains it, as a sweep's best preset tells the user to run it
    #: (default: the generic ``train --method NAME``).
    job: ClassVar[str]
    #: The swept key a sweep's plot colours its points by, when the space has it.
    colour_key: ClassVar[str] = ""

    def __init_subclass__(cls, *, name: str, config_class: type) -> None:
        super().__init_subclass__()
        cls.name, cls.config_class = name, config_class
        if "job" not in cls.__dict__:
            cls.job = f"train --method {name}"

    def resolve_inputs(self, cfg: Any) -> dict[str, str]:
        """Config overrides that make every input an absolute path or URI (Train workers run in
        their own folder), generating demo inputs where the method does so; missing inputs are
        ``FileNotFoundError`` naming the key."""
        return {}

    def checkpoint_metric(self, cfg: Any) -> tuple[str, str]:
        """(metric, mode) ranking checkpoints for ``cfg`` (inputs resolved)."""
        raise NotImplementedError

    def plan(self, cfg: Any, run_dir: str) -> RunPlan:
        """Everything the workers need; fails here, before any worker starts."""
        raise NotImplementedError

    def worker(self, cfg: Any, payload: dict[str, Any], ctx: WorkerContext) -> MethodWorker:
        """The method's worker side, built once per worker process."""
        raise NotImplementedError

    def finish(self, cfg: Any, plan: RunPlan, result: Any) -> None:
        """After the run: write the method's summary files into ``result`` (optional)."""

    def check_sweep(self, cfg: Any, values: dict[str, list[Any]]) -> None:
        """Check a sweep's candidate values against the inputs (``values``: key → candidates)."""

    def load_checkpoint(self, path: str) -> Any:
        """A trained model from one of its checkpoint folders."""
        raise NotImplementedError

    def check(self, ctx: Any, cfg: Any) -> None:
        """Check one training run of ``cfg`` before the cluster (``python -m ray_jobs.check``,
        and every training and Tune job at its start), without reading any weights.

        ``ctx`` is a :class:`core.check.context.Context`; everything goes into ``ctx.report``:
        the inputs the run reads (``report.file``: found or missing), every place where two parts
        must agree (``report.agree``: e.g. the class-means width and the training CLIP's image
        embedding, the decoder's query width and the CLIP text width), and one worker's peak
        accelerator memory at ``cfg.run``'s batch (``core.check.training.estimate_training``
        sets ``report.params``, ``report.peak``, ``report.placement`` and ``report.max_batch``).
        A problem is a mismatch (``report.fail`` / ``report.agree``), or an exception naming
        what to fix. Keep the heavy code in ``core.check`` and import it inside the method, so
        importing a method module stays light.

        The default checks any method whose config has ``clip`` and ``run`` sections as a CLIP
        image tower + linear head trained with cross-entropy (plus the LMM regularizer when the
        config has ``class_means``); for other configs it only notes that there is no check.
        """
        if hasattr(cfg, "clip") and hasattr(cfg, "run"):
            from core.check.training import check_classifier

            check_classifier(ctx, cfg, self.name)
        else:
            ctx.report.note(
                f"method {self.name}: no check (its config has no clip and run sections and "
                f"{type(self).__name__} defines no check): models, agreements and memory not "
                "checked"
            )
