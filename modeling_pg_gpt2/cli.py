"""What every command-line front shares: one-line errors for bad input instead of tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Callable
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
