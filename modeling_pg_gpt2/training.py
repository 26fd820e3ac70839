"""Pre-training pg_gpt2 with the transformers `Trainer`: the package behind `run_clm.py`.

The arguments are `HfArgumentParser` dataclasses with the flags of transformers' own `run_clm.py`
example ([`ModelArguments`], [`DataTrainingArguments`], [`CLMTrainingArguments`], and the shared
[`~modeling_pg_gpt2.corpus.CorpusArguments`]), parsed by `modeling_pg_gpt2.arguments`; [`train`] runs
the whole job:

1. check the output folder and lock it for this run: resume from its last complete checkpoint, leave
   a finished run alone (unless asked for more steps), refuse to overwrite a folder that holds
   something else, start over with `--overwrite_output_dir`;
2. build the model (preset, config file, pg_gpt2 checkpoint or GPT-2 weights) sized to the tokenizer;
3. tokenize the corpus with `datasets.map` (batched, cached, `num_proc`), separate documents with
   `<|endoftext|>` and pack them into `block_size` blocks;
4. train with evaluation (loss, perplexity, accuracy, bits per byte), checkpoints, the best model
   kept, early stopping, plots refreshed at each evaluation;
5. write the best model, tokenizer, generation config, `metrics.json`, `training_info.json`, the
   plots and a model card into the output folder.

Every bad input is a [`~modeling_pg_gpt2.cli.UserError`] raised before the output folder is touched.
Faults during training end in one line too, keeping every complete checkpoint: Ctrl-C saves the
current step ([`InterruptCallback`]), a non-finite gradient norm or loss stops the run before the update
([`DivergenceCallback`]), a full disk names the file it cut off (docs/faults.md lists them all).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import functools
import importlib.util
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import socket
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
import yaml
from safetensors import safe_open
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    EarlyStoppingCallback,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .cli import CommandError, Interrupted, UserError, check_output_dir, disk_full_message, first_line, is_disk_full
from .configuration_pg_gpt2 import PRESETS, PgGPT2Config
from .corpus import CorpusArguments, load_corpus
from .eval_tasks import EvalTasksCallback
from .modeling_pg_gpt2 import PgGPT2ForCausalLM
from .outputs import METRICS_FILE, TRAINING_INFO_FILE
from .sources import check_pretrained_source

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Held (flock) by the run writing to the folder; records its pid and host for whoever finds it taken.
LOCK_FILE = ".run.lock"
LM_METRICS_PATH = Path(__file__).parent / "metrics" / "lm_metrics.py"
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


@dataclass
class DataTrainingArguments:
    """How the corpus becomes training blocks. The corpus itself is chosen by `CorpusArguments`."""

    block_size: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per training sequence; documents are packed into blocks of this size. "
            "Default: the model's context (n_positions), at most 1024."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training blocks (debugging, quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation blocks (faster evaluations)."}
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Re-tokenize instead of reusing the datasets cache."}
    )


def native_bf16(device_type: str) -> bool:
    """Whether `device_type` ("cpu", "cuda", ...) multiplies bf16 matrices natively, i.e. faster than fp32.

    On a CPU that takes AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake) or AMX (Intel Sapphire Rapids
    and later): oneDNN then runs bf16 matrix products at about twice fp32's speed (2.2x on a 2-core
    Zen 4, bench/RESULTS.md). Without them bf16 is emulated and slower than fp32.
    """
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's own CPU feature probes
        return any(getattr(torch.cpu, check, lambda: False)() for check in checks)
    return False


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
    auto_bf16: bool = field(
        default=False,
        metadata={
            "help": "Train under bf16 autocast (as --bf16, fp32 master weights) where the device multiplies bf16 "
            "natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX, where bf16 matrix products "
            "run about twice as fast as fp32; fp32 elsewhere. --bf16 true or --fp16 true take precedence."
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
        accelerator = torch.accelerator.current_accelerator(check_available=True)  # None on a CPU-only machine
        if self.auto_bf16 and not (self.bf16 or self.fp16):
            on_cpu = self.use_cpu or accelerator is None
            self.bf16 = native_bf16("cpu" if on_cpu else accelerator.type)
            # transformers accepts bf16 on a CPU only when told that the CPU is the device
            self.use_cpu = self.use_cpu or (self.bf16 and on_cpu)
        if accelerator is None:
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


# --------------------------------------------------------------------------------------------------
# Output folder and checkpoints


def checkpoint_problem(checkpoint: str | os.PathLike) -> str | None:
    """Why `checkpoint` cannot be resumed from, or `None` when it is complete.

    The Trainer writes `trainer_state.json` last, so a folder without a readable one was cut off while
    being written; a weights or optimizer file truncated by a crash fails its header check.
    """
    path = Path(checkpoint)
    state = path / "trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError):
        return "no readable trainer_state.json"
    weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
    if not weights and not any(path.glob("global_step*")) and not any(path.glob("pytorch_model_fsdp*")):
        return "no model weights"
    for file in path.rglob("*.safetensors"):
        try:
            with safe_open(file, framework="pt"):
                pass
        except Exception:
            return f"{file.name} is truncated or corrupt"
    for file in [*path.glob("*.pt"), *path.glob("*.pth"), *path.glob("*.bin")]:
        if not zipfile.is_zipfile(file):
            return f"{file.name} is truncated or corrupt"
    return None


def find_resumable_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete `checkpoint-N` folder in `output_dir`; incomplete ones are skipped with a warning."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    checkpoints = sorted(
        (p for p in folder.iterdir() if p.is_dir() and pattern.match(p.name)),
        key=lambda p: int(pattern.match(p.name).group(1)),
        reverse=True,
    )
    for checkpoint in checkpoints:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return str(checkpoint)
        logger.warning("Skipping %s: it was not completely written (%s).", checkpoint, problem)
    return None


def resolve_resume(args: CLMTrainingArguments) -> str | None:
    """The checkpoint to resume from, or `None` to start from scratch; refuses to clobber a folder.

    Follows transformers' run_clm example: a folder with checkpoints is resumed, an empty or missing
    one is used, any other content needs `--overwrite_output_dir`.
    """
    if args.resume_from_checkpoint:
        problem = checkpoint_problem(args.resume_from_checkpoint)
        if problem is not None:
            raise UserError(f"cannot resume from {args.resume_from_checkpoint}: {problem}.")
        return args.resume_from_checkpoint
    output_dir = Path(args.output_dir)
    if not args.do_train or args.overwrite_output_dir or not output_dir.is_dir():
        return None
    checkpoint = find_resumable_checkpoint(output_dir)
    if checkpoint is not None:
        return checkpoint
    check_output_dir(output_dir, allowed=_is_run_artifact, ignore=(LOCK_FILE,))
    if any(output_dir.iterdir()):
        logger.warning("%s holds a run stopped before its first complete checkpoint: starting over.", output_dir)
    return None


def finished_run(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The `training_info.json` of the finished run in `output_dir`, or `None` if it holds none.

    A run is finished once it wrote its final model and, last of all, `training_info.json` with the
    reason it stopped (`finished`: "max_steps", "time budget" or "early stopping"); a run killed, stopped
    by Ctrl-C or diverged never writes it, and a final model cut off while being written does not count.
    """
    folder = Path(output_dir)
    try:
        info = json.loads((folder / TRAINING_INFO_FILE).read_text(encoding="utf-8"))
        with safe_open(folder / "model.safetensors", framework="pt"):
            pass
    except Exception:  # missing, unreadable or truncated: not a finished run
        return None
    if not isinstance(info, dict):
        return None
    if "finished" not in info and 0 < info.get("max_steps", -1) <= info.get("global_step", 0):
        info["finished"] = "max_steps"  # written before `finished` was recorded
    return info if info.get("finished") else None


