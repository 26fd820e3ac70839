"""What a run's evaluations report: loss, perplexity, next-token accuracy and bits per byte.

The Trainer reduces each batch's logits with [`preprocess_logits_for_metrics`] (never keeping (B, T, V)),
and [`ComputeLMMetrics`] feeds the repository's `evaluate` module (`lm_metrics.py` beside it, its `LmMetrics`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    PreTrainedTokenizerBase,
    Trainer,
)

from ..data.collators import IGNORE_INDEX

LM_METRICS_PATH = Path(__file__).with_name("lm_metrics.py")


def token_byte_lengths(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """How many UTF-8 bytes of text each token id stands for, the denominator of bits per byte.

    Byte-level BPE tokens (GPT-2 and every tokenizer train_tokenizer.py makes) are exact byte
    strings: each character of the token's string is one byte. The end-of-text token separates two
    documents and counts as one byte, the separator a byte-level model would read there; other
    special tokens count zero. For other tokenizer kinds the decoded string of each token is used,
    which is close but not exact around word boundaries.
    """
    byte_chars = set(ByteLevel.alphabet())
    lengths = np.zeros(len(tokenizer), dtype=np.int64)
    special = set(tokenizer.all_special_ids)
    for token, index in tokenizer.get_vocab().items():
        if index >= len(lengths):
            continue
        if index in special:
            lengths[index] = 1 if index == tokenizer.eos_token_id else 0
        elif all(char in byte_chars for char in token):
            lengths[index] = len(token)
        else:
            lengths[index] = len(tokenizer.convert_tokens_to_string([token]).encode("utf-8"))
    return lengths


def preprocess_logits_for_metrics(logits: torch.Tensor | tuple, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Reduce (B, T, V) logits to what the metrics need: the argmax and the target's NLL at each position.

    Called by the Trainer on every evaluation batch, so the full logits are never accumulated.
    Position t predicts token t+1: both outputs have shape (B, T-1).
    """
    if isinstance(logits, tuple):
        logits = logits[0]
    logits = logits[:, :-1]
    targets = labels[:, 1:]
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(targets)
    return logits.argmax(dim=-1), nll


class ComputeLMMetrics:
    """`compute_metrics` for the Trainer: the repository's `evaluate` module over the reduced logits.

    It reports `loss` (mean NLL per predicted token), `perplexity` = exp(loss), next-token `accuracy`
    and `bits_per_byte`. Its exact token-mean `loss` becomes `eval_loss`, so `eval_perplexity` is
    exactly exp(`eval_loss`).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.token_bytes = token_byte_lengths(tokenizer)
        self._metric = None

    @property
    def metric(self):
        if self._metric is None:
            import evaluate  # ~5 s to import: only when the first evaluation needs it

            self._metric = evaluate.load(str(LM_METRICS_PATH), keep_in_memory=True)
        return self._metric

    def __call__(self, eval_pred: transformers.EvalPrediction) -> dict[str, float]:
        predictions, nll = eval_pred.predictions
        targets = eval_pred.label_ids[:, 1:]
        keep = targets != IGNORE_INDEX
        # Bytes of exactly the tokens whose loss is counted: the first token of each block (never
        # predicted) and the tail dropped by packing are in neither the numerator nor the denominator.
        num_bytes = int(self.token_bytes[targets[keep]].sum())
        return self.metric.compute(
            predictions=predictions[keep], references=targets[keep], nll=nll[keep], num_bytes=num_bytes
        )


def final_eval_metrics(trainer: Trainer) -> dict[str, float]:
    """Eval metrics of the model that ends in the output folder, taken from the log of its evaluation."""
    state = trainer.state
    step = state.best_global_step if trainer.args.load_best_model_at_end and state.best_global_step else None
    evaluations = [entry for entry in state.log_history if "eval_loss" in entry]
    if step is not None:
        evaluations = [entry for entry in evaluations if entry.get("step") == step]
    if not evaluations:
        return trainer.evaluate()
    return {key: value for key, value in evaluations[-1].items() if key.startswith("eval_")}


__all__ = [
    "ComputeLMMetrics",
    "LM_METRICS_PATH",
    "final_eval_metrics",
    "preprocess_logits_for_metrics",
    "token_byte_lengths",
]
