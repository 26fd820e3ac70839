"""What a finished run writes about itself: `training_info.json`, `metrics.json`, the plots and the model card.

`train` ends with [`write_run_outputs`]: the best model and its tokenizer, the trainer state, the final
metrics, the record of how the run was made ([`training_info`]), the curves, a model card and a summary in
the log. `training_info.json` is written last: its `finished` ([`finish_reason`]) marks the run complete
(`checkpoints.finished_run`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import Trainer, TrainingArguments

from ..common.outputs import METRICS_FILE, TRAINING_INFO_FILE
from ..data.blocks import DataTrainingArguments
from ..data.corpus import CorpusArguments
from ..reports.run_record import RunInfo
from .callbacks import ScheduleCallback
from .model_init import ModelArguments
from .optim import MUON

logger = logging.getLogger(__name__)

# The training arguments a run records as they are, under their own names (each a field of `RunInfo`).
RECORDED_ARGUMENTS = (
    "world_size",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "document_masking",
    "max_steps",
    "num_train_epochs",
    "max_train_minutes",
    "plateau_patience",
    "seed",
    "bf16",
    "fp16",
    "torch_compile",
    "reuse_freed_memory",
)


def tokens_per_step(args: TrainingArguments, block_size: int) -> int:
    """Tokens one optimizer step trains on, across all processes and gradient-accumulation steps."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * block_size


def finish_reason(trainer: Trainer) -> str:
    """What ended training: "time budget", "plateau" (decayed after validation stopped improving), "max_steps"
    or "early stopping"."""
    for callback in trainer.callback_handler.callbacks:  # a resumed run's Trainer restores a new instance
        if isinstance(callback, ScheduleCallback) and (callback.used_up or callback.plateaued):
            return "time budget" if callback.used_up else "plateau"
    return "max_steps" if trainer.state.global_step >= trainer.state.max_steps else "early stopping"


def training_info(
    model_args: ModelArguments,
    corpus_args: CorpusArguments,
    data_args: DataTrainingArguments,
    trainer: Trainer,
    source: str,
    block_size: int,
    datasets: Mapping[str, Any],
    finished: str | None = None,
    recipe: dict[str, dict[str, Any]] | None = None,
) -> RunInfo:
    """The record of the run (`training_info.json`): what the model card and later readers need to know about it,
    beyond config.json and metrics.json.

    `trainer.args` is the run's `CLMTrainingArguments`; `source` says where the model came from
    (`model_init.build_model`); `datasets` holds the "train" and "validation" blocks; `finished`, what ended
    training ([`finish_reason`]); `recipe`, the automatic recipe's choices (`auto_recipe.recorded`).
    """
    args = trainer.args
    step_tokens = tokens_per_step(args, block_size)
    return RunInfo(
        model_source=source,
        tokenizer=model_args.tokenizer_name or model_args.model_name_or_path,
        corpus=corpus_args,
        block_size=block_size,
        streaming=data_args.streaming,
        # A stream has no length: its blocks are counted as they are trained on (tokens_seen).
        train_blocks=None if data_args.streaming else len(datasets["train"]),
        validation_blocks=len(datasets["validation"]),
        streaming_validation_documents=data_args.streaming_validation_documents if data_args.streaming else None,
        tokens_per_step=step_tokens,
        global_step=trainer.state.global_step,
        tokens_seen=trainer.state.global_step * step_tokens,
        best_global_step=trainer.state.best_global_step,
        lr_scheduler_type=str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        adam_betas=[args.adam_beta1, args.adam_beta2],
        optim=str(getattr(args.optim, "value", args.optim)),
        muon_learning_rate=args.muon_learning_rate if args.optim == MUON else None,
        attn_implementation=trainer.model.config._attn_implementation,
        device=str(args.device),
        versions={"torch": torch.__version__, "transformers": transformers.__version__},
        recipe=recipe,
        finished=finished,
        **{name: getattr(args, name) for name in RECORDED_ARGUMENTS},
    )


def write_run_outputs(trainer: Trainer, metrics: dict[str, float], info: RunInfo) -> None:
    """Save the model (the best one when load_best_model_at_end) and everything the run reports about itself.

    Every process takes part in saving the model (FSDP and DeepSpeed gather it); the main process writes the
    rest, `info` as `training_info.json` last.
    """
    output_dir = Path(trainer.args.output_dir)
    if trainer.is_world_process_zero():  # no stale completion record next to the files now rewritten
        (output_dir / TRAINING_INFO_FILE).unlink(missing_ok=True)
    # The tokenizer saved with the model says the model's context (as GPT-2's says 1024): pipelines truncate to
    # it, and servers (vLLM) take it as a bound. Set only now, after the corpus was tokenized and cached.
    tokenizer = trainer.processing_class
    if tokenizer is not None:
        tokenizer.model_max_length = min(tokenizer.model_max_length, trainer.model.config.n_positions)
    trainer.save_model()  # tokenizer included
    if not trainer.is_world_process_zero():
        return
    trainer.save_state()
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    from ..reports.model_card import write_model_card
    from ..reports.plots import write_plots

    write_plots(output_dir, trainer.state.log_history)
    write_model_card(output_dir, run=info)
    info.write(output_dir)
    _log_summary(output_dir, metrics)


def _log_summary(output_dir: Path, metrics: dict[str, float]) -> None:
    if "train_tokens_per_second" in metrics:
        mfu = f", MFU {metrics['train_mfu']:.1%}" if "train_mfu" in metrics else ""
        logger.info("Training: %s tokens/s%s.", f"{metrics['train_tokens_per_second']:,.0f}", mfu)
    parts = [
        f"{name} {metrics[key]:.4g}"
        for key, name in (
            ("eval_loss", "loss"),
            ("eval_perplexity", "perplexity"),
            ("eval_accuracy", "accuracy"),
            ("eval_bits_per_byte", "bits/byte"),
        )
        if key in metrics
    ]
    if parts:
        logger.info("Validation of the saved model: %s.", ", ".join(parts))
    logger.info("Model, tokenizer, metrics, plots and model card written to %s.", output_dir)


__all__ = ["finish_reason", "tokens_per_step", "training_info", "write_run_outputs"]
