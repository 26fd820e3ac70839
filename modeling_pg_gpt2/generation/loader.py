"""A trained model ready for use: the one place that turns a folder or Hub id into a tokenizer and a model.

`generate.py`, `evaluate_lm.py` and the exports load what they run through here, so each refuses the same
sources with the same line. [`load_model`] takes

* a pg_gpt2 folder or Hub id (`run_clm.py`'s output) or a transformers GPT-2 checkpoint (`model_type: gpt2`,
  e.g. `python convert.py MODEL DST --to gpt2`): `AutoModelForCausalLM` loads either, on the device, in eval
  mode;
* an ONNX export folder (`python convert.py MODEL DST --to onnx`) with `backend="onnxruntime"`: an
  [`~modeling_pg_gpt2.generation.onnx.OnnxCausalLM`], no torch model.

Each of these is one `UserError` line: a folder or Hub repository that does not exist (`sources`), a folder
without a real tokenizer (`data.tokenizer.load_tokenizer`), a model with NaN or infinite weights (a diverged
training run), a tokenizer with more tokens than the model has embeddings, an ONNX export loaded as torch
weights, a device this machine does not have.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from ..common.errors import UserError, few, first_line
from ..common.outputs import WEIGHTS_FILES
from ..common.sources import check_pretrained_source
from ..data.tokenizer import load_tokenizer
from .onnx import ONNX_FILE, OnnxCausalLM

BACKENDS = ("torch", "onnxruntime")
# What `load_model` returns: a transformers model, or an ONNX export run by onnxruntime (same `generate`).
UsableModel = PreTrainedModel | OnnxCausalLM


@dataclass(kw_only=True)
class LoadArguments:
    """Where a model comes from and where it runs: the options of every command that loads one for use
    (generate.py, evaluate_lm.py), whose arguments extend this class."""

    device: str | None = field(default=None, metadata={"help": "cuda, mps or cpu (default: the best available)."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run the model code of a Hub repository (pg_gpt2 models need no flag: the code is here)."},
    )
    revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub model."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models (and datasets)."})

    def load(self, name_or_path: str | os.PathLike, **options: Any) -> tuple[PreTrainedTokenizerBase, UsableModel]:
        """[`load_model`] of `name_or_path` with these arguments; `options`: its others (`backend`, `dtype`)."""
        return load_model(
            name_or_path,
            device=self.device,
            revision=self.revision,
            token=self.token,
            trust_remote_code=self.trust_remote_code,
            **options,
        )


def load_model(
    name_or_path: str | os.PathLike,
    *,
    backend: str = "torch",
    device: str | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    token: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedTokenizerBase, UsableModel]:
    """(tokenizer, model) of a model folder or Hub id, checked and ready to run (see the module docstring).

    backend: "torch" (a transformers model on `device`, default the best one available, in `dtype` when
    given) or "onnxruntime" (an ONNX export folder; device "cuda" picks onnxruntime's CUDA provider).
    `revision`, `token` and `trust_remote_code` apply to Hub ids.
    """
    name = os.fspath(name_or_path)
    if backend == "onnxruntime":
        return _load_onnx(name, device)
    if backend != "torch":
        raise UserError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    from .. import PgGPT2Config  # noqa: F401  (registers pg_gpt2 with the Auto classes)

    target = resolve_device(device)
    check_pretrained_source(name, "model", revision, token)
    folder = Path(name).expanduser()
    if (folder / ONNX_FILE).is_file() and not any((folder / weights).is_file() for weights in WEIGHTS_FILES):
        raise UserError(
            f"{name} is an ONNX export (it holds {ONNX_FILE} and no torch weights): run it with --backend onnxruntime"
        )
    hub = {"revision": revision, "token": token, "trust_remote_code": trust_remote_code}
    progress_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # loading a small model is instant: keep the terminal for the text
    try:
        tokenizer = load_tokenizer(name, **hub)
        model = AutoModelForCausalLM.from_pretrained(name, **hub)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the model {name!r}: {first_line(err)}") from None
    finally:
        if progress_bars:
            hf_logging.enable_progress_bar()
    check_model(model, tokenizer, name)
    if dtype is not None:
        model = model.to(dtype)
    return tokenizer, model.to(target).eval()


def _load_onnx(name: str, device: str | None) -> tuple[PreTrainedTokenizerBase, OnnxCausalLM]:
    if not Path(name).expanduser().is_dir():
        raise UserError(
            f"no such folder: {name}; --backend onnxruntime runs a folder written by "
            "`python convert.py MODEL DST --to onnx`"
        )
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device and device.startswith("cuda") else None
    model = OnnxCausalLM.from_pretrained(name, providers=providers)
    tokenizer = load_tokenizer(name)
    check_vocabulary(tokenizer, model.config.vocab_size, name)
    return tokenizer, model


def check_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, name: str) -> None:
    """Refuse a model that cannot be used: NaN or infinite weights, or a tokenizer larger than its vocabulary."""
    check_finite_weights(model, name)
    if tokenizer is not None:
        check_vocabulary(tokenizer, model.config.vocab_size, name)


def check_finite_weights(model: PreTrainedModel, name: str) -> None:
    """Refuse a model with NaN or infinite weights: it can only generate garbage (its training diverged)."""
    bad = [param_name for param_name, param in model.named_parameters() if not torch.isfinite(param).all()]
    if bad:
        raise UserError(
            f"the model {name!r} has NaN or infinite weights ({few(bad, 1)}): its training diverged; use an "
            "earlier checkpoint or train again with a lower learning rate"
        )


def check_vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int, name: str) -> None:
    """Refuse a tokenizer with more tokens than the model has embeddings: its last ids would index past them."""
    if len(tokenizer) > vocab_size:
        raise UserError(
            f"the tokenizer of {name!r} has {len(tokenizer)} tokens but the model only {vocab_size} "
            "(config.vocab_size); use the tokenizer the model was trained with"
        )


def resolve_device(requested: str | None) -> torch.device:
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


def context_length(config) -> int | None:
    """The longest sequence the model attends over (`n_positions`, `max_position_embeddings`), if it has one."""
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


__all__ = [
    "BACKENDS",
    "LoadArguments",
    "check_finite_weights",
    "check_model",
    "check_vocabulary",
    "context_length",
    "load_model",
    "resolve_device",
]
