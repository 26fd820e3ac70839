"""Convert checkpoints between transformers' GPT-2 (`model_type: gpt2`) and pg_gpt2, in both directions.

The two models compute the same function with the same parameter names; they differ only in layout.
transformers' GPT-2 stores its four projections as `Conv1D`, whose weight is (in, out), the transpose of
the `nn.Linear` (out, in) that pg_gpt2 uses. Everything else (embeddings, LayerNorms, biases) is copied
as is, and the language-model head is tied to `wte` in both. Converted models give the same logits.

* GPT-2 -> pg_gpt2 reads a folder or a Hub id (`openai-community/gpt2`), in transformers' format
  (`transformer.h.0...`) or the original OpenAI one (no `transformer.` prefix, causal-mask buffers
  `attn.bias` / `attn.masked_bias`), from `model.safetensors` or `pytorch_model.bin`, sharded or not.
* pg_gpt2 -> GPT-2 writes a checkpoint that `GPT2LMHeadModel.from_pretrained` loads without remote code,
  so tools that know GPT-2 (ONNX export, vLLM, llama.cpp's converter) run a pg_gpt2 model.

Tokenizer files and `generation_config.json` travel along.

Command line:

    python convert.py openai-community/gpt2 gpt2-pg            # GPT-2 -> pg_gpt2
    python convert.py outputs/my-model my-model-gpt2 --to gpt2  # pg_gpt2 -> GPT-2
    python convert.py outputs/my-model my-model-onnx --to onnx  # see export/onnx.py
    python convert.py outputs/my-model my-model.gguf --to gguf  # see export/gguf.py

Python:

    >>> from modeling_pg_gpt2.export.convert import convert_gpt2_to_pg, convert_pg_to_gpt2
    >>> convert_gpt2_to_pg("path/to/gpt2", "gpt2-pg")
    >>> convert_pg_to_gpt2("outputs/my-model", "my-model-gpt2")
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

import torch
from transformers import (
    GPT2Config,
    GPT2ForQuestionAnswering,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from ..common.errors import CommandError, UserError, disk_full_message, few, first_line, is_disk_full
from ..common.outputs import (
    CONFIG_FILE,
    SIDE_FILES,
    TOKENIZER_FILES,
    WEIGHTS_FILES,
    check_not_an_input,
    check_output_dir,
    read_config,
    staged,
)
from ..common.sources import check_pretrained_source, hub_errors
from ..configuration_pg_gpt2 import PgGPT2Config
from ..modeling_pg_gpt2 import PgGPT2ForCausalLM
from .layout import (
    MASK_BUFFER,
    check_weights,
    gpt2_config_to_pg,
    gpt2_state_dict_to_pg,
    pg_config_to_gpt2,
    pg_state_dict_to_gpt2,
    refuse_mismatch,
    split_state_dict,
)

# -- reading checkpoints -------------------------------------------------------------------------------------


def resolve_checkpoint(
    src: str | Path, revision: str | None = None, cache_dir: str | Path | None = None, token: str | bool | None = None
) -> Path:
    """The local folder of `src`: the folder itself, or the Hub snapshot of a repo id (config, weights, tokenizer).

    Downloads respect `HF_HUB_OFFLINE` and the Hub cache; a source that is neither a folder nor a Hub
    repository, or a Hub that cannot provide it, is a one-line `UserError` (`common.sources`). `revision`,
    `cache_dir` and `token` apply to Hub ids.
    """
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    check_pretrained_source(src, "checkpoint", revision, token, cache_dir)

    from huggingface_hub import snapshot_download

    repo_id = str(src)
    hub = {"revision": revision, "cache_dir": cache_dir, "token": token}
    with hub_errors(repo_id, revision=revision, not_a_folder=True, instead="pass an existing checkpoint folder"):
        # One weights format only: the safetensors files, else the PyTorch pickles.
        patterns = [*SIDE_FILES, CONFIG_FILE, "model*.safetensors*"]
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns, **hub))
        if _weights_file(folder) is None:
            folder = Path(snapshot_download(repo_id, allow_patterns=["pytorch_model*.bin*"], **hub))
    return folder


def _weights_file(folder: Path) -> Path | None:
    return next((folder / name for name in WEIGHTS_FILES if (folder / name).is_file()), None)


def _refuse_no_weights(folder: Path) -> NoReturn:
    present = sorted(p.name for p in folder.iterdir())
    raise UserError(
        f"no weights in {folder}: expected model.safetensors or pytorch_model.bin "
        f"(found: {few(present, 6) if present else 'nothing'})"
    )


def read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder, on CPU: `model.safetensors` or `pytorch_model.bin`, sharded or not.

    huggingface_hub reads each file; `.bin` files with `torch.load(weights_only=True)`, which refuses pickles
    that run code. GPT-2 checkpoints are read by `GPT2LMHeadModel.from_pretrained` instead (`_load_gpt2`); this
    reads pg_gpt2 ones, whose task-head weights (if any) decide the class they convert to.
    """
    folder = Path(folder)
    path = _weights_file(folder)
    if path is None:
        _refuse_no_weights(folder)
    if path.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as err:
            raise UserError(f"cannot read the shard index {path}: {err}") from None
    else:
        shards = [path.name]

    from huggingface_hub import load_state_dict_from_file
    from safetensors import SafetensorError

    state_dict: dict[str, torch.Tensor] = {}
    for shard in shards:
        file = folder / shard
        if not file.is_file():
            raise UserError(f"{path.name} names the shard {shard}, which is missing from {folder}")
        try:
            # safe=False admits `.bin` pickles, which weights_only=True still keeps from running code
            state_dict.update(load_state_dict_from_file(file, map_location="cpu", weights_only=True, safe=False))
        except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
            raise UserError(f"cannot read {file}: {first_line(err, named=True)}") from None
    return state_dict


