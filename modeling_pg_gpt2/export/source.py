"""What the ONNX and GGUF exports share: reading the source checkpoint and writing DST all at once.

Both exports take a pg_gpt2 checkpoint (a `run_clm.py` output folder, a Hub id) or a transformers GPT-2
one (converted on the fly, see `convert.py`) and refuse anything else in one line, including what the
loader of a model for use refuses (`generation.loader.check_model`: NaN weights, a tokenizer larger than
the vocabulary): an export is a model for use elsewhere. Their output appears
under its final name only once complete, so an interrupted or failed export never leaves a half-written
DST behind (nor destroys the one it was asked to replace before the new one is ready).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..common.errors import UserError
from ..common.outputs import SIDE_FILES, check_not_an_input, read_config
from ..generation.loader import check_model
from ..modeling_pg_gpt2 import PgGPT2ForCausalLM
from .convert import checkpoint_tokenizer, convert_gpt2_checkpoint, convert_pg_checkpoint, resolve_checkpoint
from .layout import gpt2_config_to_pg, gpt2_state_dict_to_pg

# The checkpoints the exports read: pg_gpt2's own, and transformers' GPT-2 (same function, other layout).
SOURCE_TYPES = ("pg_gpt2", "gpt2")


def source_model_type(folder: Path, what: str) -> str:
    """The `model_type` of checkpoint `folder`; a `UserError` unless it is one of `SOURCE_TYPES`."""
    found = read_config(folder).get("model_type")
    if found not in SOURCE_TYPES:
        raise UserError(
            f"{folder} holds a {found!r} model; {what} exports pg_gpt2 checkpoints (run_clm.py outputs) "
            "and transformers GPT-2 checkpoints only"
        )
    return found


def load_source(src: str | Path, what: str, revision: str | None = None) -> tuple[PgGPT2ForCausalLM, Path]:
    """(the model of `src` as a `PgGPT2ForCausalLM` in eval mode and fp32, the local checkpoint folder).

    `src` is a pg_gpt2 or a GPT-2 checkpoint, a folder or a Hub id; `what` names the export in errors.
    Both kinds go through the converter's checks (config and weights belong together) and the loader's
    (`generation.loader.check_model`), so a broken checkpoint is a `UserError` here rather than a failure
    halfway through the export or in the runtime that reads it.
    """
    folder = resolve_checkpoint(src, revision)
    tokenizer = checkpoint_tokenizer(folder)
    if source_model_type(folder, what) == "gpt2":
        model = convert_gpt2_checkpoint(folder)
    else:
        # The converter validates a pg_gpt2 checkpoint on its way to GPT-2's layout; coming back is exact
        # (transposes and a copy), which keeps one reader for both kinds of checkpoint.
        gpt2 = convert_pg_checkpoint(folder)
        config = gpt2_config_to_pg(gpt2.config)
        model = PgGPT2ForCausalLM(config)
        model.load_state_dict(gpt2_state_dict_to_pg(gpt2.state_dict(), config), strict=True)
    check_model(model, tokenizer, str(src))
    return model.float().eval(), folder


def check_destination(dst: Path, folder: Path, overwrite: bool, kind: str) -> None:
    """Refuse a DST that is the source or holds it, that exists without `overwrite`, or of the wrong `kind`.

    kind: "folder" or "file".
    """
    if dst.exists():
        if kind == "folder" and not dst.is_dir():
            raise UserError(f"{dst} is a file; DST must be a folder")
        if kind == "file" and dst.is_dir():
            raise UserError(f"{dst} is a folder; DST must be a file name")
        if not overwrite and (kind == "file" or any(dst.iterdir())):
            raise UserError(f"{dst} exists; choose another name or pass --overwrite to replace it")
    check_not_an_input(dst, "DST", {"the source checkpoint": folder}, inside=True)


def copy_side_files(folder: Path, target: Path) -> None:
    """Copy the tokenizer files and generation_config.json of checkpoint `folder` into `target`."""
    for name in SIDE_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, target / name)


__all__ = [
    "SOURCE_TYPES",
    "check_destination",
    "copy_side_files",
    "load_source",
]
