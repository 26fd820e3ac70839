"""Command-line parsing shared by the scripts: `HfArgumentParser` dataclasses plus an optional recipe file.

    >>> parser = make_parser((ModelArguments, TrainingArguments), description=__doc__)  # doctest: +SKIP
    >>> model_args, training_args = parse_arguments(parser, ["recipe.yaml", "--max_steps", "10"])  # doctest: +SKIP

A first argument ending in `.yaml`, `.yml` or `.json` is a recipe: a mapping of the same fields as the
flags. The flags after it override it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from .cli import UserError, first_line

RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """`--help` that keeps the line breaks of the script's docstring and shows every default."""


def make_parser(dataclass_types: type | Sequence[type], description: str | None = None) -> HfArgumentParser:
    """An `HfArgumentParser` over `dataclass_types`, with the script's docstring as its description."""
    return HfArgumentParser(dataclass_types, description=description, formatter_class=HelpFormatter)


def parse_arguments(parser: HfArgumentParser, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse `argv` (default: `sys.argv[1:]`) into the parser's dataclasses, reading a leading recipe file.

    Returns the dataclass instances in order, then a namespace of any positional arguments the parser
    was given with `add_argument`. Unknown recipe fields and invalid values are a `UserError`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(RECIPE_SUFFIXES):
        recipe = Path(argv.pop(0))
        if not recipe.is_file():
            raise UserError(f"recipe {recipe} does not exist.")
        try:
            values = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}  # JSON is YAML too
        except yaml.YAMLError as err:
            raise UserError(f"recipe {recipe} is not valid YAML/JSON: {first_line(err)}") from None
        if not isinstance(values, dict):
            raise UserError(f"recipe {recipe} must be a mapping of field: value.")
        unknown = sorted(set(values) - {action.dest for action in parser._actions})
        if unknown:
            raise UserError(f"recipe {recipe}: unknown field(s) {', '.join(unknown)}; see --help for the fields.")
        parser.set_defaults(**values)
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except (ValueError, TypeError) as err:  # a dataclass's __post_init__ refusing a combination of values
        raise UserError(first_line(err)) from None


__all__ = ["HelpFormatter", "make_parser", "parse_arguments"]