def asks_for_more(info: dict[str, Any], args: CLMTrainingArguments) -> bool:
    """Whether `args` asks a finished run (its `training_info.json`) to train on: a larger --max_steps (or
    --num_train_epochs), or a longer --max_train_minutes for a run that the time budget stopped."""
    done_steps, done_epochs = info.get("max_steps", -1), info.get("num_train_epochs", 0)
    if args.max_steps > 0:
        more = args.max_steps > (done_steps if done_steps > 0 else info.get("global_step", 0))
    else:
        more = done_steps <= 0 and args.num_train_epochs > done_epochs
    if info.get("finished") == "time budget":
        budget = info.get("max_train_minutes")
        more = more or args.max_train_minutes is None or (budget is not None and args.max_train_minutes > budget)
    return more


@contextlib.contextmanager
def output_lock(output_dir: str | os.PathLike):
    """Hold `output_dir` for this run, so a second run on the same folder is refused at once.

    The lock is an `flock` on `.run.lock` in the folder, which records the holder's pid and host. The
    kernel releases it when its process dies, so the lock left by a killed run is taken over (with a
    warning) and never needs deleting by hand. A folder this created and left empty is removed again.
    """
    folder = Path(output_dir)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise UserError(
                f"another run ({holder or 'unknown process'}) is writing to {folder}; wait for it to end or "
                "choose another --output_dir"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break  # the file we locked is still the lock (not one its holder removed meanwhile)
        os.close(fd)
    try:
        previous = _lock_holder(fd)
        if previous:
            logger.warning("Taking over the lock of %s, a run that ended without releasing it.", previous)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: a bad input refused before anything was written


def _lock_holder(fd: int) -> str | None:
    """'pid N on HOST since T' from a lock file, or `None` if it records nothing readable."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {record['pid']} on {record['host']} since {record['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _is_run_artifact(path: Path) -> bool:
    """Whether `path` is something a run writes before its first complete checkpoint (plots, logs, checkpoints)."""
    from .plots import PLOTS

    if path.is_dir():
        return path.name == "runs" or re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", path.name) is not None
    return path.name in PLOTS


# --------------------------------------------------------------------------------------------------
# Tokenizer and model


def load_tokenizer(model_args: ModelArguments) -> PreTrainedTokenizerBase:
    """The tokenizer named by `--tokenizer_name`, else the one stored with `--model_name_or_path`."""
    from .tokenizer import load_tokenizer as load_checked_tokenizer

    name = model_args.tokenizer_name or model_args.model_name_or_path
    if name is None:
        raise UserError("no tokenizer: pass --tokenizer_name with a folder made by train_tokenizer.py (or a Hub id).")
    tokenizer = load_checked_tokenizer(
        name, cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token
    )
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer {name!r} has no end-of-text token; train one with train_tokenizer.py.")
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


def build_config(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> PgGPT2Config:
    """The config of a model trained from scratch: preset or file, overrides, vocabulary of the tokenizer."""
    name = model_args.config_name or "gpt2"
    overrides = parse_config_overrides(model_args.config_overrides or "")
    if "vocab_size" in overrides and overrides["vocab_size"] != len(tokenizer):
        raise UserError(
            f"vocab_size follows the tokenizer ({len(tokenizer)} tokens); remove vocab_size from --config_overrides."
        )
    if name in PRESETS:
        base = PgGPT2Config.from_preset(name)
    elif Path(name).exists():
        try:
            base = PgGPT2Config.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read the config {name!r}: {first_line(err)}") from None
    else:
        raise UserError(
            f"unknown --config_name {name!r}: use a preset ({', '.join(PRESETS)}), a folder with config.json, "
            "or a config JSON file."
        )
    base = _config_fields(base)
    special = {
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
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
        from .convert import convert_gpt2_checkpoint

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


# --------------------------------------------------------------------------------------------------
# Data


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


# Module-level functions bound with functools.partial: `datasets` pickles them by reference for its worker
# processes. Closures defined in this module were pickled by value and gained nothing from a second worker.
def _tokenize(batch: dict[str, list[str]], tokenizer: PreTrainedTokenizerBase, eos_token_id: int) -> dict:
    encoded = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
    return {"input_ids": [ids + [eos_token_id] for ids in encoded]}


def _group_texts(batch: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    # Concatenate the documents of this batch (each ends with <|endoftext|>) and cut them into
    # blocks; the tail shorter than a block is dropped, as in transformers' run_clm example.
    stream = [token for ids in batch["input_ids"] for token in ids]
    usable = len(stream) // block_size * block_size
    blocks = [stream[i : i + block_size] for i in range(0, usable, block_size)]
    return {"input_ids": blocks, "labels": [list(block) for block in blocks]}


def prepare_datasets(
    corpus_args: CorpusArguments,
    data_args: DataTrainingArguments,
    training_args: TrainingArguments,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
):
    """Load the corpus and return it as packed blocks (`input_ids`, `labels`), split train/validation.

    Runs on the main process first so the other ranks reuse its `datasets` cache.
    """
    with training_args.main_process_first(desc="tokenizing and packing the corpus"):
        raw = load_corpus(corpus_args)
        num_proc = corpus_args.preprocessing_num_workers
        cache = not data_args.overwrite_cache
        tokenized = raw.map(
            functools.partial(_tokenize, tokenizer=tokenizer, eos_token_id=tokenizer.eos_token_id),
            batched=True,
            num_proc=num_proc,
            remove_columns=raw["train"].column_names,
            load_from_cache_file=cache,
            desc="Tokenizing",
        )
        packed = tokenized.map(
            functools.partial(_group_texts, block_size=block_size),
            batched=True,
            batch_size=1000,
            num_proc=num_proc,
            load_from_cache_file=cache,
            desc=f"Packing into blocks of {block_size} tokens",
        )
    # Without worker processes the fast tokenizer encoded on all cores with its own threads. Processes forked
    # from here on (data-loader workers) must not use those threads: say so, instead of tokenizers warning.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if training_args.do_eval and raw["validation"].num_rows == 0:
        raise UserError(
            "no validation text (--validation_split_percentage 0): pass --validation_file, a percentage above 0, "
            "or --do_eval false."
        )
    for split in ("train", "validation"):
        if (split == "train" and not training_args.do_train) or (split == "validation" and not training_args.do_eval):
            continue
        if len(packed[split]) == 0:
            tokens = sum(len(ids) for ids in tokenized[split]["input_ids"])
            raise UserError(
                f"the {split} split has {tokens} tokens, fewer than one block of {block_size}; "
                "lower --block_size or give it more text."
            )
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    for split, limit in limits.items():
        if limit is not None and len(packed[split]) > limit:
            packed[split] = packed[split].select(range(limit))
    return packed


# --------------------------------------------------------------------------------------------------
# Metrics


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


# --------------------------------------------------------------------------------------------------
# Callbacks


class PlotCallback(TrainerCallback):
    """Redraws the loss and perplexity plots in the output folder after every evaluation."""

    def on_evaluate(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from .plots import write_plots

            write_plots(args.output_dir, state.log_history)


class TimeLimitCallback(TrainerCallback):
    """Ends training once `minutes` of wall-clock time have passed, with a last evaluation and checkpoint."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60
        self.start: float | None = None
        self.used_up = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.start is None or control.should_training_stop:
            return control
        if _on_any_rank(time.monotonic() - self.start >= self.seconds, args.device):  # every rank stops together
            self.used_up = True
            logger.warning(
                "Time budget of %g minutes used up at step %d: stopping.", self.seconds / 60, state.global_step
            )
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = args.save_strategy != "no"
        return control


def _on_any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is true on any process, so that every rank takes the same decision."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


class DivergenceCallback(TrainerCallback):
    """Stops training at the first non-finite gradient norm or training loss, before it reaches the weights.

    Every optimizer step, the gradient norm is checked after the backward pass (one device sync per step);
    a non-finite one drops the gradients, so the optimizer step leaves every weight as it was, and ends
    training without a checkpoint. Under fp16 the loss scaler skips overflowing steps by design, so only
    the logged loss is checked there. `diverged` then describes what was seen.
    """

    def __init__(self) -> None:
        self.diverged: str | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if args.fp16 or model is None:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if _on_any_rank(not bool(torch.isfinite(norm)), args.device):
            for parameter in model.parameters():
                parameter.grad = None  # the optimizer skips parameters without a gradient
            self._stop(control, f"the gradient norm is {norm.item():g} at step {state.global_step + 1}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss) and self.diverged is None:
            self._stop(control, f"the training loss is {loss:g} at step {state.global_step}")
        self._suppress(control)

    def on_step_end(self, args, state, control, **kwargs):
        self._suppress(control)

    on_epoch_end = on_step_end

    def _stop(self, control, what: str) -> None:
        self.diverged = what
        control.should_training_stop = True
        self._suppress(control)

    def _suppress(self, control) -> None:
        if self.diverged is not None:  # nothing of a diverged step is evaluated or saved
            control.should_save = control.should_evaluate = False


class InterruptCallback(TrainerCallback):
    """Ctrl-C (SIGINT) during training: finish the step, save a checkpoint and stop; a second Ctrl-C stops at once.

    `stopped_at` is then the step whose checkpoint was saved. The handler is in place from the first to
    the last step only: elsewhere Ctrl-C raises `KeyboardInterrupt` as usual.
    """

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None
        self._previous: Any = None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the second Ctrl-C interrupts at once

    def on_train_begin(self, args, state, control, **kwargs):
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # e.g. a background job of a script
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_at is None and _on_any_rank(self.requested, args.device):
            message = "Ctrl-C: saving a checkpoint of step %d, then stopping (Ctrl-C again stops at once)."
            logger.warning(message, state.global_step)
            self.stopped_at = state.global_step
            control.should_training_stop = True
            control.should_evaluate = False
            control.should_save = args.save_strategy != "no"
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


# --------------------------------------------------------------------------------------------------
# The run


def _hide_tied_weight_warning(model: PgGPT2ForCausalLM) -> None:
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


def _count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _final_eval_metrics(trainer: Trainer) -> dict[str, float]:
    """Eval metrics of the model that ends in the output folder, taken from the log of its evaluation."""
    state = trainer.state
    step = state.best_global_step if trainer.args.load_best_model_at_end and state.best_global_step else None
    evaluations = [entry for entry in state.log_history if "eval_loss" in entry]
    if step is not None:
        evaluations = [entry for entry in evaluations if entry.get("step") == step]
    if not evaluations:
        return trainer.evaluate()
    return {key: value for key, value in evaluations[-1].items() if key.startswith("eval_")}


def reuse_freed_memory() -> bool:
    """Have glibc's malloc keep large freed blocks for reuse; False where the C library is not glibc.

    A training step allocates and frees the same large tensors every time (activations, and under
    transformers' loss the logits and their gradient). Blocks above malloc's mmap threshold (32 MB at most
    by default) are fresh mappings returned to the system when freed, and each of their pages faults in
    again on first touch: about a million page faults per step for the tiny demo model. With the threshold
    at 1 GB, and no trimming of the heap's top, they come from the heap and are reused: 10-20% faster CPU
    training steps for 13-19% more resident memory (bench/RESULTS.md, "Recipe"). Affects this process only.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


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
    _setup_logging(training_args)
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
    on_cpu = training_args.device.type == "cpu"
    if training_args.reuse_freed_memory and on_cpu and training_args.do_train and reuse_freed_memory():
        logger.info("malloc keeps freed blocks for reuse (--reuse_freed_memory false to turn off).")
    if training_args.auto_bf16:
        precision = "bf16 autocast" if training_args.bf16 else "fp16 autocast" if training_args.fp16 else "fp32"
        logger.info("--auto_bf16: training in %s on %s.", precision, training_args.device.type)

    set_seed(training_args.seed)  # before the model exists: Trainer seeds only after
    tokenizer = load_tokenizer(model_args)
    model, source = build_model(model_args, tokenizer)
    n_positions = model.config.n_positions
    block_size = data_args.block_size or min(n_positions, 1024)
    if block_size > n_positions:
        raise UserError(
            f"--block_size {block_size} is larger than the model's context n_positions={n_positions}; "
            f"use --block_size {n_positions} or less, or a config with more positions."
        )
    if block_size < 2:
        raise UserError(f"--block_size must be at least 2, got {block_size}.")
    # Packed blocks have no padding; the pad id only matters to batched generation, where it is <|endoftext|>.
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.config.pad_token_id = pad_token_id
    generation = model.generation_config
    generation.bos_token_id = model.config.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = pad_token_id
    generation.do_sample, generation.top_k = True, 50
    if model.config.tie_word_embeddings:
        _hide_tied_weight_warning(model)

    datasets = prepare_datasets(corpus_args, data_args, training_args, tokenizer, block_size)
    # Every input is checked by now (on a re-run the corpus comes from the datasets cache): a finished run
    # that is asked for nothing more is left as it is.
    output_dir = Path(training_args.output_dir)
    if training_args.do_train and not (training_args.overwrite_output_dir or training_args.resume_from_checkpoint):
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
        "Model %s: %s parameters, %d layers, %d wide, vocab %d; %d train and %d validation blocks of %d tokens.",
        source,
        f"{_count_parameters(model):,}",
        model.config.n_layer,
        model.config.n_embd,
        model.config.vocab_size,
        len(datasets["train"]),
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
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"] if training_args.do_train else None,
        eval_dataset=datasets["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        compute_metrics=ComputeLMMetrics(tokenizer) if training_args.do_eval else None,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if training_args.do_eval else None,
        callbacks=callbacks,
    )
    # First in the list: it adds its figures to the evaluation's log before the loggers receive it.
    trainer.callback_handler.callbacks.insert(0, eval_tasks)

    if training_args.overwrite_output_dir and trainer.is_world_process_zero():
        for stale in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            logger.warning("--overwrite_output_dir: deleting %s from the previous run.", stale)
            shutil.rmtree(stale)

    metrics: dict[str, float] = {}
    with _saving(trainer):
        if training_args.do_train:
            try:
                result = trainer.train(resume_from_checkpoint=resume_from)
            except KeyboardInterrupt:  # a second Ctrl-C, in the middle of a step
                raise Interrupted(f"stopped by Ctrl-C; {_resume_hint(output_dir)}") from None
            if divergence.diverged is not None:
                raise CommandError(_divergence_message(divergence.diverged, training_args, output_dir))
            if interrupt.stopped_at is not None:
                raise Interrupted(f"stopped by Ctrl-C at step {interrupt.stopped_at}; {_resume_hint(output_dir)}")
            metrics.update(result.metrics)
            if "train_samples_per_second" in result.metrics:  # all processes together
                metrics["train_tokens_per_second"] = result.metrics["train_samples_per_second"] * block_size
        if training_args.do_eval:
            metrics.update(_final_eval_metrics(trainer))
        if not all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters()):
            raise CommandError(_divergence_message("the weights are not finite", training_args, output_dir))

        finished = None
        if training_args.do_train:
            state = trainer.state
            finished = (
                "time budget"
                if time_limit is not None and time_limit.used_up
                else "max_steps"
                if state.global_step >= state.max_steps
                else "early stopping"
            )
        if trainer.is_world_process_zero():  # no stale completion record next to the files now rewritten
            (output_dir / TRAINING_INFO_FILE).unlink(missing_ok=True)
        trainer.save_model()  # the best model when load_best_model_at_end; tokenizer included
        if trainer.is_world_process_zero():
            trainer.save_state()
            (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
            info = _training_info(model_args, corpus_args, training_args, trainer, source, block_size, datasets)
            info["finished"] = finished
            from .model_card import write_model_card
            from .plots import write_plots

            write_plots(output_dir, trainer.state.log_history)
            write_model_card(output_dir, **info)
            # Written last: its `finished` marks the run complete (see `finished_run`).
            (output_dir / TRAINING_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            _report(output_dir, metrics)
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return metrics


@contextlib.contextmanager
def _saving(trainer: Trainer):
    """Turn a full disk while training or saving into one line, removing the checkpoint it cut off."""
    output_dir = Path(trainer.args.output_dir)
    try:
        yield
    except Exception as err:
        if isinstance(err, CommandError) or not is_disk_full(err, output_dir):
            raise
        target: Path = output_dir
        checkpoints = sorted(output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=os.path.getmtime)
        if checkpoints and checkpoint_problem(checkpoints[-1]) is not None:
            target = checkpoints[-1]
            if trainer.is_world_process_zero():  # incomplete, never resumed from: give its space back
                shutil.rmtree(target, ignore_errors=True)
        raise CommandError(disk_full_message(target, find_resumable_checkpoint(output_dir))) from None


def _resume_hint(output_dir: Path) -> str:
    """What a re-run of the same command does: resume from the newest complete checkpoint, or start over."""
    checkpoint = find_resumable_checkpoint(output_dir)
    if checkpoint is None:
        return "no checkpoint was saved: a re-run starts over"
    return f"a re-run of the same command resumes from {checkpoint}"


def _divergence_message(what: str, args: CLMTrainingArguments, output_dir: Path) -> str:
    """One line for a run whose loss or gradients stopped being finite: where, what is kept, what to try."""
    kept = find_resumable_checkpoint(output_dir)
    fixes = f"a lower --learning_rate (now {args.learning_rate:g}), more --warmup_steps (now {args.warmup_steps:g})"
    if not 0 < args.max_grad_norm <= 1:
        fixes += f", --max_grad_norm 1.0 (now {args.max_grad_norm:g})"
    if kept is None:
        return f"training diverged: {what}; no final model written, no checkpoint saved. Try {fixes}."
    return (
        f"training diverged: {what}; no final model written, the newest checkpoint (finite weights) is {kept}. "
        f"Try {fixes}, with --overwrite_output_dir to start over (a plain re-run resumes from that checkpoint)."
    )


def _training_info(
    model_args: ModelArguments,
    corpus_args: CorpusArguments,
    training_args: CLMTrainingArguments,
    trainer: Trainer,
    source: str,
    block_size: int,
    datasets,
) -> dict[str, Any]:
    """What the model card and later readers need to know about the run, beyond config.json and metrics."""
    args = training_args
    corpus = {
        key: value
        for key, value in dataclasses.asdict(corpus_args).items()
        if value is not None and key not in ("preprocessing_num_workers",)
    }
    sequences_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    tokens_per_step = sequences_per_step * block_size
    return {
        "model_source": source,
        "tokenizer": model_args.tokenizer_name or model_args.model_name_or_path,
        "corpus": corpus,
        "block_size": block_size,
        "train_blocks": len(datasets["train"]),
        "validation_blocks": len(datasets["validation"]),
        "world_size": args.world_size,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "tokens_per_step": tokens_per_step,
        "global_step": trainer.state.global_step,
        "tokens_seen": trainer.state.global_step * tokens_per_step,
        "best_global_step": trainer.state.best_global_step,
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "adam_betas": [args.adam_beta1, args.adam_beta2],
        "max_grad_norm": args.max_grad_norm,
        "optim": str(getattr(args.optim, "value", args.optim)),
        "max_steps": args.max_steps,
        "num_train_epochs": args.num_train_epochs,
        "max_train_minutes": args.max_train_minutes,
        "seed": args.seed,
        "bf16": args.bf16,
        "fp16": args.fp16,
        "torch_compile": args.torch_compile,
        "reuse_freed_memory": args.reuse_freed_memory,
        "attn_implementation": trainer.model.config._attn_implementation,
        "device": str(args.device),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def _report(output_dir: Path, metrics: dict[str, float]) -> None:
    parts = [
        f"{name} {metrics[key]:.4g}"
        for key, name in (
            ("eval_loss", "loss"),
            ("eval_perplexity", "perplexity"),
            ("eval_accuracy", "accuracy"),
            ("eval_bits_per_byte", "bits/byte"),
        )
        if key in metrics
    ]
    if parts:
        logger.info("Validation of the saved model: %s.", ", ".join(parts))
    logger.info("Model, tokenizer, metrics, plots and model card written to %s.", output_dir)


def _setup_logging(args: TrainingArguments) -> None:
    """Our INFO lines on stderr (main process); transformers and datasets at `--log_level` (warnings by default)."""
    package_logger = logging.getLogger(__name__.split(".")[0])
    if not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        package_logger.addHandler(handler)
        package_logger.propagate = False
    package_logger.setLevel(logging.INFO if args.should_log else logging.WARNING)
    level = args.get_process_log_level()
    transformers.utils.logging.set_verbosity(level)
    import datasets

    datasets.utils.logging.set_verbosity(level)


__all__ = [
    "CLMTrainingArguments",
    "DataTrainingArguments",
    "DivergenceCallback",
    "InterruptCallback",
    "ComputeLMMetrics",
    "ModelArguments",
    "asks_for_more",
    "checkpoint_problem",
    "find_resumable_checkpoint",
    "finished_run",
    "output_lock",
    "preprocess_logits_for_metrics",
    "token_byte_lengths",
    "train",
]
