"""What every command shares: one-line errors for bad input and faults instead of tracebacks.

Exit codes: 0 done (or nothing left to do), 1 a fault the user can act on (full disk, diverged
training), 2 bad input, 130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    pass

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


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of `err`'s chain: what a library's wrapping exceptions were raised for."""
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__
    return err


def few(names: Sequence[str], limit: int = 3) -> str:
    """At most `limit` of `names` for a one-line message: `a, b, c and 4 more`."""
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


__all__ = [
    "CommandError",
    "Interrupted",
    "UserError",
    "command",
    "disk_full_message",
    "few",
    "root_cause",
    "first_line",
    "is_disk_full",
    "run_cli",
]