def _load_config(folder: Path, model_type: str, config_class: type[PreTrainedConfig]) -> PreTrainedConfig:
    """config.json of `folder` as `config_class`, after checking it describes a `model_type` model."""
    raw = read_config(folder)
    found = raw.get("model_type")
    if found != model_type:
        hint = ""
        if found == "pg_gpt2":
            hint = " (it is a pg_gpt2 checkpoint already; use --to gpt2 to convert it to GPT-2)"
        elif found == "gpt2":
            hint = " (it is a GPT-2 checkpoint already; leave out --to gpt2 to convert it to pg_gpt2)"
        raise UserError(f"{folder}: found model_type {found!r}, expected {model_type!r}{hint}")
    try:
        return config_class.from_dict(raw)
    except (ValueError, TypeError) as err:
        raise UserError(f"{folder / CONFIG_FILE} is not a valid {model_type} config: {first_line(err)}") from None


def _build(
    model_class: type[PreTrainedModel], config: PreTrainedConfig, state_dict: dict[str, torch.Tensor]
) -> PreTrainedModel:
    """`model_class(config)` holding `state_dict`'s tensors, without allocating and initialising weights first."""
    with torch.device("meta"):
        model = model_class(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.tie_weights()
    return model.eval()


def _load_gpt2(folder: Path, gpt2_config: GPT2Config, config: PgGPT2Config) -> GPT2LMHeadModel:
    """`GPT2LMHeadModel.from_pretrained(folder)`, refused in one line unless its weights are exactly `config`'s.

    transformers does the reading (safetensors or `.bin` through `torch.load(weights_only=True)`, sharded or
    not, either key layout); its loading info says what it had to initialise, drop or resize, which here is
    an error, never a silent random weight.
    """
    weights = _weights_file(folder)
    if weights is None:
        _refuse_no_weights(folder)
    from safetensors import SafetensorError

    verbosity, progress_bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    # Its load report would print the problems below as a table before the one-line error, and list the
    # causal-mask buffers of OpenAI-format files as unexpected when nothing is wrong.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = GPT2LMHeadModel.from_pretrained(
            folder, config=gpt2_config, dtype="auto", output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise UserError(f"cannot read {weights}: {first_line(err, named=True)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress_bars:
            hf_logging.enable_progress_bar()

    def names(keys: Iterable[str]) -> set[str]:
        stripped = (key.removeprefix("transformer.") for key in keys)
        return {name for name in stripped if not MASK_BUFFER.fullmatch(name)}

    wrong = {
        name.removeprefix("transformer."): (tuple(found), tuple(implied))
        for name, found, implied in info["mismatched_keys"]
    }
    refuse_mismatch(config, names(info["unexpected_keys"]), names(info["missing_keys"]), wrong)
    return model


def convert_gpt2_checkpoint(
    src: str | Path, revision: str | None = None, cache_dir: str | Path | None = None, token: str | bool | None = None
) -> PgGPT2ForCausalLM:
    """Load a transformers GPT-2 checkpoint (folder or Hub id) as a `PgGPT2ForCausalLM`, in eval mode.

    Tensors keep the checkpoint's dtype. Raises `UserError` for anything that is not a GPT-2 checkpoint
    pg_gpt2 can represent.
    """
    folder = resolve_checkpoint(src, revision, cache_dir, token)
    gpt2_config = _load_config(folder, "gpt2", GPT2Config)
    config = gpt2_config_to_pg(gpt2_config)
    gpt2 = _load_gpt2(folder, gpt2_config, config)
    return _build(PgGPT2ForCausalLM, config, gpt2_state_dict_to_pg(gpt2.state_dict(), config))


# pg_gpt2's task heads (task_heads.py) are GPT-2's: the same nn.Linear layers under the same names, and these
# config fields besides the architecture's.
GPT2_HEADS = {
    "score": GPT2ForSequenceClassification,
    "classifier": GPT2ForTokenClassification,
    "qa_outputs": GPT2ForQuestionAnswering,
}
HEAD_CONFIG_FIELDS = ("id2label", "label2id", "problem_type", "pad_token_id")


def convert_pg_checkpoint(
    src: str | Path, revision: str | None = None, cache_dir: str | Path | None = None, token: str | bool | None = None
) -> PreTrainedModel:
    """Load a pg_gpt2 checkpoint (folder or Hub id) as transformers' own GPT-2, in eval mode.

    A language model becomes `GPT2LMHeadModel`; a task head its GPT-2 class (see GPT2_HEADS), labels included.
    """
    folder = resolve_checkpoint(src, revision, cache_dir, token)
    config = _load_config(folder, "pg_gpt2", PgGPT2Config)
    state_dict = read_state_dict(folder)
    head = {name: state_dict.pop(name) for name in list(state_dict) if name.split(".")[0] in GPT2_HEADS}
    check_weights(*split_state_dict(state_dict), config, gpt2_layout=False)
    gpt2_config, converted = pg_config_to_gpt2(config), pg_state_dict_to_gpt2(state_dict)
    if not head:
        return _build(GPT2LMHeadModel, gpt2_config, converted)
    for name in HEAD_CONFIG_FIELDS:
        setattr(gpt2_config, name, getattr(config, name))
    del converted["lm_head.weight"]
    return _build(GPT2_HEADS[next(iter(head)).split(".")[0]], gpt2_config, converted | head)


# -- writing checkpoints -------------------------------------------------------------------------------------


def checkpoint_tokenizer(folder: Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer of checkpoint `folder`, which travels with it, or `None` when it has no tokenizer files.

    Files that do not make a working tokenizer are refused (`data.tokenizer.load_tokenizer`).
    """
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    from ..data.tokenizer import load_tokenizer

    return load_tokenizer(folder)


def _convert(
    load: Callable[[Path], PreTrainedModel],
    src: str | Path,
    dst: str | Path,
    overwrite: bool,
    revision: str | None,
    cache_dir: str | Path | None,
    token: str | bool | None,
) -> Path:
    """Save `load(folder of src)` plus the folder's tokenizer files into `dst`, which appears only once complete.

    Every check comes before the first write. A full disk is a one-line `CommandError`; the half-written copy
    is removed and `dst` left as it was.
    """
    dst = Path(dst)
    check_output_dir(dst, flag="DST", overwrite_flag=None if overwrite else "--overwrite")
    folder = resolve_checkpoint(src, revision, cache_dir, token)
    check_not_an_input(dst, "DST", {"the source checkpoint": folder}, inside=True)
    checkpoint_tokenizer(folder)
    model = load(folder)
    with staged(dst, "folder") as staging:
        try:
            model.save_pretrained(staging)
            for name in SIDE_FILES:
                if (folder / name).is_file():
                    shutil.copyfile(folder / name, staging / name)
        except Exception as err:
            if not is_disk_full(err, staging):
                raise
            raise CommandError(disk_full_message(dst)) from None
    return dst


def convert_gpt2_to_pg(
    src: str | Path,
    dst: str | Path,
    overwrite: bool = False,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
) -> Path:
    """Convert a transformers GPT-2 checkpoint (folder or Hub id) into a pg_gpt2 folder; returns `dst`.

    `dst` gets the weights, a config.json with `auto_map`, the remote-code files, and the tokenizer files
    and generation_config.json of `src`; load it with
    `AutoModelForCausalLM.from_pretrained(dst, trust_remote_code=True)`. A non-empty `dst` is only
    replaced with `overwrite=True`.
    """
    return _convert(convert_gpt2_checkpoint, src, dst, overwrite, revision, cache_dir, token)


def convert_pg_to_gpt2(
    src: str | Path,
    dst: str | Path,
    overwrite: bool = False,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
) -> Path:
    """Convert a pg_gpt2 checkpoint (folder or Hub id) into a native transformers `gpt2` folder; returns `dst`.

    The result has `model_type: gpt2` and no remote code: `GPT2LMHeadModel.from_pretrained(dst)` loads it,
    and so does every tool that supports GPT-2. Tokenizer files and generation_config.json are copied. A
    non-empty `dst` is only replaced with `overwrite=True`.
    """
    return _convert(convert_pg_checkpoint, src, dst, overwrite, revision, cache_dir, token)


__all__ = [
    "checkpoint_tokenizer",
    "convert_gpt2_checkpoint",
    "convert_gpt2_to_pg",
    "convert_pg_checkpoint",
    "convert_pg_to_gpt2",
    "read_state_dict",
    "resolve_checkpoint",
]
