"""Pre-training pg_gpt2 with the transformers `Trainer`: the package behind `run_clm.py`.

The arguments are `HfArgumentParser` dataclasses with the flags of transformers' own `run_clm.py`
example ([`CLMTrainingArguments`] here, [`~modeling_pg_gpt2.model_init.ModelArguments`],
[`~modeling_pg_gpt2.data.DataTrainingArguments`] and the shared [`~modeling_pg_gpt2.corpus.CorpusArguments`]),
parsed by `modeling_pg_gpt2.arguments`; [`train`] runs the whole job, each step from its own module:

1. (`checkpoints`) check the output folder and lock it for this run: resume from its last complete
   checkpoint, leave a finished run alone (unless asked for more steps), refuse to overwrite a folder
   that holds something else, start over with `--overwrite_output_dir`;
2. (`model_init`) build the model (preset, config file, pg_gpt2 checkpoint or GPT-2 weights) sized to
   the tokenizer;
3. (`data`) tokenize the corpus with `datasets.map` (batched, cached, `num_proc`), separate documents
   with `<|endoftext|>` and pack them into `block_size` blocks; or (`prepared`) read the blocks
   `prepare_data.py` made once, memory-mapped; or, with `--streaming`, tokenize and pack on the fly a
   stream of the corpus, which `streaming.StreamingTrainer` resumes at its exact position;
4. (`eval_metrics`, `callbacks`, `throughput`) train with evaluation (loss, perplexity, accuracy, bits
   per byte), checkpoints, the best model kept, early stopping, plots refreshed at each evaluation,
   tokens/s and MFU at each logging step;
5. (`run_info`) write the best model, tokenizer, generation config, `metrics.json`,
   `training_info.json`, the plots and a model card into the output folder.

`hardware` sets the CPU up for the run (threads, malloc) and says where bf16 is native.

Every bad input is a [`~modeling_pg_gpt2.cli.UserError`] raised before the output folder is touched.
Faults during training end in one line too, keeping every complete checkpoint: Ctrl-C saves the
current step (`callbacks.InterruptCallback`), a non-finite gradient norm or loss stops the run before the
update (`callbacks.DivergenceCallback`), a full disk names the file it cut off (docs/faults.md lists them all).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    EarlyStoppingCallback,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.training_args import OptimizerNames

from .callbacks import DivergenceCallback, InterruptCallback, PlotCallback, TimeLimitCallback
from .checkpoints import (
    asks_for_more,
    divergence_message,
    find_resumable_checkpoint,
    finished_run,
    resolve_resume,
    resume_hint,
    saving,
)
from .cli import CommandError, Interrupted, UserError, check_not_an_input, check_output_dir, setup_logging
from .collators import DocumentMaskingCollator
from .corpus import CorpusArguments
from .data import DataTrainingArguments, check_streaming_arguments, prepare_datasets, streaming_datasets
from .eval_metrics import ComputeLMMetrics, final_eval_metrics, preprocess_logits_for_metrics
from .eval_tasks import EvalTasksCallback
from .hardware import native_bf16, setup_cpu_training, sharding_engine
from .model_init import (
    ModelArguments,
    build_model,
    count_parameters,
    hide_tied_weight_warning,
    load_tokenizer,
    set_generation_defaults,
)
from .optim import MUON, MuonAdamW, muon_adamw_kwargs
from .outputs import METRICS_FILE, output_lock
from .prepared import load_prepared, read_prepared_info
from .run_info import finish_reason, tokens_per_step, training_info, write_run_outputs
from .streaming import StreamingTrainer
from .throughput import ThroughputCallback, flops_per_token

logger = logging.getLogger(__name__)


@dataclass
class CLMTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the defaults of a pre-training run and the options of `run_clm.py`.

    Unlike the bare `TrainingArguments`, a run trains and evaluates every `eval_steps`, keeps the
    two newest checkpoints plus the best one, and reloads the best model (lowest eval loss) at the
    end. Flags of the same name change those defaults.
    """

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over in an output folder that already holds a run (its checkpoints are deleted). "
            "Without it, a folder with checkpoints is resumed and any other non-empty folder is an error."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without a better eval loss (default: never)."},
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Smallest eval-loss improvement that counts for early stopping."}
    )
    max_train_minutes: float | None = field(
        default=None,
        metadata={
            "help": "Stop training after this many minutes of this process, evaluating and saving as at the end "
            "(a time budget on top of max_steps; the learning-rate schedule still follows max_steps)."
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
            "(all of them on an idle machine; OMP_NUM_THREADS, as launchers set it, takes precedence)."
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
            "--learning_rate."
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
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate: 'no', 'steps', 'epoch'."})
    eval_steps: float | None = field(default=500, metadata={"help": "Evaluate every N optimizer steps."})
    logging_steps: float = field(default=20, metadata={"help": "Log the training loss every N steps."})
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most N checkpoints (the best one is always kept)."}
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
            "also logs a sample (fixed seed). See modeling_pg_gpt2.eval_tasks."
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
        if self.do_train and (self.max_steps == 0 or self.max_steps < -1):
            # transformers takes any max_steps <= 0 as "train num_train_epochs epochs"
            raise ValueError(
                f"--max_steps {self.max_steps} trains nothing: pass a positive number of steps, -1 to train "
                "--num_train_epochs epochs, or --do_train false to only evaluate."
            )
        super().__post_init__()
        if muon:
            self.optim = MUON


# --------------------------------------------------------------------------------------------------
# The run


def train(
    model_args: ModelArguments,
    corpus_args: CorpusArguments,
    data_args: DataTrainingArguments,
    training_args: CLMTrainingArguments,
) -> dict[str, float]:
    """Run a whole pre-training job (see the module docstring) and return the final metrics.

    Re-run on the folder of a finished run, it changes nothing and returns that run's metrics, unless
    asked to train further (see [`asks_for_more`]). A second run on a folder in use is refused.
    """
    setup_logging(training_args)
    if not training_args.do_train:
        return evaluate_only(model_args, corpus_args, data_args, training_args)
    inputs = {"--train_file": corpus_args.train_file, "--validation_file": corpus_args.validation_file}
    check_not_an_input(
        training_args.output_dir, "--output_dir", {**inputs, "--prepared_data": data_args.prepared_data}
    )
    if data_args.streaming:  # before the output folder exists
        check_streaming_arguments(data_args, training_args)
    output_dir = check_output_dir(training_args.output_dir, overwrite_flag=None)  # a file, or not writable
    lock = output_lock(output_dir) if training_args.process_index == 0 else contextlib.nullcontext()
    with lock:
        return _train(model_args, corpus_args, data_args, training_args)


def _train(
    model_args: ModelArguments,
    corpus_args: CorpusArguments,
    data_args: DataTrainingArguments,
    training_args: CLMTrainingArguments,
) -> dict[str, float]:
    resume_from = resolve_resume(training_args)  # first: refuses a folder that holds something else
    eval_tasks = EvalTasksCallback(training_args.eval_tasks, training_args.seed)  # reads the files: fails early
    setup_cpu_training(training_args)
    on_cpu = training_args.device.type == "cpu"
    if training_args.optim == MUON and on_cpu and not native_bf16("cpu"):
        logger.warning(
            "--optim muon: torch.optim.Muon orthogonalises its updates in bf16, which this CPU emulates (no "
            "AVX512-BF16 or AMX): steps are about 10x slower than AdamW's here (bench/RESULTS.md)."
        )
    if training_args.auto_bf16:
        precision = "bf16 autocast" if training_args.bf16 else "fp16 autocast" if training_args.fp16 else "fp32"
        logger.info("--auto_bf16: training in %s on %s.", precision, training_args.device.type)

    set_seed(training_args.seed)  # before the model exists: Trainer seeds only after
    tokenizer = load_tokenizer(model_args)
    model, source = build_model(model_args, tokenizer)
    set_generation_defaults(model, tokenizer)
    if model.config.tie_word_embeddings:
        hide_tied_weight_warning(model)
    datasets, corpus_args, block_size = _training_data(
        corpus_args, data_args, training_args, tokenizer, model.config.n_positions
    )
    # Every input is checked by now (on a re-run the corpus comes from the datasets cache): a finished run
    # that is asked for nothing more is left as it is.
    output_dir = Path(training_args.output_dir)
    if not (training_args.overwrite_output_dir or training_args.resume_from_checkpoint):
        info = finished_run(output_dir)
        if info is not None and not asks_for_more(info, training_args):
            logger.info(
                "The run in %s is complete (step %d, ended by %s): nothing to do. Pass a larger --max_steps to "
                "train it further, or --overwrite_output_dir to start over.",
                output_dir,
                info.get("global_step", 0),
                info["finished"],
            )
            return json.loads((output_dir / METRICS_FILE).read_text(encoding="utf-8"))
    if resume_from is not None:
        logger.info("Resuming from %s (pass --overwrite_output_dir to start over).", resume_from)
    logger.info(
        "Model %s: %s parameters, %d layers, %d wide, vocab %d; %s train and %d validation blocks of %d tokens.",
        source,
        f"{count_parameters(model):,}",
        model.config.n_layer,
        model.config.n_embd,
        model.config.vocab_size,
        "streamed" if data_args.streaming else len(datasets["train"]),
        len(datasets["validation"]),
        block_size,
    )

    divergence, interrupt = DivergenceCallback(), InterruptCallback()
    time_limit = TimeLimitCallback(training_args.max_train_minutes) if training_args.max_train_minutes else None
    callbacks: list[TrainerCallback] = [PlotCallback(), divergence, interrupt, *filter(None, [time_limit])]
    if training_args.early_stopping_patience:
        callbacks.append(
            EarlyStoppingCallback(training_args.early_stopping_patience, training_args.early_stopping_threshold)
        )
    trainer = _make_trainer(model, tokenizer, datasets, training_args, data_args.streaming, callbacks)
    flops = flops_per_token(model.config, block_size)
    throughput = ThroughputCallback(tokens_per_step(training_args, block_size), flops)
    # First in the list: they add their figures to the log before the loggers receive it.
    trainer.callback_handler.callbacks[:0] = [eval_tasks, throughput]

    if training_args.overwrite_output_dir and trainer.is_world_process_zero():
        for stale in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            logger.warning("--overwrite_output_dir: deleting %s from the previous run.", stale)
            shutil.rmtree(stale)

    with saving(trainer):
        try:
            result = trainer.train(resume_from_checkpoint=resume_from)
        except KeyboardInterrupt:  # a second Ctrl-C, in the middle of a step
            raise Interrupted(f"stopped by Ctrl-C; {resume_hint(output_dir)}") from None
        if divergence.diverged is not None:
            raise CommandError(divergence_message(divergence.diverged, training_args, output_dir))
        if interrupt.stopped_at is not None:
            raise Interrupted(f"stopped by Ctrl-C at step {interrupt.stopped_at}; {resume_hint(output_dir)}")
        metrics = {**result.metrics, **throughput.summary()}  # train_tokens_per_second (all processes), train_mfu
        if training_args.do_eval:
            metrics.update(final_eval_metrics(trainer))
        if not all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters()):
            raise CommandError(divergence_message("the weights are not finite", training_args, output_dir))

        info = training_info(model_args, corpus_args, data_args, trainer, source, block_size, datasets)
        info["finished"] = finish_reason(trainer, time_limit)
        write_run_outputs(trainer, metrics, info)
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return metrics


def evaluate_only(
    model_args: ModelArguments,
    corpus_args: CorpusArguments,
    data_args: DataTrainingArguments,
    training_args: CLMTrainingArguments,
) -> dict[str, float]:
    """`--do_train false`: evaluate a trained model on the validation split, writing no file anywhere.

    The model is `--model_name_or_path`, or else the one in `--output_dir` (a finished run's model, or its
    newest complete checkpoint). The metrics are logged and printed as one JSON line on stdout; the run
    folder (model, history, card, plots) changes only by training.
    """
    if not training_args.do_eval:
        raise UserError("--do_train false --do_eval false does nothing: drop one of them.")
    source = model_args.model_name_or_path or _trained_model_in(Path(training_args.output_dir))
    # A recipe's from-scratch fields describe the model the run built, not one to build now.
    model_args = dataclasses.replace(model_args, model_name_or_path=source, config_name=None, config_overrides=None)
    tokenizer = load_tokenizer(model_args)
    model, source = build_model(model_args, tokenizer)
    datasets, corpus_args, block_size = _training_data(
        corpus_args, data_args, training_args, tokenizer, model.config.n_positions
    )
    eval_tasks = EvalTasksCallback(training_args.eval_tasks, training_args.seed)
    with tempfile.TemporaryDirectory(prefix="pg-gpt2-eval-") as scratch:
        # The Trainer creates its output_dir and loggers write there: give it a folder of its own.
        training_args.output_dir, training_args.report_to = scratch, []
        trainer = _make_trainer(model, tokenizer, datasets, training_args, data_args.streaming, [])
        trainer.callback_handler.callbacks[:0] = [eval_tasks]
        metrics = trainer.evaluate()
    logger.info(
        "Validation of %s (%d blocks of %d tokens): %s.",
        source,
        len(datasets["validation"]),
        block_size,
        ", ".join(f"{key} {value:.4g}" for key, value in metrics.items() if isinstance(value, float)),
    )
    print(json.dumps(metrics))
    return metrics


def _trained_model_in(output_dir: Path) -> str:
    """The model `--do_train false` evaluates when no --model_name_or_path is given: the run's in `output_dir`."""
    if finished_run(output_dir) is not None:
        return str(output_dir)
    checkpoint = find_resumable_checkpoint(output_dir)
    if checkpoint is None:
        raise UserError(
            f"--do_train false evaluates a trained model, and {output_dir} holds none: pass --model_name_or_path "
            "(a run_clm.py output folder or checkpoint), or the --output_dir of a run that saved one."
        )
    return checkpoint


def _training_data(
    corpus_args: CorpusArguments,
    data_args: DataTrainingArguments,
    training_args: CLMTrainingArguments,
    tokenizer: PreTrainedTokenizerBase,
    n_positions: int,
) -> tuple[Mapping[str, Any], CorpusArguments, int]:
    """The train and validation blocks: read from `--prepared_data`, streamed, or tokenized and packed here.

    Also returns the corpus arguments to record (a prepared folder's own) and the block size, checked
    against the model's context `n_positions`.
    """
    prepared = None
    if data_args.prepared_data is not None:
        if corpus_args.dataset_name is not None or corpus_args.train_file is not None:
            raise UserError("pass either --prepared_data or a corpus (--dataset_name, --train_file), not both")
        if data_args.streaming:
            raise UserError(
                "--prepared_data is read memory-mapped, never streamed: drop --streaming (or --prepared_data)."
            )
        prepared = read_prepared_info(data_args.prepared_data)
        corpus_args = dataclasses.replace(corpus_args, **prepared.corpus)  # recorded in training_info.json
    block_size = data_args.block_size or (prepared.block_size if prepared else min(n_positions, 1024))
    if block_size > n_positions:
        raise UserError(
            f"--block_size {block_size} is larger than the model's context n_positions={n_positions}; "
            f"use --block_size {n_positions} or less, or a config with more positions."
        )
    if block_size < 2:
        raise UserError(f"--block_size must be at least 2, got {block_size}.")
    if prepared is not None:
        datasets = load_prepared(data_args.prepared_data, tokenizer, block_size, data_args, training_args)
    else:
        load = streaming_datasets if data_args.streaming else prepare_datasets
        datasets = load(corpus_args, data_args, training_args, tokenizer, block_size)
    return datasets, corpus_args, block_size


def _make_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    datasets: Mapping[str, Any],
    args: CLMTrainingArguments,
    streaming: bool,
    callbacks: list[TrainerCallback],
) -> Trainer:
    """The run's Trainer: the collator of `--document_masking`, the optimizer of `--optim muon`, the metrics."""
    collator = DocumentMaskingCollator(tokenizer.eos_token_id) if args.document_masking else default_data_collator
    return (StreamingTrainer if streaming else Trainer)(
        model=model,
        args=args,
        train_dataset=datasets["train"] if args.do_train else None,
        eval_dataset=datasets["validation"] if args.do_eval else None,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=ComputeLMMetrics(tokenizer) if args.do_eval else None,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if args.do_eval else None,
        callbacks=callbacks,
        optimizer_cls_and_kwargs=(MuonAdamW, muon_adamw_kwargs(model, args)) if args.optim == MUON else None,
    )


__all__ = ["CLMTrainingArguments", "DataTrainingArguments", "ModelArguments", "evaluate_only", "train"]
