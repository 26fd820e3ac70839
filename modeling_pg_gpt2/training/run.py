"""Pre-training pg_gpt2 with the transformers `Trainer`: the package behind `run_clm.py`.

The arguments are `HfArgumentParser` dataclasses with the flags of transformers' own `run_clm.py`
example ([`~modeling_pg_gpt2.training.arguments.CLMTrainingArguments`],
[`~modeling_pg_gpt2.training.model_init.ModelArguments`], [`~modeling_pg_gpt2.data.blocks.DataTrainingArguments`]
and the shared [`~modeling_pg_gpt2.data.corpus.CorpusArguments`]), parsed by `modeling_pg_gpt2.cli.arguments`;
[`train`] runs the whole job, each step from its own module:

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

Every bad input is a [`~modeling_pg_gpt2.common.errors.UserError`] raised before the output folder is touched.
Faults during training end in one line too, keeping every complete checkpoint: Ctrl-C (or SIGTERM) saves the
current step (`callbacks.InterruptCallback`), a non-finite gradient norm or loss stops the run before the
update (`callbacks.DivergenceCallback`), a full disk names the file it cut off (docs/faults.md lists them all).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Set
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

from ..common.errors import SIGNAL_NAMES, CommandError, Interrupted, UserError, interrupting_signal
from ..common.outputs import METRICS_FILE, check_not_an_input, check_output_dir, output_lock
from ..common.ranges import check_ranges
from ..data.blocks import (
    DataTrainingArguments,
    check_streaming_arguments,
    default_block_size,
    prepare_datasets,
    streaming_datasets,
)
from ..data.collators import DocumentMaskingCollator
from ..data.corpus import CorpusArguments
from ..data.prepared import load_prepared, read_prepared_info
from ..evaluation.metrics import (
    ComputeLMMetrics,
    check_metric_for_best_model,
    final_eval_metrics,
    preprocess_logits_for_metrics,
)
from ..evaluation.tasks import EvalTasksCallback
from .arguments import CLMTrainingArguments
from .auto_recipe import apply_auto_recipe, recorded
from .callbacks import DivergenceCallback, InterruptCallback, PlotCallback, ScheduleCallback
from .checkpoints import (
    asks_for_more,
    check_resumable_with,
    divergence_message,
    find_resumable_checkpoint,
    finished_run,
    resolve_resume,
    resume_hint,
    saving,
)
from .hardware import native_bf16, setup_cpu_training
from .model_init import (
    ModelArguments,
    build_model,
    count_parameters,
    hide_tied_weight_warning,
    run_tokenizer,
    set_generation_defaults,
)
from .optim import MUON, MuonAdamW, muon_adamw_kwargs
from .run_info import finish_reason, tokens_per_step, training_info, write_run_outputs
from .streaming import StreamingTrainer
from .throughput import ThroughputCallback, flops_per_token

logger = logging.getLogger(__name__)

# What each `training_info.json` "finished" value means, for the log.
STOPPED_BY = {
    "max_steps": "--max_steps reached",
    "time budget": "--max_train_minutes used up, the learning rate decayed to its end",
    "plateau": "validation stopped improving: the learning rate was decayed to its end",
    "early stopping": "--early_stopping_patience evaluations without a better loss",
}


def train(
    model_args: ModelArguments,
    corpus_args: CorpusArguments,
    data_args: DataTrainingArguments,
    training_args: CLMTrainingArguments,
    given: Set[str] = frozenset(),
) -> dict[str, float]:
    """Run a whole pre-training job (see the module docstring) and return the final metrics.

    `given` names the fields the user set (flags, recipe fields): the automatic recipe chooses the others
    (`auto_recipe`). Re-run on the folder of a finished run, it changes nothing and returns that run's
    metrics, unless asked to train further (see [`asks_for_more`]). A second run on a folder in use is refused.
    """
    for args in (model_args, corpus_args, data_args, training_args):  # arguments made in code, not parsed
        check_ranges(args)
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
        return _train(model_args, corpus_args, data_args, training_args, given)


def _train(
    model_args: ModelArguments,
    corpus_args: CorpusArguments,
    data_args: DataTrainingArguments,
    training_args: CLMTrainingArguments,
    given: Set[str],
) -> dict[str, float]:
    resume_from = resolve_resume(training_args)  # first: refuses a folder that holds something else
    eval_tasks = EvalTasksCallback(training_args.eval_tasks, training_args.seed)  # reads the files: fails early
    if training_args.do_eval:
        check_metric_for_best_model(training_args.metric_for_best_model, eval_tasks.metric_names)
    setup_cpu_training(training_args)
    on_cpu = training_args.device.type == "cpu"
    if training_args.optim == MUON and on_cpu and not native_bf16("cpu"):
        logger.warning(
            "--optim muon: torch.optim.Muon orthogonalises its updates in bf16, which this CPU emulates (no "
            "AVX512-BF16 or AMX): steps are about 10x slower than AdamW's here (bench/RESULTS.md)."
        )
    model_args, data_args, training_args, recipe = apply_auto_recipe(
        model_args, corpus_args, data_args, training_args, given
    )
    if training_args.auto_bf16:  # after the recipe, which may turn it on
        precision = "bf16 autocast" if training_args.bf16 else "fp16 autocast" if training_args.fp16 else "fp32"
        logger.info("--auto_bf16: training in %s on %s.", precision, training_args.device.type)
    set_seed(training_args.seed)  # before the model exists: Trainer seeds only after
    tokenizer = run_tokenizer(model_args)
    model, source = build_model(model_args, tokenizer)
    if resume_from is not None:  # before the data: a checkpoint of another model or data path cannot go on
        check_resumable_with(resume_from, model.config, data_args.streaming)
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
                info.global_step or 0,
                info.finished,
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
    callbacks: list[TrainerCallback] = [PlotCallback(), divergence, interrupt]
    if training_args.max_train_minutes or training_args.plateau_patience:
        minutes, patience = training_args.max_train_minutes, training_args.plateau_patience
        callbacks.append(ScheduleCallback(minutes, patience, training_args.plateau_decay_fraction))
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
        except KeyboardInterrupt as err:  # a second Ctrl-C or SIGTERM, in the middle of a step
            signum = interrupting_signal(err)
            raise Interrupted(f"stopped by {SIGNAL_NAMES[signum]}; {resume_hint(output_dir)}", signum) from None
        if divergence.diverged is not None:
            raise CommandError(divergence_message(divergence.diverged, training_args, output_dir))
        if interrupt.stopped_at is not None:
            name, hint = SIGNAL_NAMES[interrupt.signum], resume_hint(output_dir)
            raise Interrupted(f"stopped by {name} at step {interrupt.stopped_at}; {hint}", interrupt.signum)
        metrics = {**result.metrics, **throughput.summary()}  # train_tokens_per_second (all processes), train_mfu
        if training_args.do_eval:
            metrics.update(final_eval_metrics(trainer))
        if not all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters()):
            raise CommandError(divergence_message("the weights are not finite", training_args, output_dir))

        finished = finish_reason(trainer)
        info = training_info(
            model_args, corpus_args, data_args, trainer, source, block_size, datasets, finished, recorded(recipe)
        )
        best = trainer.state.best_global_step if training_args.load_best_model_at_end else None
        kept = f"step {best}'s, the best validation loss" if best else "the last"
        logger.info(
            "Training ended at step %d (%s); the model kept is %s.",
            trainer.state.global_step,
            STOPPED_BY[finished],
            kept,
        )
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
    tokenizer = run_tokenizer(model_args)
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
    block_size = data_args.block_size or (prepared.block_size if prepared else default_block_size(n_positions))
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


def setup_logging(args: TrainingArguments) -> None:
    """Our INFO lines on stderr (main process); transformers and datasets at `--log_level` (warnings by default)."""
    import datasets
    import transformers

    package_logger = logging.getLogger(__name__.split(".")[0])
    if not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        package_logger.addHandler(handler)
        package_logger.propagate = False
    package_logger.setLevel(logging.INFO if args.should_log else logging.WARNING)
    level = args.get_process_log_level()
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(level)


__all__ = ["evaluate_only", "setup_logging", "train"]
