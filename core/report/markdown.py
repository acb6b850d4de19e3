"""``report.md``: the tables a paper prints, rendered from the report's data (percentages)."""

from __future__ import annotations

from typing import Any

#: The settings a reader needs to reproduce the comparison, in the order they are printed.
HEADLINE_SETTINGS = (
    "source",
    "root",
    "manifest",
    "clip.model_name",
    "clip.pretrained",
    "captioner.backend",
    "captioner.prompts",
    "captioner.split_numbered",
    "captioner.max_new_tokens",
    "class_means.normalize",
    "alpha",
    "run.epochs",
    "run.batch_size",
    "run.seed",
    "run.num_workers",
    "run.use_gpu",
    "optim.encoder_lr",
    "optim.head_lr",
    "optim.weight_decay",
    "optim.warmup_epochs",
)


def pct(value: Any) -> str:
    """An accuracy as a percentage with two decimals; "n/a" where it is undefined."""
    return "n/a" if value is None else f"{100 * value:.2f}"


def diff(after: Any, before: Any) -> str:
    """Signed difference in percentage points."""
    return "n/a" if after is None or before is None else f"{100 * (after - before):+.2f}"


def table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    """A Markdown table; ``align`` holds one character per column: l(eft) or r(ight)."""
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _overall(report: dict[str, Any]) -> list[str]:
    models = [report[m] for m in report["models"]]
    rows = []
    for name, m in zip(report["models"], models, strict=True):
        best = m["best_val_epoch"]
        at_best = pct(m["test_acc_at_best_val"]) + (f" (epoch {best})" if best else "")
        rows.append(
            [
                name,
                f"{m['alpha']:g}",
                pct(m["test_acc"]),
                at_best,
                pct(m["predicted_test_acc"]),
                pct(m["mean_per_class_acc"]),
            ]
        )
    if len(models) == 2:
        a, b = models
        rows.append(
            [
                "difference",
                "",
                diff(b["test_acc"], a["test_acc"]),
                diff(b["test_acc_at_best_val"], a["test_acc_at_best_val"]),
                diff(b["predicted_test_acc"], a["predicted_test_acc"]),
                diff(b["mean_per_class_acc"], a["mean_per_class_acc"]),
            ]
        )
    header = [
        "model",
        "alpha",
        "test acc, last epoch",
        "test acc at best val",
        "test acc, predicted",
        "mean per-class acc",
    ]
    return table(header, rows, "lrrrrr")


def _per_class(report: dict[str, Any]) -> list[str]:
    names = report["models"]
    rows = []
    for cls in report["data"]["classes"]:
        entries = [report[m]["per_class"].get(cls, {}) for m in names]
        accs = [e.get("accuracy") for e in entries]
        images = next((e["images"] for e in entries if "images" in e), 0)
        row = [cls, str(images), *(pct(a) for a in accs)]
        if len(accs) == 2:
            row.append(diff(accs[1], accs[0]))
        rows.append(row)
    header = ["class", "test images", *names] + (["difference"] if len(names) == 2 else [])
    return table(header, rows, "lr" + "r" * (len(header) - 2))


def _per_epoch(report: dict[str, Any]) -> list[str]:
    names = report["models"]
    curves = [report[m]["test_acc_per_epoch"] for m in names]
    epochs = max((len(c) for c in curves), default=0)
    rows = [[str(e + 1), *(pct(c[e]) if e < len(c) else "" for c in curves)] for e in range(epochs)]
    return table(["epoch", *names], rows, "r" * (len(names) + 1))


def _settings(report: dict[str, Any]) -> list[str]:
    flat = flatten(report["settings"])
    rows = [[f"`{k}`", f"`{flat[k]}`"] for k in HEADLINE_SETTINGS if k in flat and flat[k] != ""]
    return table(["setting", "value"], rows, "ll")


def render_markdown(report: dict[str, Any], figures: dict[str, str]) -> str:
    """The report as Markdown; ``figures`` maps a caption to an image path relative to it."""
    data = report["data"]
    counts = ", ".join(f"{n} {split}" for split, n in data["images"].items())
    lines = [
        f"# {report['title']}",
        "",
        f"{len(data['classes'])} classes; images: {counts}. Accuracies in %; 'predicted' is the "
        "prediction job's accuracy on the test split with the last epoch's checkpoint.",
        "",
        "## Test accuracy",
        "",
        *_overall(report),
        "",
        "## Per-class test accuracy",
        "",
        *_per_class(report),
        "",
        "## Test accuracy per epoch",
        "",
        *_per_epoch(report),
        "",
        "## Settings",
        "",
        *_settings(report),
        "",
        "All settings are in `report.json` (`settings`).",
        "",
        "## Files",
        "",
        *table(["artefact", "path"], [[k, f"`{v}`"] for k, v in report["artefacts"].items()], "ll"),
        "",
    ]
    for caption, path in figures.items():
        lines += [f"![{caption}]({path})", ""]
    return "\n".join(lines)
