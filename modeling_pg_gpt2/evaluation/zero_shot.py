"""Zero-shot evaluation of a causal language model, as the GPT-2 paper measures it: the logic behind `evaluate_lm.py`.

Three tasks, on any model `AutoModelForCausalLM` loads (a pg_gpt2 folder or Hub id, or a transformers GPT-2
checkpoint such as `python convert.py DIR OUT --to gpt2` writes: same numbers either way):

* `perplexity`: a text scored as one stream with a sliding window (WikiText, PTB, enwik8, text8 in the
  paper). Every token is scored exactly once, with up to a window of tokens before it; the window moves
  by `stride` tokens (HF's "Perplexity of fixed-length models" guide). The text starts after an
  `<|endoftext|>`, so its first token is scored too. Reports token perplexity, word perplexity (total
  loss over the whitespace-separated words, the paper's unit for WikiText and PTB) and bits per byte
  (bits per character on ASCII files such as enwik8 and text8).
* `lambada`: passages whose last word is to be predicted (LAMBADA). Accuracy of greedy decoding of the
  whole word (every token the argmax) and the perplexity of that word, `exp(-mean log p(word))`,
  the two numbers of the paper's Table 3 and of lm-evaluation-harness' `lambada_openai`.
* `multiple_choice`: a context and candidate continuations (CBT, HellaSwag, ARC, PIQA): the candidate
  with the highest log-likelihood is the answer. `accuracy` uses the summed log-likelihood,
  `accuracy_norm` divides it by the candidate's length in characters (lm-evaluation-harness' `acc_norm`).

The three reduce to one computation, `scoring.score_requests`: for a token sequence, the summed
log-probability of its last n tokens given those before, and whether each of them is the argmax.

    >>> from modeling_pg_gpt2.evaluation.zero_shot import EvaluationArguments, evaluate_model
    >>> args = EvaluationArguments(task="perplexity", data_file="test.txt")
    >>> results = evaluate_model("outputs/shakespeare", args)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import torch

from ..common.errors import UserError
from ..data.tokenizer import pad_token_id, start_token_id
from ..generation.loader import LoadArguments
from .scoring import encode_pair, pair_request, rolling_requests, score_requests, scoring_window

TASKS = ("perplexity", "lambada", "multiple_choice")


@dataclass
class EvaluationArguments(LoadArguments):
    """What to evaluate on and how (and where the model comes from and runs). The model is the positional
    argument of evaluate_lm.py."""

    task: Literal["perplexity", "lambada", "multiple_choice"] = field(
        metadata={"help": "perplexity of a text, lambada (last word of passages) or multiple_choice."}
    )
    data_file: str | None = field(
        default=None,
        metadata={
            "help": "Local data: for perplexity a text file (a .jsonl: the --text_field of each line, joined by "
            "blank lines); for lambada and multiple_choice a JSONL file, one example per line."
        },
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hub dataset instead of --data_file (downloaded; needs the network)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    dataset_split: str = field(default="test", metadata={"help": "The Hub dataset's split."})
    text_field: str = field(default="text", metadata={"help": "Field of the text (perplexity, lambada)."})
    context_field: str = field(default="context", metadata={"help": "multiple_choice: field of the context."})
    choices_field: str = field(
        default="choices", metadata={"help": "multiple_choice: field of the list of candidate continuations."}
    )
    label_field: str = field(
        default="label",
        metadata={"help": "multiple_choice: field of the answer (the index of the right candidate, or its text)."},
    )
    choice_delimiter: str = field(
        default=" ", metadata={"help": "multiple_choice: put between the context and each candidate."}
    )
    stride: int | None = field(
        default=None,
        metadata={
            "help": "perplexity: tokens the window moves by, i.e. new tokens scored per window (default: half "
            "the window). Smaller is slower and gives each token more context; the window's length gives "
            "lm-evaluation-harness' rolling windows."
        },
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Tokens the model sees at once (default and most: the model's context)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Sequences per forward pass."})
    max_examples: int | None = field(
        default=None, metadata={"help": "lambada, multiple_choice: evaluate only the first N examples."}
    )
    output_file: str | None = field(
        default=None,
        metadata={"help": "JSON file for the results (default: eval_results/<model>/<task>-<data>.json)."},
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32", metadata={"help": "Precision of the weights (bfloat16 or float16 on a GPU: faster)."}
    )


# --------------------------------------------------------------------------------------------------
# Scoring


# --------------------------------------------------------------------------------------------------
# Data


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The objects of a JSONL file, one per non-blank line; a line that is not a JSON object is a `UserError`."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
        except ValueError as err:
            raise UserError(f"line {number} of {path} is not JSON ({err}); the file must be JSONL.") from None
        if not isinstance(example, dict):
            raise UserError(f"line {number} of {path} is not a JSON object; the file must hold one per line.")
        examples.append(example)
    if not examples:
        raise UserError(f"{path} holds no example.")
    return examples


def load_examples(args: EvaluationArguments) -> tuple[list[dict[str, Any]], str]:
    """The examples of `--data_file` (JSONL) or of a Hub dataset, and a name for them."""
    if args.dataset_name:
        from ..data.corpus import load_hub_dataset

        dataset = load_hub_dataset(
            args.dataset_name,
            args.dataset_config_name,
            "offline, pass a local --data_file",
            split=args.dataset_split,
            token=args.token,
        )
        name = args.dataset_name.split("/")[-1] + (f"-{args.dataset_config_name}" if args.dataset_config_name else "")
        return [dict(example) for example in dataset], name
    if not args.data_file:
        raise UserError("pass --data_file FILE (or --dataset_name of a Hub dataset) to evaluate on.")
    if not Path(args.data_file).is_file():
        raise UserError(f"--data_file {args.data_file} does not exist.")
    return read_jsonl(args.data_file), Path(args.data_file).stem


def _field(example: dict[str, Any], name: str, option: str, where: str) -> Any:
    if name not in example:
        fields = ", ".join(sorted(example)) or "none"
        raise UserError(f"{where} has no field {name!r} (its fields: {fields}); name the right one with {option}.")
    return example[name]


def load_text(args: EvaluationArguments) -> tuple[str, str]:
    """The text to compute the perplexity of, and a name for it."""
    if args.data_file and not args.dataset_name and Path(args.data_file).suffix.lower() != ".jsonl":
        path = Path(args.data_file)
        try:
            return path.read_text(encoding="utf-8"), path.stem
        except FileNotFoundError:
            raise UserError(f"--data_file {path} does not exist.") from None
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read --data_file {path} as UTF-8 text: {err}") from None
    examples, name = load_examples(args)
    # Records are joined by a blank line, as HF's perplexity guide joins WikiText's lines.
    texts = [_field(e, args.text_field, "--text_field", f"example {i}") for i, e in enumerate(examples, 1)]
    return "\n\n".join(texts), name


def multiple_choice_examples(
    examples: Sequence[dict[str, Any]], args: EvaluationArguments
) -> list[tuple[str, list[str], int]]:
    """(context, candidates, index of the right one) for each example; malformed ones are a `UserError`."""
    parsed = []
    for number, example in enumerate(examples, 1):
        where = f"example {number}"
        context = _field(example, args.context_field, "--context_field", where)
        choices = _field(example, args.choices_field, "--choices_field", where)
        label = _field(example, args.label_field, "--label_field", where)
        if not isinstance(context, str) or not isinstance(choices, list) or len(choices) < 2:
            raise UserError(f"{where}: the context must be a string and the choices a list of two or more strings.")
        choices = [str(choice) for choice in choices]
        if isinstance(label, str) and label in choices:
            answer = choices.index(label)
        elif isinstance(label, int) or (isinstance(label, str) and label.strip().isdigit()):
            answer = int(label)
        else:
            raise UserError(f"{where}: the label {label!r} is neither the index of a choice nor one of the choices.")
        if not 0 <= answer < len(choices):
            raise UserError(f"{where}: the label {answer} is out of range for {len(choices)} choices.")
        parsed.append((context, choices, answer))
    return parsed


# --------------------------------------------------------------------------------------------------
# Tasks


def evaluate_perplexity(
    model, tokenizer, text: str, max_length: int, stride: int, batch_size: int
) -> tuple[dict[str, float], int]:
    """Token and word perplexity and bits per byte of `text`, scored as one stream with a sliding window;
    and the number of tokens the model read."""
    if not text.strip():
        raise UserError("the text to evaluate is empty.")
    token_ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    requests = rolling_requests(token_ids, start_token_id(tokenizer), max_length, stride)
    scores = score_requests(model, requests, batch_size, pad_token_id(tokenizer), desc="perplexity")
    loss = -math.fsum(scores.logprobs)  # nats, over all tokens
    words, n_bytes = len(text.split()), len(text.encode("utf-8"))
    metrics = {
        "token_perplexity": math.exp(loss / len(token_ids)),
        "word_perplexity": math.exp(loss / words),
        "bits_per_byte": loss / math.log(2) / n_bytes,
        "loss": loss / len(token_ids),
        "tokens": len(token_ids),
        "words": words,
        "bytes": n_bytes,
    }
    return metrics, scores.input_tokens


def evaluate_lambada(
    model, tokenizer, examples: Sequence[dict[str, Any]], text_field: str, max_length: int, batch_size: int
) -> tuple[dict[str, float], int]:
    """Accuracy of greedy prediction of each passage's last word (all its tokens) and that word's perplexity;
    and the number of tokens the model read."""
    requests = []
    for number, example in enumerate(examples, 1):
        passage = _field(example, text_field, "--text_field", f"example {number}")
        if not isinstance(passage, str) or " " not in passage.strip():
            raise UserError(f"example {number}: a passage must be a text of two or more words.")
        context, word = passage.strip().rsplit(" ", 1)  # lambada_openai's split of the target word
        requests.append(
            pair_request(*encode_pair(tokenizer, context, " " + word, start_token_id(tokenizer)), max_length)
        )
    scores = score_requests(model, requests, batch_size, pad_token_id(tokenizer), desc="lambada")
    metrics = {
        "accuracy": sum(scores.greedy) / len(requests),
        "perplexity": math.exp(-math.fsum(scores.logprobs) / len(requests)),
        "examples": len(requests),
    }
    return metrics, scores.input_tokens


def score_multiple_choice(
    model,
    tokenizer,
    examples: Sequence[tuple[str, list[str], int]],
    max_length: int,
    batch_size: int = 8,
    delimiter: str = " ",
    desc: str | None = "multiple choice",
) -> tuple[dict[str, float], int]:
    """Accuracy of picking the candidate of highest log-likelihood: raw (`accuracy`) and per character
    (`accuracy_norm`), over `(context, candidates, answer index)` examples; and the tokens the model read."""
    start_id = start_token_id(tokenizer)
    requests = [
        pair_request(*encode_pair(tokenizer, context, delimiter + choice, start_id), max_length)
        for context, choices, _ in examples
        for choice in choices
    ]
    scored = score_requests(model, requests, batch_size, pad_token_id(tokenizer), desc=desc)
    correct = correct_norm = 0
    offset = 0
    for _, choices, answer in examples:
        raw = scored.logprobs[offset : offset + len(choices)]
        offset += len(choices)
        normalised = [score / max(len(choice), 1) for score, choice in zip(raw, choices, strict=True)]
        correct += max(range(len(raw)), key=raw.__getitem__) == answer  # first of ties, as numpy's argmax
        correct_norm += max(range(len(normalised)), key=normalised.__getitem__) == answer
    metrics = {
        "accuracy": correct / len(examples),
        "accuracy_norm": correct_norm / len(examples),
        "examples": len(examples),
    }
    return metrics, scored.input_tokens


# --------------------------------------------------------------------------------------------------
# The command


def format_metric(name: str, value: float) -> str:
    """`token perplexity 41.37`: the metric's name in words, then its value."""
    if isinstance(value, int):
        shown = str(value)
    elif "perplexity" in name:
        shown = f"{value:.2f}"
    else:
        shown = f"{value:.4f}"
    return f"{name.replace('_', ' ')} {shown}"


