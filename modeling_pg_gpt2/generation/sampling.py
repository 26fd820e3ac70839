"""Text generation from a trained model, streamed to the terminal: the logic behind `generate.py`.

Sampling is transformers' `generate()` (with a `TextStreamer` for a single sample), so every decoding
option of `GenerationConfig` behaves as documented there.

Example:
    >>> from modeling_pg_gpt2.generation.sampling import GenerationArguments, generate_text
    >>> texts = generate_text("outputs/shakespeare", ["ROMEO:"], GenerationArguments(seed=0))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch
from transformers import TextStreamer, set_seed

from ..common.errors import UserError
from ..data.tokenizer import pad_token_id, start_token_id
from .loader import BACKENDS, LoadArguments, context_length, resolve_device

logger = logging.getLogger(__name__)


@dataclass
class GenerationArguments(LoadArguments):
    """How to sample (and where the model comes from and runs). The model and the prompts are the positional
    arguments of generate.py."""

    prompts_file: str | None = field(
        default=None,
        metadata={
            "help": "More prompts: a text file with one prompt per line, or a JSON file holding a list of "
            "strings (for prompts that span several lines)."
        },
    )
    max_new_tokens: int = field(default=100, metadata={"help": "Tokens to generate after each prompt."})
    do_sample: bool = field(default=True, metadata={"help": "Sample (true) or decode greedily (false)."})
    temperature: float = field(default=0.8, metadata={"help": "Softmax temperature; lower is more conservative."})
    top_k: int = field(default=50, metadata={"help": "Sample among the k most likely tokens (0: no limit)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling: smallest set of tokens with this mass."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Penalty > 1 discourages repeating tokens."})
    num_return_sequences: int = field(default=1, metadata={"help": "Samples per prompt (streamed only when 1)."})
    seed: int | None = field(default=None, metadata={"help": "Random seed, for reproducible samples."})
    backend: str = field(
        default="torch",
        metadata={
            "help": "torch, or onnxruntime: decode with an ONNX export, a folder written by "
            "`python convert.py MODEL DST --to onnx` (no torch model is loaded).",
            "choices": list(BACKENDS),
        },
    )


def read_prompts(prompts: Sequence[str], prompts_file: str | None) -> list[str]:
    """The command-line prompts followed by those of `prompts_file`; no prompt at all means one empty prompt."""
    collected = list(prompts)
    if prompts_file is not None:
        path = Path(prompts_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read --prompts_file {path}: {err}") from None
        if path.suffix.lower() == ".json":
            try:
                loaded = json.loads(text)
            except ValueError as err:
                raise UserError(f"--prompts_file {path} is not valid JSON: {err}") from None
            if not isinstance(loaded, list) or not all(isinstance(p, str) for p in loaded):
                raise UserError(f"--prompts_file {path} must hold a JSON list of strings.")
            collected += loaded
        else:
            collected += [line for line in text.splitlines() if line.strip()]
    return collected or [""]


def check_generation_arguments(args: GenerationArguments) -> None:
    """Refuse, before the model is loaded, sampling options `generate()` would reject deep inside or misuse."""
    if args.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}.")
    if args.num_return_sequences < 1:
        raise UserError(f"--num_return_sequences must be at least 1, got {args.num_return_sequences}.")
    # `not x > 0` is also true for NaN.
    if not args.temperature > 0 or math.isinf(args.temperature):
        raise UserError(
            f"--temperature must be a positive number, got {args.temperature} (greedy decoding: --do_sample false)."
        )
    if args.top_k < 0:
        raise UserError(f"--top_k must be 0 (no limit) or more, got {args.top_k}.")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top_p must be in (0, 1] (1: no nucleus sampling), got {args.top_p}.")
    if not args.repetition_penalty > 0 or math.isinf(args.repetition_penalty):
        raise UserError(f"--repetition_penalty must be a positive number (1: none), got {args.repetition_penalty}.")
    resolve_device(args.device)


def generate_text(
    model_name_or_path: str | os.PathLike,
    prompts: Sequence[str],
    args: GenerationArguments,
    stream: TextIO | None = None,
) -> list[list[str]]:
    """Continue each prompt and return the texts (prompt included), one list of samples per prompt.

    With one sample per prompt, the text is streamed to `stream` (default: stdout) token by token as it
    is generated; otherwise each sample is printed when done. A prompt that does not fit the model's
    context is a `UserError`; `max_new_tokens` is lowered to what the context leaves, with a warning.
    """
    stream = sys.stdout if stream is None else stream
    check_generation_arguments(args)
    tokenizer, model = args.load(model_name_or_path, backend=args.backend)
    context = context_length(model.config)
    encoded = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else [start_token_id(tokenizer)]
        if context is not None and len(ids) >= context:
            raise UserError(
                f"the prompt {_preview(prompt)} is {len(ids)} tokens long, but the model's context is {context} "
                "tokens (prompt and continuation together); shorten the prompt."
            )
        encoded.append(ids)

    if args.seed is not None:
        set_seed(args.seed)
    results = []
    for ids in encoded:
        max_new_tokens = args.max_new_tokens
        if context is not None and len(ids) + max_new_tokens > context:
            max_new_tokens = context - len(ids)
            logger.warning(
                "Generating %d tokens instead of %d: the prompt uses %d of the %d positions of the context.",
                max_new_tokens,
                args.max_new_tokens,
                len(ids),
                context,
            )
        streamer = None
        if args.num_return_sequences == 1:
            streamer = _Streamer(tokenizer, stream, skip_special_tokens=True)
        sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
        input_ids = torch.tensor([ids], device=model.device)
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=args.do_sample,
                **(sampling if args.do_sample else {}),
                repetition_penalty=args.repetition_penalty,
                num_return_sequences=args.num_return_sequences,
                pad_token_id=pad_token_id(tokenizer),
                streamer=streamer,
            )
        texts = tokenizer.batch_decode(output, skip_special_tokens=True)
        if streamer is None:
            for number, text in enumerate(texts, 1):
                print(f"--- sample {number}/{len(texts)} ---", file=stream)
                print(text, file=stream, flush=True)
        results.append(texts)
        if len(prompts) > 1:
            print("=" * 40, file=stream, flush=True)
    return results


def _preview(prompt: str, width: int = 40) -> str:
    return repr(prompt if len(prompt) <= width else prompt[:width] + "...")


class _Streamer(TextStreamer):
    """`TextStreamer` that writes to any text stream, not only stdout."""

    def __init__(self, tokenizer, stream: TextIO, **decode_kwargs) -> None:
        super().__init__(tokenizer, skip_prompt=False, **decode_kwargs)
        self.stream = stream

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.stream.write(text + ("\n" if stream_end else ""))
        self.stream.flush()


__all__ = [
    "GenerationArguments",
    "check_generation_arguments",
    "generate_text",
    "read_prompts",
]
