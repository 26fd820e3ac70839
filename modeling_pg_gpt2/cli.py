"""What every command-line front shares: one-line errors for bad input and faults instead of tracebacks, and
the log lines a run prints ([`setup_logging`]).

Exit codes: 0 done (or nothing left to do), 1 a fault the user can act on (full disk, diverged
training), 2 bad input, 130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import errno
import functools
import glob
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from transformers import TrainingArguments

T = TypeVar("T")

# Free space below which a failed write is taken for a full disk: torch.save reports a full disk as
# "unexpected pos ..." with no errno, and the failed write has used up what was left.
FULL_DISK_BYTES = 64 * 2**20


class CommandError(Exception):
    """A failure the user can act on: the message is one line that says what happened and what to do."""

    exit_code = 1


class UserError(CommandError):
    """Bad input from the user: the message is one line that says what was wrong and how to fix it."""

    exit_code = 2


class Interrupted(CommandError):
    """The user pressed Ctrl-C; the message says what was kept (e.g. the checkpoint a re-run resumes from)."""

    exit_code = 130


def run_cli(main: Callable[[], T]) -> T:
    """Run a script's `main()`, turning its failures into one line on stderr and an exit status.

    A `CommandError` prints `error: <message>` and exits with its `exit_code` (2 for a `UserError`); a
    Ctrl-C that nothing handled exits with 130; a full disk anywhere exits with 1.
    """
    try:
        return main()
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        raise SystemExit(Interrupted.exit_code) from None
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {disk_full_message(err.filename or 'a file')}", file=sys.stderr)
        raise SystemExit(CommandError.exit_code) from None


def command(main: Callable[[Sequence[str] | None], object]) -> Callable[[Sequence[str] | None], None]:
    """Make `main(argv)` a console-script entry point: it runs under `run_cli` and returns nothing.

    `[project.scripts]` and the top-level scripts call the result with no argument (`sys.argv[1:]`); a
    test passes `argv`. Returning `None` matters: a console script exits with what its function returns.
    """

    @functools.wraps(main)
    def entry_point(argv: Sequence[str] | None = None) -> None:
        run_cli(lambda: main(argv))

    return entry_point


def disk_full_message(target: str | os.PathLike, resume_from: str | os.PathLike | None = None) -> str:
    """The one line for a write to `target` that failed on a full disk; `resume_from` is what a re-run resumes."""
    then = f" to resume from {resume_from}" if resume_from else ""
    return f"no space left on device while writing {target}; free space and run the same command again{then}"


def is_disk_full(err: BaseException, folder: str | os.PathLike) -> bool:
    """Whether `err`, raised while writing into `folder`, comes from a full disk (or an exhausted quota).

    Python and safetensors name the cause (errno 28, "No space left on device"); torch.save does not
    (`RuntimeError: ... unexpected pos`), so a write error with almost no space left counts too.
    """
    chain: BaseException | None = err
    while chain is not None:
        if isinstance(chain, OSError) and chain.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(sign in str(chain) for sign in ("No space left on device", "os error 28", "Disk quota exceeded")):
            return True
        chain = chain.__cause__ or chain.__context__
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free < FULL_DISK_BYTES
    except OSError:
        return False


def first_line(err: BaseException, named: bool = False) -> str:
    """The first non-blank line of `err`'s message, or its class name when the message is empty.

    Library exceptions often carry several lines (a hint, a traceback excerpt); a `UserError` quotes
    only the first. An exception raised without a message (`ValueError()`) still says what it was.
    `named=True` puts the class name first (`ConnectError: ...`), for errors whose message alone is vague.
    """
    name = type(err).__name__
    for line in str(err).splitlines():
        if line.strip():
            return f"{name}: {line.strip()}" if named else line.strip()
    return name


def few(names: Sequence[str], limit: int = 3) -> str:
    """At most `limit` of `names` for a one-line message: `a, b, c and 4 more`."""
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


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
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {out} cannot be created: {existing} is a file")
    try:  # a real write: access() says yes to root on a read-only file system or an immutable folder
        with tempfile.TemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(f"{flag} {out} is not writable ({existing}: {reason}); choose another folder") from None
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


def setup_logging(args: TrainingArguments) -> None:
    """Our INFO lines on stderr (main process); transformers and datasets at `--log_level` (warnings by default)."""
    import datasets
    import transformers

    package_logger = logging.getLogger(__name__.split(".")[0])
    if not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        package_logger.addHandler(handler)
        package_logger.propagate = False
    package_logger.setLevel(logging.INFO if args.should_log else logging.WARNING)
    level = args.get_process_log_level()
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(level)


__all__ = [
    "CommandError",
    "Interrupted",
    "UserError",
    "check_not_an_input",
    "check_output_dir",
    "command",
    "disk_full_message",
    "few",
    "first_line",
    "is_disk_full",
    "run_cli",
    "setup_logging",
]
