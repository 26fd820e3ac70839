"""What a pg-gpt2 output folder holds (the file names every module that writes, reads or uploads one shares),
and `staged`, the one way the converters and exporters write a folder or file that appears only when complete.

run_clm.py writes the folder, the converters and exporters read it and copy its side files, push_to_hub.py
chooses what to upload from it, the model card quotes it. A name lives here once, so the modules cannot
disagree about it, and none of them has to import another just for a file name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
# Top-level files that describe the model besides its weights (and remote code).
MODEL_FILES = (CONFIG_FILE, GENERATION_CONFIG_FILE)

# The weights as save_pretrained writes them (one file, or shards and their index).
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
# Where a checkpoint's weights may be, in order of preference: safetensors first, PyTorch pickles last.
WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# Every file a transformers tokenizer may be saved as.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
# Files a converted or exported copy of a checkpoint carries over unchanged, when present.
SIDE_FILES = (*TOKENIZER_FILES, GENERATION_CONFIG_FILE)

# What run_clm.py reports about a run: final metrics, how it ran, the model card and the curves.
METRICS_FILE = "metrics.json"
TRAINING_INFO_FILE = "training_info.json"
MODEL_CARD_FILE = "README.md"
REPORT_PATTERNS = (METRICS_FILE, "*.png", MODEL_CARD_FILE)


@contextlib.contextmanager
def staged(dst: Path, kind: str) -> Iterator[Path]:
    """Yield a temporary path beside `dst` to write into; it replaces `dst` only when the block succeeds.

    kind: "folder" (the path is an empty folder) or "file". The temporary path is in `dst`'s folder, so
    the final rename stays on one file system and is atomic for a file.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if kind == "folder":
        staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
        os.close(handle)
        staging = Path(name)
    try:
        yield staging
        if kind == "folder":
            if dst.exists():
                shutil.rmtree(dst)
            staging.rename(dst)
        else:
            os.replace(staging, dst)
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)


__all__ = [
    "CONFIG_FILE",
    "GENERATION_CONFIG_FILE",
    "METRICS_FILE",
    "MODEL_CARD_FILE",
    "MODEL_FILES",
    "REPORT_PATTERNS",
    "SIDE_FILES",
    "TOKENIZER_FILES",
    "TRAINING_INFO_FILE",
    "WEIGHTS_FILES",
    "WEIGHT_PATTERNS",
    "staged",
]
