"""The tokenizer and the model a run trains: a preset or config file with overrides, or a checkpoint.

[`build_model`] starts from scratch ([`build_config`]: preset or config, `--config_overrides` parsed by
[`parse_config_overrides`], the vocabulary of the tokenizer) or continues a pg_gpt2 checkpoint or GPT-2
weights (converted); a missing source is one line at once (`sources.check_pretrained_source`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedTokenizerBase,
)

from ..common.errors import UserError, first_line
from ..common.sources import check_pretrained_source
from ..configuration_pg_gpt2 import PRESETS, PgGPT2Config
from ..data.tokenizer import eos_token_id, load_tokenizer, pad_token_id, start_token_id
from ..modeling_pg_gpt2 import PgGPT2ForCausalLM

logger = logging.getLogger(__name__)


# Config fields that change parameter shapes: they cannot be overridden on a trained checkpoint.
SHAPE_FIELDS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner")


@dataclass
class ModelArguments:
    """Which model to train: from scratch (a preset or a config) or continued from a checkpoint."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A checkpoint to continue from: a pg_gpt2 folder or Hub id, or GPT-2 weights (model_type "
            "gpt2, e.g. openai-community/gpt2), which are converted. Leave unset to train from scratch."
        },
    )
    config_name: str | None = field(
        default=None,
        metadata={
            "help": f"Architecture to train from scratch: a preset ({', '.join(PRESETS)}), a folder holding "
            "config.json, or a config JSON file. Default: gpt2 (124M)."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated config changes, e.g. 'n_layer=4,n_embd=256,resid_pdrop=0.0'. vocab_size "
            "always follows the tokenizer."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Trained tokenizer folder or Hub id (see train_tokenizer.py). Defaults to the tokenizer "
            "stored with --model_name_or_path."
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel: 'sdpa' (default), 'eager', or on GPUs 'flash_attention_2' / "
            "'kernels-community/flash-attn'."
        },
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where to store models and tokenizers downloaded from the Hub."}
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of Hub models."})
    token: str | None = field(
        default=None, metadata={"help": "Hub token for private models (default: the logged-in one)."}
    )


def run_tokenizer(model_args: ModelArguments) -> PreTrainedTokenizerBase:
    """The tokenizer a run trains with: `--tokenizer_name`, else the one stored with `--model_name_or_path`.

    Loaded and checked by `data.tokenizer.load_tokenizer`; it must have an end-of-text token, which separates
    the documents packed into blocks.
    """
    name = model_args.tokenizer_name or model_args.model_name_or_path
    if name is None:
        raise UserError("no tokenizer: pass --tokenizer_name with a folder made by train_tokenizer.py (or a Hub id).")
    tokenizer = load_tokenizer(
        name, cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token
    )
    eos_token_id(tokenizer, name)
    return tokenizer


def parse_config_overrides(text: str) -> dict[str, Any]:
    """Parse `"n_layer=2,n_embd=64,resid_pdrop=0.0"` into typed values (YAML scalars: ints, floats, bools, null)."""
    overrides: dict[str, Any] = {}
    known = set(PgGPT2Config().to_dict())
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--config_overrides: {item!r} is not key=value (e.g. 'n_layer=4,n_embd=256').")
        if key not in known:
            raise UserError(f"--config_overrides: unknown config field {key!r}; fields are those of PgGPT2Config.")
        try:
            overrides[key] = yaml.safe_load(raw.strip()) if raw.strip() else None
        except yaml.YAMLError:
            raise UserError(f"--config_overrides: cannot read the value of {key!r}: {raw!r}.") from None
    return overrides


def _config_fields(config: PgGPT2Config | dict[str, Any]) -> dict[str, Any]:
    """A config's own fields, without the bookkeeping keys `to_dict()` adds."""
    values = config.to_dict() if not isinstance(config, dict) else dict(config)
    for key in ("model_type", "transformers_version", "architectures", "auto_map", "dtype", "torch_dtype"):
        values.pop(key, None)
    return values


def _build_config(base: dict[str, Any], overrides: dict[str, Any]) -> PgGPT2Config:
    try:
        return PgGPT2Config(**{**base, **overrides})
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from None


def named_config(name: str) -> PgGPT2Config:
    """The config `--config_name` names: a preset, a folder holding config.json, or a config JSON file."""
    if name in PRESETS:
        return PgGPT2Config.from_preset(name)
    if Path(name).exists():
        try:
            return PgGPT2Config.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read the config {name!r}: {first_line(err)}") from None
    raise UserError(
        f"unknown --config_name {name!r}: use a preset ({', '.join(PRESETS)}), a folder with config.json, "
        "or a config JSON file."
    )


def build_config(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> PgGPT2Config:
    """The config of a model trained from scratch: preset or file, overrides, vocabulary of the tokenizer."""
    name = model_args.config_name or "gpt2"
    overrides = parse_config_overrides(model_args.config_overrides or "")
    if "vocab_size" in overrides and overrides["vocab_size"] != len(tokenizer):
        raise UserError(
            f"vocab_size follows the tokenizer ({len(tokenizer)} tokens); remove vocab_size from --config_overrides."
        )
    base = _config_fields(named_config(name))
    special = {
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": start_token_id(tokenizer),
    }
    return _build_config({**base, **special}, overrides)


def build_model(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> tuple[PgGPT2ForCausalLM, str]:
    """The model to train and a one-line description of where it came from."""
    attn = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    if model_args.model_name_or_path is None:
        config = build_config(model_args, tokenizer)
        try:
            model = AutoModelForCausalLM.from_config(config, **attn)
        except (ValueError, ImportError) as err:
            raise UserError(first_line(err)) from None
        return model, f"from scratch ({model_args.config_name or 'gpt2'})"

    name = model_args.model_name_or_path
    if model_args.config_name:
        raise UserError("pass either --model_name_or_path (continue a checkpoint) or --config_name (from scratch).")
    hub = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    check_pretrained_source(name, "model", model_args.model_revision, model_args.token, model_args.cache_dir)
    try:
        config = AutoConfig.from_pretrained(name, **hub)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the checkpoint {name!r}: {first_line(err)}") from None
    if config.model_type not in ("pg_gpt2", "gpt2"):
        raise UserError(f"{name!r} is a {config.model_type!r} model; pg_gpt2 continues pg_gpt2 or GPT-2 checkpoints.")
    if config.vocab_size != len(tokenizer):
        raise UserError(
            f"the checkpoint {name!r} has vocab_size {config.vocab_size} but the tokenizer has {len(tokenizer)} "
            "tokens; use the tokenizer the checkpoint was trained with (leave --tokenizer_name unset)."
        )
    overrides = parse_config_overrides(model_args.config_overrides or "")
    changed = [key for key in SHAPE_FIELDS if key in overrides and overrides[key] != getattr(config, key)]
    if changed:
        raise UserError(f"--config_overrides cannot change {', '.join(changed)} of a trained checkpoint.")
    if config.model_type == "gpt2":
        from ..export.convert import convert_gpt2_checkpoint

        converted = convert_gpt2_checkpoint(name, **hub)
        config = _build_config(_config_fields(converted.config), overrides)
        model = AutoModelForCausalLM.from_config(config, **attn)
        model.load_state_dict(converted.state_dict())
        return model, f"GPT-2 weights {name} (converted)"
    config = _build_config(_config_fields(config), overrides)
    try:
        model = PgGPT2ForCausalLM.from_pretrained(name, config=config, **hub, **attn)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the checkpoint {name!r}: {first_line(err)}") from None
    source = f"checkpoint {name}"
    return model, source


def set_generation_defaults(model: PgGPT2ForCausalLM, tokenizer: PreTrainedTokenizerBase) -> None:
    """The token ids and sampling defaults the trained model is saved with (config and generation config)."""
    # Packed blocks have no padding; the pad id only matters to batched generation, where it is <|endoftext|>.
    pad = pad_token_id(tokenizer)
    model.config.pad_token_id = pad
    generation = model.generation_config
    generation.bos_token_id = model.config.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = pad
    generation.do_sample, generation.top_k = True, 50


def hide_tied_weight_warning(model: PgGPT2ForCausalLM) -> None:
    """Silence the Trainer's warning that a reloaded best checkpoint lacks the tied `lm_head.weight`.

    Tied weights are saved once (as `wte`), and reloading `wte` restores the head too; the Trainer only
    recognises `_keys_to_ignore_on_save`, not tied weights, so it warns about a checkpoint that is complete.
    """
    tied = sorted(model._tied_weights_keys)
    expected = f"There were missing keys in the checkpoint model loaded: {tied}."

    class TiedWeightFilter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.getMessage() != expected

    trainer_logger = logging.getLogger("transformers.trainer")
    if not any(type(f).__name__ == "TiedWeightFilter" for f in trainer_logger.filters):
        trainer_logger.addFilter(TiedWeightFilter())


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


__all__ = [
    "ModelArguments",
    "SHAPE_FIELDS",
    "build_config",
    "build_model",
    "count_parameters",
    "hide_tied_weight_warning",
    "named_config",
    "parse_config_overrides",
    "run_tokenizer",
    "set_generation_defaults",
]
