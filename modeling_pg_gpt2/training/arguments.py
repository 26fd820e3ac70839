"""The arguments of a training run: `TrainingArguments` with the defaults and options of `run_clm.py`."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from transformers import TrainingArguments
from transformers.training_args import OptimizerNames

from ..common.ranges import FRACTION, RANGE, SEED, Range, at_least, positive
from .hardware import native_bf16, sharding_engine
from .optim import MUON


@dataclass
class CLMTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the defaults of a pre-training run and the options of `run_clm.py`.

    Unlike the bare `TrainingArguments`, a run trains and evaluates every `eval_steps`, keeps the
    two newest checkpoints plus the best one, and reloads the best model (lowest eval loss) at the
    end. Flags of the same name change those defaults. Every numeric flag has a range (`common.ranges`):
    its own in the field's metadata, transformers' by name in `inherited_ranges`.
    """

    inherited_ranges = MappingProxyType(
        {
            "per_device_train_batch_size": at_least(1),
            "per_device_eval_batch_size": at_least(1),
            "gradient_accumulation_steps": at_least(1),
            "eval_accumulation_steps": at_least(1),
            "num_train_epochs": positive(),
            "max_steps": Range(
                1, also=(-1,), note="-1: train --num_train_epochs epochs; to only evaluate, --do_train false"
            ),
            "learning_rate": positive(),
            "warmup_steps": at_least(0),
            "weight_decay": at_least(0),
            "adam_beta1": FRACTION,
            "adam_beta2": FRACTION,
            "adam_epsilon": at_least(0),
            "max_grad_norm": at_least(0),
            "label_smoothing_factor": FRACTION,
            "neftune_noise_alpha": positive(),
            "torch_empty_cache_steps": at_least(1),
            "eval_delay": at_least(0),
            "save_steps": positive(),
            "seed": SEED,
            "data_seed": SEED,
            "dataloader_num_workers": at_least(0),
            "dataloader_prefetch_factor": at_least(1),
            "ddp_bucket_cap_mb": at_least(1),
            "ddp_timeout": at_least(1),
            "local_rank": at_least(-1),
        }
    )

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over in an output folder that already holds a run (its checkpoints are deleted). "
            "Without it, a folder with checkpoints is resumed and any other non-empty folder is an error."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop after this many evaluations without a better eval loss (default, or 0: never).",
            RANGE: at_least(1, also=(0,), note="0: never"),
        },
    )
    auto_recipe: bool = field(
        default=True,
        metadata={
            "help": "Training from scratch: choose every recipe value not given (tokenizer size, model shape, batch, "
            "learning rate and schedule, dropout, steps, evaluations) from the corpus size, --max_train_minutes and "
            "the speed measured at start; without --tokenizer_name a tokenizer is trained on the training split. "
            "Each choice and its reason are logged and recorded (recipe.json, training_info.json, the card); a "
            "flag or recipe field you give wins. Pass false for transformers' plain defaults."
        },
    )
    plateau_patience: int | None = field(
        default=None,
        metadata={
            "help": "After this many evaluations without a better eval loss, decay the learning rate to its end over "
            "the next --plateau_decay_fraction of the steps so far, evaluate, and stop (the best model is kept). "
            "Default: never (the automatic recipe sets it).",
            RANGE: at_least(1),
        },
    )
    plateau_decay_fraction: float = field(
        default=0.2,
        metadata={
            "help": "--plateau_patience: the decay's length, as a fraction of the steps trained when it starts.",
            RANGE: Range(0, 1, above=True),
        },
    )
    early_stopping_threshold: float = field(
        default=0.0,
        metadata={"help": "Smallest eval-loss improvement that counts for early stopping.", RANGE: at_least(0)},
    )
    max_train_minutes: float | None = field(
        default=None,
        metadata={
            "help": "Stop training after this many minutes of this process, evaluating and saving as at the end "
            "(a time budget on top of max_steps; the learning-rate schedule still follows max_steps).",
            RANGE: positive(),
        },
    )
    reuse_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "Training on a CPU under Linux (glibc): let malloc keep large freed blocks for the next step "
            "instead of returning them to the system, whose fresh pages fault in one by one: 10-20%% faster steps "
            "for 13-19%% more resident memory. Pass false to keep memory tight."
        },
    )
    cpu_threads: int | None = field(
        default=None,
        metadata={
            "help": "Threads of a CPU run. Default: the cores other processes leave free when the run starts "
            "(all of them on an idle machine; OMP_NUM_THREADS, as launchers set it, takes precedence).",
            RANGE: at_least(1),
        },
    )
    auto_bf16: bool = field(
        default=False,
        metadata={
            "help": "Train under bf16 autocast (as --bf16, fp32 master weights) where the device multiplies bf16 "
            "natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX, where bf16 matrix products "
            "run about twice as fast as fp32; fp32 elsewhere. --bf16 true or --fp16 true take precedence."
        },
    )
    optim: str = field(
        default=TrainingArguments.__dataclass_fields__["optim"].default,
        metadata={
            "help": "The optimizer: one of transformers' (adamw_torch_fused, adamw_torch, sgd, ...), or 'muon': "
            "Muon for the hidden weight matrices (attention, MLP) at --muon_learning_rate and AdamW for the "
            "embeddings, head, biases and LayerNorm at --learning_rate, as modded-nanogpt and nanochat train.",
            "choices": [*(name.value for name in OptimizerNames), MUON],
        },
    )
    muon_learning_rate: float = field(
        default=0.02,
        metadata={
            "help": "--optim muon: Muon's peak learning rate (torch.optim.Muon's scaling: the update of an "
            "(out, in) matrix has spectral norm lr * sqrt(max(1, out/in))); the schedule scales it with "
            "--learning_rate.",
            RANGE: positive(),
        },
    )
    document_masking: bool = field(
        default=False,
        metadata={
            "help": "Attend within each document only: in every packed block, positions restart at 0 after each "
            "<|endoftext|> and no token sees the documents before it, as a generated text starts (the label of "
            "each document's first token is not predicted). Training and evaluation."
        },
    )
    do_train: bool = field(default=True, metadata={"help": "Train (pass --do_train false to only evaluate)."})
    do_eval: bool = field(default=True, metadata={"help": "Evaluate on the validation split."})
    eval_strategy: str = field(
        default="steps", metadata={"help": "When to evaluate.", "choices": ["no", "steps", "epoch"]}
    )
    eval_steps: float | None = field(
        default=500,
        metadata={"help": "Evaluate every N optimizer steps (below 1: a fraction of max_steps).", RANGE: positive()},
    )
    logging_steps: float = field(
        default=20,
        metadata={
            "help": "Log the training loss every N steps (below 1: a fraction of max_steps).",
            RANGE: positive(),
        },
    )
    save_total_limit: int | None = field(
        default=2,
        metadata={"help": "Keep at most N checkpoints (the best one is always kept).", RANGE: at_least(1)},
    )
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "Reload the best checkpoint (metric_for_best_model) at the end."}
    )
    metric_for_best_model: str | None = field(
        default="eval_loss", metadata={"help": "Metric that picks the best checkpoint."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "Every pg_gpt2 parameter gets a gradient, so DDP skips the search for unused ones."},
    )
    restore_callback_states_from_checkpoint: bool = field(
        default=True, metadata={"help": "Restore early-stopping state when resuming."}
    )
    eval_tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "Multiple-choice JSONL files (evaluate_lm.py's format) scored at every evaluation: "
            "eval_<file>_accuracy and eval_<file>_accuracy_norm are logged beside the loss. Every evaluation "
            "also logs a sample (fixed seed). See modeling_pg_gpt2.evaluation.tasks."
        },
    )
    report_to: None | str | list[str] = field(
        default="tensorboard" if importlib.util.find_spec("tensorboard") is not None else "none",
        metadata={"help": "Loggers: 'tensorboard' (the default when installed), 'wandb', 'all', 'none'."},
    )

    def __post_init__(self) -> None:
        # transformers knows only its own optimizer names; `train` gives the Trainer Muon itself (optim.py).
        muon = self.optim == MUON
        if muon:
            self.optim = OptimizerNames.ADAMW_TORCH.value
        accelerator = torch.accelerator.current_accelerator(check_available=True)  # None on a CPU-only machine
        if self.auto_bf16 and not (self.bf16 or self.fp16):
            on_cpu = self.use_cpu or accelerator is None
            self.bf16 = native_bf16("cpu" if on_cpu else accelerator.type)
            # transformers accepts bf16 on a CPU only when told that the CPU is the device
            self.use_cpu = self.use_cpu or (self.bf16 and on_cpu)
        if accelerator is None:
            engine = sharding_engine()
            if engine is not None:
                # accelerate applies them to GPU process groups only: on a CPU it would train plain DDP, unsharded.
                raise ValueError(
                    f"{engine} needs GPUs: on a CPU accelerate would silently train with plain DDP instead; launch "
                    "with configs/accelerate/cpu-ddp.yaml here"
                )
            # Under a launcher (accelerate launch, torchrun) on a machine without GPUs, only use_cpu makes
            # transformers set up DDP over gloo; without it every rank silently trains alone.
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                self.use_cpu = True
            self.dataloader_pin_memory = False  # nothing to pin for; avoids torch's warning on CPU
        if not self.do_eval and self.eval_strategy != "no":
            self.eval_strategy = "no"
        if self.eval_strategy == "no":
            self.load_best_model_at_end = False
        super().__post_init__()
        if muon:
            self.optim = MUON


__all__ = ["CLMTrainingArguments"]