def _default_output_file(model_name_or_path: str, task: str, data_name: str) -> Path:
    model_name = Path(os.fspath(model_name_or_path).rstrip("/")).name or "model"
    return Path("eval_results") / model_name / f"{task}-{data_name}.json"


def evaluate_model(
    model_name_or_path: str | os.PathLike, args: EvaluationArguments, stream: TextIO | None = None
) -> dict[str, Any]:
    """Evaluate a model on one task, print each figure to `stream` (default: stdout), write the JSON file.

    Returns what the JSON file holds: the model, task, data, settings, `metrics` and the speed.
    """
    stream = sys.stdout if stream is None else stream
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {args.batch_size}.")
    if args.data_file and args.dataset_name:
        raise UserError("pass either --data_file or --dataset_name, not both.")
    # Read the data before loading the model: a wrong file name fails at once.
    if args.task == "perplexity":
        text, data_name = load_text(args)
    else:
        examples, data_name = load_examples(args)
        if args.max_examples is not None:
            examples = examples[: args.max_examples]
        if args.task == "multiple_choice":
            examples = multiple_choice_examples(examples, args)

    tokenizer, model = args.load(model_name_or_path, dtype=getattr(torch, args.dtype))
    max_length = scoring_window(model.config, args.max_length)
    if max_length < 2:
        raise UserError(f"--max_length must be at least 2, got {max_length}.")

    started = time.perf_counter()
    settings: dict[str, Any] = {"max_length": max_length, "batch_size": args.batch_size, "dtype": args.dtype}
    if args.task == "perplexity":
        stride = args.stride or max(max_length // 2, 1)
        settings["stride"] = stride
        metrics, input_tokens = evaluate_perplexity(model, tokenizer, text, max_length, stride, args.batch_size)
    elif args.task == "lambada":
        metrics, input_tokens = evaluate_lambada(
            model, tokenizer, examples, args.text_field, max_length, args.batch_size
        )
    else:
        settings["choice_delimiter"] = args.choice_delimiter
        metrics, input_tokens = score_multiple_choice(
            model, tokenizer, examples, max_length, args.batch_size, args.choice_delimiter
        )
    seconds = time.perf_counter() - started

    for name, value in metrics.items():
        print(format_metric(name, value), file=stream)
    results = {
        "model": os.fspath(model_name_or_path),
        "task": args.task,
        "data": args.data_file or f"{args.dataset_name}:{args.dataset_config_name or ''}:{args.dataset_split}",
        "settings": settings,
        "metrics": metrics,
        "seconds": seconds,
        "tokens_per_second": input_tokens / seconds,  # tokens read by the model (tokenization included)
        "device": str(next(model.parameters()).device),
    }
    output_file = (
        Path(args.output_file) if args.output_file else _default_output_file(model_name_or_path, args.task, data_name)
    )
    output_file.parent.mkdir(parents=True, exist_ok=True)
    output_file.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {output_file}", file=stream)
    return results


__all__ = [
    "TASKS",
    "EvaluationArguments",
    "evaluate_lambada",
    "evaluate_model",
    "evaluate_perplexity",
    "format_metric",
    "read_jsonl",
    "score_multiple_choice",
]
