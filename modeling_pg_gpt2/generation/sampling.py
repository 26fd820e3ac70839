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
from transformers import AutoModelForCausalLM, PreTrainedModel, TextStreamer, set_seed
from transformers.utils import logging as hf_logging

from ..common.errors import UserError, few, first_line
from ..common.sources import check_pretrained_source
from ..data.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class GenerationArguments:
    """How to sample. The model and the prompts are the positional arguments of generate.py."""

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
    device: str | None = field(default=None, metadata={"help": "cuda, mps or cpu (default: the best available)."})
    backend: str = field(
        default="torch",
        metadata={
            "help": "torch, or onnxruntime: decode with an ONNX export, a folder written by "
            "`python convert.py MODEL DST --to onnx` (no torch model is loaded).",
            "choices": ["torch", "onnxruntime"],
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run the model code of a Hub repository (pg_gpt2 models need no flag: the code is here)."},
    )
    revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub model."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models."})


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
    _device(args.device)


def _device(requested: str | None) -> torch.device:
    """The device `--device` names, checked to exist on this machine; by default the best one available."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise UserError(f"--device {requested!r} is not a device: use cuda, cuda:N, mps or cpu.") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
            raise UserError(
                f"--device {requested}: CUDA is not available here (torch {torch.__version__}, {built}); "
                "leave out --device or pass --device cpu."
            )
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise UserError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s).")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UserError(f"--device {requested}: MPS (Apple GPU) is not available here; pass --device cpu.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_for_generation(model_name_or_path: str | os.PathLike, args: GenerationArguments):
    """The tokenizer and the model (eval mode, on the device) of a local folder or Hub id.

    A missing folder, a folder without a real tokenizer (see `tokenizer.load_tokenizer`) and a model with
    NaN or infinite weights (a diverged training run) are each a one-line `UserError`.
    """
    from .. import PgGPT2Config  # noqa: F401  (registers pg_gpt2 with the Auto classes)

    model_name_or_path = os.fspath(model_name_or_path)
    check_pretrained_source(model_name_or_path, "model", args.revision, args.token)
    hub = {"revision": args.revision, "token": args.token, "trust_remote_code": args.trust_remote_code}
    progress_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # loading a small model is instant: keep the terminal for the text
    try:
        tokenizer = load_tokenizer(model_name_or_path, **hub)
        model = AutoModelForCausalLM.from_pretrained(model_name_or_path, **hub)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the model {model_name_or_path!r}: {first_line(err)}") from None
    finally:
        if progress_bars:
            hf_logging.enable_progress_bar()
    check_finite_weights(model, model_name_or_path)
    return tokenizer, model.to(_device(args.device)).eval()


def check_finite_weights(model: PreTrainedModel, model_name: str) -> None:
    """Refuse a model with NaN or infinite weights: it can only generate garbage (its training diverged)."""
    bad = [name for name, param in model.named_parameters() if not torch.isfinite(param).all()]
    if bad:
        raise UserError(
            f"the model {model_name!r} has NaN or infinite weights ({few(bad, 1)}): its training diverged; use an "
            "earlier checkpoint or train again with a lower learning rate"
        )


def context_length(config) -> int | None:
    """The longest sequence the model attends over (`n_positions`, `max_position_embeddings`), if it has one."""
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


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
    if args.backend == "onnxruntime":
        from .onnx import load_onnx_for_generation

        tokenizer, model = load_onnx_for_generation(model_name_or_path, args.device)
    else:
        tokenizer, model = load_for_generation(model_name_or_path, args)
    context = context_length(model.config)
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoded = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else [start_id]
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
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
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
    "check_finite_weights",
    "check_generation_arguments",
    "context_length",
    "generate_text",
    "read_prompts",
]
