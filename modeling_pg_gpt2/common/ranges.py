"""The values a numeric flag accepts, declared next to its field and checked before any work.

Every `int` and `float` field of the commands' argument dataclasses carries a `Range` in its metadata
(`field(default=8, metadata={"help": ..., RANGE: at_least(1)})`); `cli.arguments` checks every one right
after parsing, before a dataclass (or transformers' `TrainingArguments.__post_init__`) sees the value, and
says which flag is wrong in one line. transformers' own fields, whose declarations are not ours, are ranged
by name (`CLMTrainingArguments.inherited_ranges`).

    >>> at_least(1).problem(0)
    'an integer >= 1'
    >>> at_least(1).problem(3) is None
    True
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from .errors import UserError

RANGE = "range"
"""The field-metadata key of a field's `Range` (`cli.arguments` removes it before argparse sees the metadata)."""

INT64_MAX = 2**63 - 1  # torch and numpy hold counts and ids in 64 bits: larger ints overflow deep inside
SEED_MAX = 2**32 - 1  # numpy's seeds (transformers.set_seed seeds numpy too)


@dataclass(frozen=True)
class Range:
    """`low <= value <= high` (ends excluded with `above`/`below`), or one of the `also` values.

    Floats must also be finite (`inf` and `nan` are never a setting); ints must fit 64 bits. `note` says
    what an `also` value means, e.g. `-1: train --num_train_epochs epochs`.
    """

    low: float | None = None
    high: float | None = None
    above: bool = False  # `low` itself is excluded
    below: bool = False  # `high` itself is excluded
    also: tuple[int, ...] = ()
    note: str = ""

    def accepts(self, value: int | float) -> bool:
        """Whether `value` is in the range."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if value in self.also:
            return True
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
            return False
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or (value < self.high if self.below else value <= self.high)

    def problem(self, value: int | float, kind: type = int) -> str | None:
        """`None` when `value` is in the range, else what the value must be (`an integer >= 1`)."""
        return None if self.accepts(value) else self.describe(kind)

    def describe(self, kind: type = int) -> str:
        """The range in words, for a field of type `kind` (`int` or `float`)."""
        noun = "an integer" if kind is int else "a number"
        low = None if self.low is None else (">" if self.above else ">=", _number(self.low))
        high = None if self.high is None else ("<" if self.below else "<=", _number(self.high))
        if low and high and not self.above and not self.below:
            words = f"{noun} from {low[1]} to {high[1]}"
        elif low and high:
            words = f"{noun} in {'(' if self.above else '['}{low[1]}, {high[1]}{')' if self.below else ']'}"
        elif low or high:
            words = f"{noun} {' '.join(low or high)}"
        else:
            words = "a finite number" if kind is float else noun
        if self.also:
            words += f", or {' or '.join(map(str, self.also))}"
        return words + (f" ({self.note})" if self.note else "")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def at_least(low: float, **kwargs) -> Range:
    """`value >= low`."""
    return Range(low=low, **kwargs)


def positive() -> Range:
    """`value > 0` (a float) or `value >= 1` (an int: the same set)."""
    return Range(low=0, above=True)


def declared_ranges(dtype: type) -> dict[str, tuple[Range, type]]:
    """Each ranged field of the dataclass `dtype`: its `Range` and its kind (`int` or `float`)."""
    hints = typing.get_type_hints(dtype)
    inherited = getattr(dtype, "inherited_ranges", {})
    ranges = {}
    for item in dataclasses.fields(dtype):
        declared = item.metadata.get(RANGE, inherited.get(item.name))
        if declared is not None:
            hint = hints[item.name]
            ranges[item.name] = (declared, int if hint is int or int in typing.get_args(hint) else float)
    return ranges


def range_error(name: str, value: Any, declared: Range, kind: type, source: str | None = None) -> UserError | None:
    """The one-line error for field `name` set to `value` (by `--name`, or by a recipe `source`), or `None`."""
    if value is None:  # not set: the field's own default behaviour
        return None
    problem = declared.problem(value, kind)
    if problem is None:
        return None
    where = f"recipe {source}: {name}" if source else f"--{name}"
    return UserError(f"{where} must be {problem}, got {value}.")


def check_ranges(args: Any) -> None:
    """Refuse a dataclass of arguments built in code (not parsed) whose field is outside its declared range.

    The commands check the same declarations right after parsing (`cli.arguments`); this is for the functions
    a script or a notebook calls with arguments it made itself.
    """
    for name, (declared, kind) in declared_ranges(type(args)).items():
        error = range_error(name, getattr(args, name), declared, kind)
        if error is not None:
            raise error


SEED = Range(0, SEED_MAX)
FRACTION = Range(0, 1, below=True)  # [0, 1): a probability that must leave something (betas, smoothing)


__all__ = [
    "FRACTION",
    "INT64_MAX",
    "RANGE",
    "SEED",
    "SEED_MAX",
    "Range",
    "at_least",
    "check_ranges",
    "declared_ranges",
    "positive",
    "range_error",
]
