"""What a pg-gpt2 output folder holds (the file names every module that writes, reads or uploads one shares),
and `staged`, the one way the converters and exporters write a folder or file that appears only when complete.

run_clm.py writes the folder, the converters and exporters read it and copy its side files, push_to_hub.py
chooses what to upload from it, the model card quotes it. A name lives here once, so the modules cannot
disagree about it, and none of them has to import another just for a file name.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import CommandError, UserError, disk_full_message, few, first_line, is_disk_full

logger = logging.getLogger(__name__)

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

# A tokenizer's vocabulary: `tokenizer.json` (what save_pretrained writes), or GPT-2's original two files.
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILES = ("vocab.json", "merges.txt")
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Every file a transformers tokenizer may be saved as (without the vocabulary above, they make no tokenizer).
TOKENIZER_FILES = (
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    "special_tokens_map.json",
    "added_tokens.json",
    *VOCAB_FILES,
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
# What the automatic recipe chose (read again when the run resumes) and the tokenizer it trained.
RECIPE_FILE = "recipe.json"
RUN_TOKENIZER_DIR = "tokenizer"

# Held (flock) by the run writing to the folder; records its pid and host for whoever finds it taken.
LOCK_FILE = ".run.lock"


def weights_problem(folder: str | os.PathLike) -> str | None:
    """Why the safetensors weights in `folder` cannot be read (`model.safetensors is truncated or corrupt`:
    a copy or a save cut off), or `None`. Reads only each file's header, which names the bytes it needs."""
    from safetensors import safe_open

    for path in sorted(Path(folder).rglob("*.safetensors")):
        try:
            with safe_open(path, framework="pt"):
                pass
        except Exception:  # safetensors raises its own SafetensorError, or OSError
            return f"{path.relative_to(folder).as_posix()} is truncated or corrupt"
    return None


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The `config.json` of model folder `folder` as it is written; a `UserError` if it has none or it is no JSON
    object."""
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder} has no {CONFIG_FILE}: it is not a saved transformers model") from None
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {first_line(err)}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} holds no JSON object, so it is no model config")
    return config


@contextlib.contextmanager
def staged(dst: Path, kind: str) -> Iterator[Path]:
    """Yield a temporary path beside `dst` to write into; it replaces `dst` only when the block succeeds.

    kind: "folder" (the path is an empty folder) or "file". The temporary path is in `dst`'s folder, so
    the final rename stays on one file system and is atomic for a file. It gets the permissions of a
    folder or file made the ordinary way (the umask's), not the owner-only ones of mkdtemp and mkstemp: a
    prepared folder on shared storage must be readable by the other nodes' users, as the umask says.
    A full disk while the block writes is one line (a `CommandError` that names `dst`); `dst` is left as it
    was and the partial copy removed.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if kind == "folder":
        staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
        os.chmod(staging, 0o777 & ~current_umask())
    else:
        handle, name = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
        os.fchmod(handle, 0o666 & ~current_umask())
        os.close(handle)
        staging = Path(name)
    try:
        try:
            yield staging
        except Exception as err:  # numpy's tofile, for one, reports a full disk without an errno
            if isinstance(err, CommandError) or not is_disk_full(err, dst.parent):
                raise
            raise CommandError(disk_full_message(dst)) from None
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


def current_umask() -> int:
    """The process's umask, read without changing it (Linux's /proc), or by setting and restoring it elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def output_lock(output_dir: str | os.PathLike):
    """Hold `output_dir` for one run (training, preparing data): a second one on the folder is refused at once.

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


def check_output_dir(
    path: str | os.PathLike,
    flag: str = "--output_dir",
    overwrite_flag: str | None = "--overwrite_output_dir",
    allowed: Callable[[Path], bool] | None = None,
    ignore: Iterable[str] = (),
) -> Path:
    """Check before any work that `path` can become the output folder; returns it as a `Path`.

    Refused with a one-line `UserError`: a path that is a file, a folder that cannot be created or
    written to, and, unless `overwrite_flag` is `None` (the caller passed it), a folder holding
    entries other than those `allowed` accepts (names in `ignore` are never listed). Nothing is left behind.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file, not a folder; choose a folder")
    _check_writable(out, out, flag, "choose another folder")
    if overwrite_flag is None or not out.is_dir():
        return out
    ignored = set(ignore)
    others = sorted(p.name for p in out.iterdir() if p.name not in ignored and not (allowed and allowed(p)))
    if others:
        raise UserError(
            f"{flag} {out} is not empty (holds {few(others)}); choose another folder or pass {overwrite_flag} "
            "to write there anyway"
        )
    return out


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Check before any work that `path` can be written as a file: not a folder, in a folder that can be
    created and written to. Returns it as a `Path`; a one-line `UserError` otherwise."""
    out = Path(path)
    if out.is_dir():
        raise UserError(f"{flag} {out} is a folder; name a file (e.g. {out / 'results.json'})")
    _check_writable(out, out.parent, flag, "choose another place")
    return out


def _check_writable(out: Path, folder: Path, flag: str, hint: str) -> None:
    """Refuse `out` when `folder` (its own or its parent) cannot be created (below a file) or written to."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {out} cannot be created: {existing} is a file")
    try:  # a real write: access() says yes to root on a read-only file system or an immutable folder
        with tempfile.TemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(f"{flag} {out} is not writable ({existing}: {reason}); {hint}") from None


def check_not_an_input(
    path: str | os.PathLike, flag: str, inputs: Mapping[str, str | os.PathLike | None], inside: bool = False
) -> None:
    """Refuse an output `path` that is one of the command's `inputs` or holds one (or, unless `inside`, lies
    inside an input folder).

    `inputs` maps a flag (`--train_file`) to its value: a file, a folder or a glob; values that name no
    local path (a Hub id, `shakespeare`) are skipped. Replacing the output would delete such an input, and an
    output inside a corpus folder would be read back as part of the corpus by the next run.
    """
    target = Path(path).expanduser().resolve()
    for name, value in inputs.items():
        if value is None:
            continue
        spec = os.path.expanduser(str(value))
        sources = [Path(spec)] if os.path.exists(spec) else [Path(p) for p in glob.glob(spec, recursive=True)]
        for source in (s.resolve() for s in sources):
            if target == source or target in source.parents:
                raise UserError(f"{flag} {path} would replace {name} {value}; choose another folder")
            if not inside and source.is_dir() and source in target.parents:
                raise UserError(f"{flag} {path} is inside {name} {value}; choose a folder outside it")


__all__ = [
    "check_not_an_input",
    "check_output_dir",
    "check_output_file",
    "current_umask",
    "LOCK_FILE",
    "CONFIG_FILE",
    "GENERATION_CONFIG_FILE",
    "METRICS_FILE",
    "MODEL_CARD_FILE",
    "MODEL_FILES",
    "RECIPE_FILE",
    "REPORT_PATTERNS",
    "RUN_TOKENIZER_DIR",
    "SIDE_FILES",
    "TOKENIZER_CONFIG_FILE",
    "TOKENIZER_FILE",
    "TOKENIZER_FILES",
    "TRAINING_INFO_FILE",
    "VOCAB_FILES",
    "WEIGHTS_FILES",
    "WEIGHT_PATTERNS",
    "output_lock",
    "read_config",
    "staged",
    "weights_problem",
]
