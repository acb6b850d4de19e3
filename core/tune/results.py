"""What a sweep leaves behind: one record per trial, the results table, a plot, the best preset.

Records (``<sweep>/trials/<trial_id>.json``) are written by :class:`TrialRecorder` in the driver
the moment a trial ends, before Tune saves its experiment state, and are never rewritten once a
trial has finished: a resumed sweep keeps them, and a trial Tune would run again (it ended in the
seconds between two saves of Tune's state) replays its record instead of training.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml
from ray import tune

from core import storage
from core.train.plots import new_figure, save_figure

log = logging.getLogger(__name__)

RECORDS_DIR = "trials"
TABLE_NAME = "results"
BEST_PRESET = "best.yaml"

#: Tune's bookkeeping keys in a trial's result, kept out of the metrics of a record.
_TUNE_KEYS = frozenset(
    {
        "timestamp",
        "time_this_iter_s",
        "time_total_s",
        "time_since_restore",
        "training_iteration",
        "iterations_since_restore",
        "pid",
        "done",
        "config",
        "date",
        "hostname",
        "node_ip",
        "trial_id",
        "experiment_tag",
        "checkpoint_dir_name",
        "should_checkpoint",
    }
)


def record_path(sweep_dir: str, trial_id: str) -> str:
    return storage.join(sweep_dir, RECORDS_DIR, f"{trial_id}.json")


def read_record(sweep_dir: str, trial_id: str) -> dict[str, Any] | None:
    path = record_path(sweep_dir, trial_id)
    return storage.read_json(path) if storage.exists(path) else None


def load_records(sweep_dir: str) -> list[dict[str, Any]]:
    """Every trial record of a sweep, in trial-id order."""
    folder = storage.join(sweep_dir, RECORDS_DIR)
    if not storage.exists(folder):
        return []
    records = [storage.read_json(p) for p in storage.list_files(folder, ".json")]
    return sorted(records, key=lambda r: r["trial_id"])


def _plain(value: Any) -> Any:
    """JSON- and Arrow-friendly scalars (numpy numbers become Python numbers)."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    return value


def _metrics(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in result.items():
        value = _plain(value)
        if key in _TUNE_KEYS or isinstance(value, bool):
            continue
        if isinstance(value, int | float) or (key == "checkpoint_path" and value):
            out[key] = value
    return out


def _error_line(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if not path or not Path(path).is_file():
        return "error (no message)"
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "error (no message)"


class TrialRecorder(tune.Callback):
    """Tune callback: write each ended trial's record and log one line about it."""

    def __init__(self, sweep_dir: str, epochs: int, metric: str) -> None:
        self.sweep_dir = sweep_dir
        self.epochs = epochs
        self.metric = metric

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial, "TERMINATED", "")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial, "ERROR", _error_line(trial))

    def _record(self, trial: Any, status: str, error: str) -> None:
        existing = read_record(self.sweep_dir, trial.trial_id)
        if existing and existing["status"] == "TERMINATED":
            return  # a replayed trial: its record stands
        result = dict(trial.last_result or {})
        metrics = _metrics(result)
        epochs_done = int(metrics.get("epochs_done", 0))
        record = {
            "trial_id": trial.trial_id,
            "status": status,
            "stopped_early": status == "TERMINATED" and epochs_done < self.epochs,
            "epochs_done": epochs_done,
            "epochs": self.epochs,
            "training_iteration": int(result.get("training_iteration", 0) or 0),
            "time_total_s": float(result.get("time_total_s", 0.0) or 0.0),
            "config": {k: _plain(v) for k, v in trial.config.items()},
            "metrics": metrics,
            "error": error,
        }
        storage.write_json(record_path(self.sweep_dir, trial.trial_id), record)
        value = metrics.get(self.metric, float("nan"))
        how = "stopped early" if record["stopped_early"] else status.lower()
        settings = " ".join(f"{k}={_short(v)}" for k, v in record["config"].items())
        log.info(
            "trial %s %s after %d/%d epochs: %s=%.4f | %s%s",
            trial.trial_id,
            how,
            epochs_done,
            self.epochs,
            self.metric,
            value,
            settings,
            f" | {error}" if error else "",
        )


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------
# Table, plot, best preset
# --------------------------------------------------------------------------------------------


