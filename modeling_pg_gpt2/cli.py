"""What every command-line front shares: one-line errors for bad input instead of tracebacks."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Bad input from the user: the message is one line that says what was wrong and how to fix it."""


def run_cli(main: Callable[[], T]) -> T:
    """Run a script's `main()`; a `UserError` prints `error: <message>` on stderr and exits with status 2."""
    try:
        return main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def first_line(err: BaseException) -> str:
    """The first non-blank line of `err`'s message, or its class name when the message is empty.

    Library exceptions often carry several lines (a hint, a traceback excerpt); a `UserError` quotes
    only the first. An exception raised without a message (`ValueError()`) still says what it was.
    """
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__


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
    entries other than those `allowed` accepts (names in `ignore` are never listed). Nothing is created.
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
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise UserError(
            f"{flag} {out} is not empty (holds {shown}); choose another folder or pass {overwrite_flag} "
            "to write there anyway"
        )
    return out
