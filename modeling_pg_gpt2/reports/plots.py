"""Training curves of a run: train/validation loss and perplexity against optimizer steps.

`run_clm.py` redraws them in its output folder at every evaluation and at the end. For any run,
finished, running or crashed:

    python -m modeling_pg_gpt2.reports.plots OUTPUT_DIR

reads the Trainer's log (`trainer_state.json` of the folder, else of its newest checkpoint) and
writes `train_loss.png`, `eval_loss.png`, `train_perplexity.png` and `eval_perplexity.png` there, and
`eval_tasks.png` (the accuracies of `run_clm.py --eval_tasks`) when the log has them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..common.errors import UserError, run_cli

# File name -> (log key, title, y label, log scale)
PLOTS: dict[str, tuple[str, str, str, bool]] = {
    "train_loss.png": ("loss", "Training loss", "cross-entropy (nats/token)", False),
    "eval_loss.png": ("eval_loss", "Validation loss", "cross-entropy (nats/token)", False),
    "train_perplexity.png": ("loss", "Training perplexity", "perplexity", True),
    "eval_perplexity.png": ("eval_loss", "Validation perplexity", "perplexity", True),
}
# Drawn when the run scores multiple-choice files at each evaluation (run_clm.py --eval_tasks).
TASKS_PLOT = ("eval_tasks.png", "Zero-shot multiple choice")


# Multiple-choice tasks scored at each evaluation log `eval_<task>_accuracy` and `eval_<task>_accuracy_norm`.
NORM_SUFFIX = "_accuracy_norm"


def task_names(metrics: Mapping[str, Any]) -> list[str]:
    """The names of the eval tasks whose accuracies `metrics` (a log entry, metrics.json) holds."""
    names = []
    for key in metrics:
        name = key[len("eval_") : -len(NORM_SUFFIX)]
        if key.startswith("eval_") and key.endswith(NORM_SUFFIX) and f"eval_{name}_accuracy" in metrics:
            names.append(name)
    return sorted(names)


def load_log_history(output_dir: str | Path) -> list[dict[str, Any]]:
    """The Trainer's `log_history` of a run: from `OUTPUT_DIR/trainer_state.json`, else its newest checkpoint."""
    folder = Path(output_dir)
    candidates = [folder / "trainer_state.json"]
    checkpoints = [p for p in folder.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    checkpoints.sort(key=lambda p: int(p.name.split("-")[1]), reverse=True)
    candidates += [p / "trainer_state.json" for p in checkpoints]
    for state in candidates:
        try:
            return json.loads(state.read_text(encoding="utf-8"))["log_history"]
        except (OSError, ValueError, KeyError):
            continue
    raise UserError(f"{folder} holds no trainer_state.json (nor a checkpoint with one): is it a run_clm.py output?")


def _series(log_history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points: dict[int, float] = {}
    for entry in log_history:
        if key in entry and "step" in entry and math.isfinite(entry[key]):
            points.setdefault(entry["step"], entry[key])  # first value per step: a final re-evaluation repeats one
    steps = sorted(points)
    return steps, [points[step] for step in steps]


def write_plots(output_dir: str | Path, log_history: list[dict[str, Any]] | None = None) -> list[Path]:
    """Draw the four curves (and the eval tasks' accuracies) from `log_history` (default: read from `output_dir`).

    Returns the PNG files written; a curve with no point yet (no evaluation so far) is skipped.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    folder = Path(output_dir)
    if log_history is None:
        log_history = load_log_history(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, (key, title, ylabel, log_scale) in PLOTS.items():
        steps, values = _series(log_history, key)
        if not steps:
            continue
        if log_scale:
            values = [math.exp(min(value, 700.0)) for value in values]
        figure = Figure(figsize=(6.4, 4.0), layout="constrained")
        axes = figure.add_subplot()
        axes.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        axes.set(title=title, xlabel="optimizer step", ylabel=ylabel)
        if log_scale:
            axes.set_yscale("log")
        axes.grid(True, alpha=0.3)
        figure.savefig(folder / filename, dpi=100)
        written.append(folder / filename)
    names = sorted({name for entry in log_history for name in task_names(entry)})
    if names:
        figure = Figure(figsize=(6.4, 4.0), layout="constrained")
        axes = figure.add_subplot()
        for name in names:
            for suffix, style in (("accuracy", "-"), ("accuracy_norm", "--")):
                steps, values = _series(log_history, f"eval_{name}_{suffix}")
                axes.plot(steps, values, style, marker="o" if len(steps) < 30 else None, markersize=3,
                          label=f"{name} ({'length-normalised' if suffix == 'accuracy_norm' else 'raw'})")  # fmt: skip
        axes.set(title=TASKS_PLOT[1], xlabel="optimizer step", ylabel="accuracy")
        axes.grid(True, alpha=0.3)
        axes.legend()
        figure.savefig(folder / TASKS_PLOT[0], dpi=100)
        written.append(folder / TASKS_PLOT[0])
    return written


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_pg_gpt2.reports.plots",
        description="Draw the loss and perplexity curves of a run_clm.py output folder into that folder.",
    )
    parser.add_argument("output_dir", help="a run_clm.py output folder (finished or with checkpoints)")
    args = parser.parse_args(argv)
    written = write_plots(args.output_dir)
    if not written:
        raise UserError(f"{args.output_dir}: the log has no training or evaluation loss yet.")
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    run_cli(main)