def results_table(records: list[dict[str, Any]], keys: list[str], metric: str) -> pa.Table:
    """One row per trial: id, status, early stop, epochs, the searched settings, the metrics."""
    metric_keys = sorted({k for r in records for k in r["metrics"]} - {metric, "checkpoint_path"})
    columns: dict[str, list[Any]] = {
        "trial_id": [r["trial_id"] for r in records],
        "status": [r["status"] for r in records],
        "stopped_early": [bool(r["stopped_early"]) for r in records],
        "epochs_done": [int(r["epochs_done"]) for r in records],
        "training_iteration": [int(r["training_iteration"]) for r in records],
    }
    for key in keys:
        columns[key] = [r["config"].get(key) for r in records]
    columns[metric] = [r["metrics"].get(metric) for r in records]
    for key in metric_keys:
        columns[key] = [r["metrics"].get(key) for r in records]
    columns["time_total_s"] = [float(r["time_total_s"]) for r in records]
    columns["checkpoint_path"] = [r["metrics"].get("checkpoint_path", "") for r in records]
    columns["error"] = [r["error"] for r in records]
    arrays = {}
    for name, values in columns.items():
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types in a choice: keep as text
            arrays[name] = pa.array([None if v is None else str(v) for v in values])
    return pa.table(arrays)


def write_table(table: pa.Table, sweep_dir: str) -> tuple[str, str]:
    """``results.parquet`` and ``results.csv`` in the sweep folder."""
    import pyarrow.csv as pacsv

    parquet = storage.join(sweep_dir, f"{TABLE_NAME}.parquet")
    storage.write_parquet(table, parquet)
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer)
    csv = storage.join(sweep_dir, f"{TABLE_NAME}.csv")
    storage.write_bytes(csv, buffer.getvalue())
    return parquet, csv


def plot_metric_vs_alpha(
    records: list[dict[str, Any]],
    metric: str,
    colour_key: str,
    base_alpha: float,
    dest: str,
    title: str = "",
) -> str:
    """The metric against alpha, one colour per ``colour_key`` value (prompt / template set);
    filled markers for trials that trained every epoch, hollow ones for trials stopped early."""
    fig, ax = new_figure()
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["status"] != "TERMINATED" or metric not in r["metrics"]:
            continue
        label = str(r["config"].get(colour_key, "")) if colour_key else ""
        groups.setdefault(label, []).append(r)
    alphas = []
    for i, (label, group) in enumerate(sorted(groups.items())):
        colour = f"C{i % 10}"
        for early in (False, True):
            points = [r for r in group if bool(r["stopped_early"]) == early]
            if not points:
                continue
            x = [float(r["config"].get("alpha", base_alpha)) for r in points]
            alphas += x
            ax.scatter(
                x,
                [r["metrics"][metric] for r in points],
                s=40,
                facecolors="none" if early else colour,
                edgecolors=colour,
                label=(f"{colour_key}={_short_label(label)}" if colour_key else "complete")
                + (" (stopped early)" if early else ""),
            )
    if alphas and min(alphas) > 0:
        ax.set_xscale("log")
    ax.set_xlabel("alpha")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title or f"{metric} against alpha")
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=7)
    return save_figure(fig, dest)


def _short_label(text: str, width: int = 32) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def best_record(records: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The best trial that trained every epoch (a stopped trial's score is at fewer epochs, so a
    full training run of its settings would not reproduce it)."""
    complete = [
        r
        for r in records
        if r["status"] == "TERMINATED"
        and not r["stopped_early"]
        and isinstance(r["metrics"].get(metric), int | float)
        and not math.isnan(r["metrics"][metric])
    ]
    if not complete:
        return None
    sign = 1.0 if mode == "max" else -1.0
    best = None
    for r in sorted(complete, key=lambda r: r["trial_id"]):  # a tie goes to the earlier trial
        if best is None or sign * r["metrics"][metric] > sign * best["metrics"][metric]:
            best = r
    return best


def write_best_preset(
    training: dict[str, Any],
    best: dict[str, Any],
    dest: str,
    *,
    job: str,
    sweep_name: str,
    metric: str,
) -> str:
    """The best trial's full training config as a YAML preset for the training job."""
    value = best["metrics"][metric]
    settings = ", ".join(f"{k}={_short(v)}" for k, v in best["config"].items())
    header = (
        f"# Best trial {best['trial_id']} of sweep {sweep_name}: {metric}={value:.6g} after "
        f"{best['epochs_done']} epochs\n"
        f"# ({settings})\n"
        f"#   python -m ray_jobs.{job} --config {dest}\n"
    )
    text = header + yaml.safe_dump(training, sort_keys=False, default_flow_style=None)
    storage.write_bytes(dest, text.encode())
    return dest
