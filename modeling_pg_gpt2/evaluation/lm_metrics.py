"""Language-modelling metrics: loss, perplexity, next-token accuracy and bits per byte.

An `evaluate` module that ships with pg-gpt2 and loads offline from its path:

    >>> import evaluate
    >>> metric = evaluate.load("modeling_pg_gpt2/evaluation/lm_metrics.py", keep_in_memory=True)
    >>> metric.compute(predictions=[5, 7], references=[5, 9], nll=[0.5, 1.5], num_bytes=6)  # doctest: +SKIP
    {'loss': 1.0, 'perplexity': 2.718..., 'accuracy': 0.5, 'bits_per_byte': 0.4808..., 'num_tokens': 2}

It works on one row per predicted token, so a caller reduces the logits first (argmax and the
token's negative log-likelihood) and never keeps the `(tokens, vocab)` logits around.
"""

from __future__ import annotations

import math

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Metrics of a causal language model over the tokens it predicted, each given as its target id
(`references`), the model's most likely id (`predictions`) and the negative log-likelihood in nats
the model gave the target (`nll`). Targets equal to -100 are ignored, as in transformers' losses.

- loss: mean NLL per token, in nats.
- perplexity: exp(loss).
- accuracy: share of tokens whose target is the model's most likely token.
- bits_per_byte: sum(NLL) / (ln 2 * num_bytes), where `num_bytes` is the number of UTF-8 bytes of
  text those tokens encode. It does not depend on the tokenizer, so it compares models with
  different vocabularies, and character- or byte-level models, on the same text.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list[int]`): the model's argmax token id at each predicted position.
    references (`list[int]`): the target token id at each position; -100 marks positions to ignore.
    nll (`list[float]`): the negative log-likelihood (nats) of the target at each position.
    num_bytes (`int`, optional): UTF-8 bytes of text encoded by the non-ignored targets. Without it,
        `bits_per_byte` is not returned.
Returns:
    dict with `loss`, `perplexity`, `accuracy`, `num_tokens` and, given `num_bytes`, `bits_per_byte`.
"""

_CITATION = ""

IGNORE_INDEX = -100


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LmMetrics(evaluate.Metric):
    """Loss, perplexity, next-token accuracy and bits per byte of a causal language model."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "nll": datasets.Value("float32"),
                }
            ),
        )

    def _compute(
        self, predictions: list[int], references: list[int], nll: list[float], num_bytes: int | None = None
    ) -> dict[str, float]:
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        nll = np.asarray(nll, dtype=np.float64)
        keep = references != IGNORE_INDEX
        num_tokens = int(keep.sum())
        if num_tokens == 0:
            raise ValueError("lm_metrics: no token to score (every reference is -100).")
        total_nll = float(nll[keep].sum())
        loss = total_nll / num_tokens
        results = {
            "loss": loss,
            "perplexity": math.exp(loss) if loss < 700 else math.inf,
            "accuracy": float((predictions[keep] == references[keep]).mean()),
            "num_tokens": num_tokens,
        }
        if num_bytes is not None:
            if num_bytes <= 0:
                raise ValueError(f"lm_metrics: num_bytes must be positive, got {num_bytes}.")
            results["bits_per_byte"] = total_nll / (math.log(2) * num_bytes)
        return results
