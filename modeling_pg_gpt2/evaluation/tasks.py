"""What `run_clm.py` measures at each evaluation besides the loss: zero-shot multiple choice, and a sample.

`--eval_tasks FILE [FILE ...]` names multiple-choice JSONL files in `evaluate_lm.py`'s format
(docs/evaluation.md). At every evaluation each is scored as `evaluate_lm.py --task multiple_choice` scores
it, and `eval_<name>_accuracy` and `eval_<name>_accuracy_norm` (`<name>`: the file's stem) join the
evaluation's log beside `eval_loss`: the printed log, TensorBoard, `trainer_state.json`, `metrics.json`,
the plots and the model card, as llm.c logs HellaSwag while it trains. They can also pick the best
checkpoint: `--metric_for_best_model eval_<name>_accuracy_norm --greater_is_better true`.

Every evaluation also samples a text from `<|endoftext|>` with a fixed seed (llm.c, nanochat), written to
the log and to TensorBoard's text tab. The training's random state is left as it was, so a run with
samples trains exactly as one without.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..common.errors import UserError
from ..data.tokenizer import pad_token_id, start_token_id
from ..reports.plots import NORM_SUFFIX
from .scoring import scoring_window
from .zero_shot import EvaluationArguments, load_examples, multiple_choice_examples, score_multiple_choice

logger = logging.getLogger(__name__)

SAMPLE_TOKENS = 64
# The sample travels in the evaluation's log dict, which loggers (TensorBoard: a text) read; it is taken out
# again before the metrics are kept (metrics.json, best-model selection), which hold numbers only.
SAMPLE_KEY = "eval_sample"


def task_name(path: str | Path) -> str:
    """The name a task file's metrics go by: its stem in lower case, other characters than [a-z0-9_] as `_`."""
    return re.sub(r"[^a-z0-9_]+", "_", Path(path).stem.lower()).strip("_") or "task"


class EvalTasksCallback(TrainerCallback):
    """Scores the multiple-choice files and samples a text at every evaluation, into the evaluation's log.

    It must come before the logging callbacks (TensorBoard, the printer) in the Trainer's list: it adds its
    figures to the log dict that they then receive.
    """

    def __init__(self, files: Sequence[str] | None, seed: int, sample_tokens: int = SAMPLE_TOKENS) -> None:
        # Read and check the files now: a bad file is an error before training starts, not at the first evaluation.
        self.tasks: dict[str, list[tuple[str, list[str], int]]] = {}
        for file in files or ():
            if not Path(file).is_file():
                raise UserError(f"--eval_tasks {file} does not exist (a multiple-choice JSONL file is expected).")
            name = task_name(file)
            if name in self.tasks:
                raise UserError(f"--eval_tasks: two files are named {name!r}; rename one (metrics go by file name).")
            args = EvaluationArguments(task="multiple_choice", data_file=file)
            examples, _ = load_examples(args)
            self.tasks[name] = multiple_choice_examples(examples, args)
        self.seed = seed
        self.sample_tokens = sample_tokens

    def on_log(self, args, state, control, logs=None, model=None, processing_class=None, **kwargs):
        if not logs or "eval_loss" not in logs or model is None or processing_class is None:
            return
        was_training = model.training
        model.eval()
        figures = {}
        try:
            window = scoring_window(model.config)
            for name, examples in self.tasks.items():  # on every process: best-model selection reads them
                metrics, _ = score_multiple_choice(
                    model, processing_class, examples, window, args.per_device_eval_batch_size, desc=None
                )
                figures[f"eval_{name}_accuracy"] = metrics["accuracy"]
                figures[f"eval_{name}{NORM_SUFFIX}"] = metrics["accuracy_norm"]
            logs.update(figures)
            if state.is_world_process_zero:
                text = self.sample(model, processing_class)
                logger.info("Sample at step %d:\n%s", state.global_step, text)
                logs[SAMPLE_KEY] = text
        finally:
            model.train(was_training)
        if figures:
            logger.info(
                "Step %d: %s.",
                state.global_step,
                ", ".join(f"{key[len('eval_') :]} {value:.4f}" for key, value in figures.items()),
            )
        # The Trainer put a copy of the log into its history before the callbacks ran: complete that copy.
        entry = state.log_history[-1] if state.log_history else {}
        if entry.get("step") == state.global_step and "eval_loss" in entry:
            entry.update(figures)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics is not None:  # the same dict as the log's: keep the metrics numeric
            metrics.pop(SAMPLE_KEY, None)

    def sample(self, model: torch.nn.Module, tokenizer) -> str:
        """A text sampled from <|endoftext|> with `self.seed`, leaving the global random state untouched."""
        start = start_token_id(tokenizer)
        device = next(model.parameters()).device
        max_new_tokens = min(self.sample_tokens, scoring_window(model.config) - 1)
        input_ids = torch.tensor([[start]], device=device)
        devices = [] if device.type == "cpu" else [device]
        with torch.random.fork_rng(devices=devices, device_type=device.type), torch.inference_mode():
            torch.manual_seed(self.seed)
            output = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=True,
                pad_token_id=pad_token_id(tokenizer),
            )
        return tokenizer.decode(output[0, 1:], skip_special_tokens=True)


__all__ = ["SAMPLE_KEY", "EvalTasksCallback", "task_name"]
