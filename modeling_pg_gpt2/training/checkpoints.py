"""The output folder of a run: resumable checkpoints, the lock that keeps a second run out, finished runs.

A re-run of the same command resumes from the newest *complete* `checkpoint-N` ([`checkpoint_problem`] tells
a cut-off one), leaves a finished run alone unless asked for more ([`finished_run`], [`asks_for_more`]),
and refuses a folder that holds something else ([`resolve_resume`]). [`output_lock`] holds the folder for one
run; [`saving`] turns a full disk into one line that names what a re-run resumes from (docs/faults.md).
The `args` these functions take are run_clm.py's `CLMTrainingArguments`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path

from safetensors import safe_open
from transformers import PretrainedConfig, Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..common.errors import CommandError, UserError, disk_full_message, is_disk_full
from ..common.outputs import LOCK_FILE, RECIPE_FILE, RUN_TOKENIZER_DIR, check_output_dir, read_config, weights_problem
from ..reports.run_record import RunInfo
from .streaming import STREAM_STATE_FILE

logger = logging.getLogger(__name__)


def checkpoint_problem(checkpoint: str | os.PathLike) -> str | None:
    """Why `checkpoint` cannot be resumed from, or `None` when it is complete.

    The Trainer writes `trainer_state.json` last, so a folder without a readable one was cut off while
    being written; a weights or optimizer file truncated by a crash fails its header check.
    """
    path = Path(checkpoint)
    state = path / "trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError):
        return "no readable trainer_state.json"
    weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
    if not weights and not any(path.glob("global_step*")) and not any(path.glob("pytorch_model_fsdp*")):
        return "no model weights"
    problem = weights_problem(path)
    if problem is not None:
        return problem
    for file in [*path.glob("*.pt"), *path.glob("*.pth"), *path.glob("*.bin")]:
        if not zipfile.is_zipfile(file):
            return f"{file.name} is truncated or corrupt"
    return None


# What makes two models' weights interchangeable: a checkpoint resumes only into the same shapes.
ARCHITECTURE = (
    *("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner"),
    *("activation_function", "tie_word_embeddings"),
)


def check_resumable_with(checkpoint: str | os.PathLike, config: PretrainedConfig, streaming: bool) -> None:
    """Refuse, in one line, to resume `checkpoint` into a model of another shape (`config`, e.g. another
    `n_layer` in --config_overrides) or with another way of reading the data than the run that saved it."""
    path = Path(checkpoint)
    try:
        saved = read_config(path)
    except UserError:
        saved = {}  # a DeepSpeed or FSDP checkpoint keeps its config elsewhere: its own loader checks shapes
    differ = [
        f"{name}={saved[name]} (this run: {getattr(config, name, None)})"
        for name in ARCHITECTURE
        if name in saved and saved[name] != getattr(config, name, None)
    ]
    if differ:
        raise UserError(
            f"{checkpoint} holds a model with {', '.join(differ)}: resume with the settings of the run that saved "
            "it, or pass --overwrite_output_dir to start over"
        )
    if not streaming and any(path.glob(STREAM_STATE_FILE.format(rank="*"))):
        raise UserError(
            f"{checkpoint} was saved by a --streaming run, whose position in the stream it holds: resume it with "
            "--streaming (and the same corpus), or pass --overwrite_output_dir to start over"
        )


def find_resumable_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete `checkpoint-N` folder in `output_dir`; incomplete ones are skipped with a warning."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    checkpoints = sorted(
        (p for p in folder.iterdir() if p.is_dir() and pattern.match(p.name)),
        key=lambda p: int(pattern.match(p.name).group(1)),
        reverse=True,
    )
    for checkpoint in checkpoints:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return str(checkpoint)
        logger.warning("Skipping %s: it was not completely written (%s).", checkpoint, problem)
    return None


def resolve_resume(args: TrainingArguments) -> str | None:
    """The checkpoint to resume from, or `None` to start from scratch; refuses to clobber a folder.

    Follows transformers' run_clm example: a folder with checkpoints is resumed, an empty or missing
    one is used, any other content needs `--overwrite_output_dir`.
    """
    if args.resume_from_checkpoint:
        problem = checkpoint_problem(args.resume_from_checkpoint)
        if problem is not None:
            raise UserError(f"cannot resume from {args.resume_from_checkpoint}: {problem}.")
        return args.resume_from_checkpoint
    output_dir = Path(args.output_dir)
    if args.overwrite_output_dir or not output_dir.is_dir():
        return None
    checkpoint = find_resumable_checkpoint(output_dir)
    if checkpoint is not None:
        return checkpoint
    check_output_dir(output_dir, allowed=_is_run_artifact, ignore=(LOCK_FILE,))
    if any(path.name != LOCK_FILE for path in output_dir.iterdir()):  # this run's own lock is no leftover
        logger.warning("%s holds a run stopped before its first complete checkpoint: starting over.", output_dir)
    return None


def finished_run(output_dir: str | os.PathLike) -> RunInfo | None:
    """The record (`training_info.json`) of the finished run in `output_dir`, or `None` if it holds none.

    A run is finished once it wrote its final model and, last of all, `training_info.json` with the
    reason it stopped (`finished`: "max_steps", "time budget" or "early stopping"); a run killed, stopped
    by Ctrl-C or diverged never writes it, and a final model cut off while being written does not count.
    """
    folder = Path(output_dir)
    try:
        with safe_open(folder / "model.safetensors", framework="pt"):
            pass
    except Exception:  # missing, unreadable or truncated: not a finished run
        return None
    info = RunInfo.read(folder)
    if info is None:
        return None
    if info.finished is None and 0 < (info.max_steps or -1) <= (info.global_step or 0):
        info.finished = "max_steps"  # written before `finished` was recorded
    return info if info.finished else None


def asks_for_more(info: RunInfo, args: TrainingArguments) -> bool:
    """Whether `args` asks a finished run (its record) to train on: a larger --max_steps (or --num_train_epochs),
    or a longer --max_train_minutes for a run that the time budget stopped."""
    done_steps, done_epochs = info.max_steps or -1, info.num_train_epochs or 0
    if args.max_steps > 0:
        more = args.max_steps > (done_steps if done_steps > 0 else info.global_step or 0)
    else:
        more = done_steps <= 0 and args.num_train_epochs > done_epochs
    if info.finished == "time budget":
        budget = info.max_train_minutes
        more = more or args.max_train_minutes is None or (budget is not None and args.max_train_minutes > budget)
    return more


def _is_run_artifact(path: Path) -> bool:
    """Whether `path` is something a run writes before its first complete checkpoint (plots, logs, checkpoints)."""
    from ..reports.plots import PLOTS

    if path.is_dir():
        checkpoint = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", path.name) is not None
        return checkpoint or path.name in ("runs", RUN_TOKENIZER_DIR)
    return path.name in PLOTS or path.name == RECIPE_FILE


@contextlib.contextmanager
def saving(trainer: Trainer):
    """Turn a full disk while training or saving into one line, removing the checkpoint it cut off."""
    output_dir = Path(trainer.args.output_dir)
    try:
        yield
    except Exception as err:
        if isinstance(err, CommandError) or not is_disk_full(err, output_dir):
            raise
        target: Path = output_dir
        checkpoints = sorted(output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=os.path.getmtime)
        if checkpoints and checkpoint_problem(checkpoints[-1]) is not None:
            target = checkpoints[-1]
            if trainer.is_world_process_zero():  # incomplete, never resumed from: give its space back
                shutil.rmtree(target, ignore_errors=True)
        raise CommandError(disk_full_message(target, find_resumable_checkpoint(output_dir))) from None


def resume_hint(output_dir: Path) -> str:
    """What a re-run of the same command does: resume from the newest complete checkpoint, or start over."""
    checkpoint = find_resumable_checkpoint(output_dir)
    if checkpoint is None:
        return "no checkpoint was saved: a re-run starts over"
    return f"a re-run of the same command resumes from {checkpoint}"


def divergence_message(what: str, args: TrainingArguments, output_dir: Path) -> str:
    """One line for a run whose loss or gradients stopped being finite: where, what is kept, what to try."""
    kept = find_resumable_checkpoint(output_dir)
    fixes = f"a lower --learning_rate (now {args.learning_rate:g}), more --warmup_steps (now {args.warmup_steps:g})"
    if not 0 < args.max_grad_norm <= 1:
        fixes += f", --max_grad_norm 1.0 (now {args.max_grad_norm:g})"
    if kept is None:
        return f"training diverged: {what}; no final model written, no checkpoint saved. Try {fixes}."
    return (
        f"training diverged: {what}; no final model written, the newest checkpoint (finite weights) is {kept}. "
        f"Try {fixes}, with --overwrite_output_dir to start over (a plain re-run resumes from that checkpoint)."
    )


__all__ = [
    "ARCHITECTURE",
    "asks_for_more",
    "check_resumable_with",
    "checkpoint_problem",
    "divergence_message",
    "find_resumable_checkpoint",
    "finished_run",
    "resolve_resume",
    "resume_hint",
    "saving",
]
