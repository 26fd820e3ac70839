"""Command-line parsing shared by the scripts: `HfArgumentParser` dataclasses plus an optional recipe file.

    >>> parser = make_parser((ModelArguments, TrainingArguments), description=__doc__)  # doctest: +SKIP
    >>> model_args, training_args = parse_arguments(parser, ["recipe.yaml", "--max_steps", "10"])  # doctest: +SKIP

A first argument ending in `.yaml`, `.yml` or `.json` is a recipe: a mapping of the same fields as the
flags. The flags after it override it; a source flag replaces the recipe's whole source, e.g.
`--train_file essays/` drops the recipe's `dataset_name` (see `REPLACES`).

Every mistake is one line, `error: ...` (exit 2): an unknown or abbreviated flag (`--train_fil` is not
`--train_file`: a silent abbreviation would leave a recipe's value in place), a value of the wrong type, and
a number outside its field's declared range (`common.ranges`), checked right after parsing, before a
dataclass, the data or a model is touched.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from ..common.errors import UserError, first_line
from ..common.ranges import RANGE, Range, declared_ranges, range_error

RECIPE_SUFFIXES = (".yaml", ".yml", ".json")

# A flag on the command line -> the recipe fields it replaces: the recipe's corpus (or model) source gives
# way to the one the user names, instead of the two conflicting.
_CORPUS_SOURCE = ("dataset_name", "dataset_config_name", "train_file", "validation_file", "prepared_data")
REPLACES: dict[str, tuple[str, ...]] = {
    "dataset_name": _CORPUS_SOURCE,
    "train_file": _CORPUS_SOURCE,
    "prepared_data": _CORPUS_SOURCE,
    "model_name_or_path": ("config_name",),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """`--help` that keeps the line breaks of the script's docstring and shows every default."""


class ArgumentParser(HfArgumentParser):
    """`HfArgumentParser` whose mistakes are one `UserError` line, with no abbreviated flags, that checks
    every numeric field against its declared `Range` right after parsing (`ranges` maps each field to it)."""

    def __init__(self, dataclass_types: type | Sequence[type], **kwargs: Any) -> None:
        self.ranges: dict[str, tuple[Range, type]] = {}  # field -> (its range, int or float)
        self.recipe_fields: dict[str, Path] = {}  # fields whose value comes from a recipe -> the recipe
        super().__init__(dataclass_types, allow_abbrev=False, **kwargs)

    def _add_dataclass_arguments(self, dtype: Any) -> None:
        self.ranges.update(declared_ranges(dtype))
        super()._add_dataclass_arguments(dtype)

    def _parse_dataclass_field(self, parser: argparse._ActionsContainer, item: dataclasses.Field) -> None:
        if item.name in self.ranges:
            declared, kind = self.ranges[item.name]
            # argparse takes the rest of the metadata as add_argument's keywords: the range is ours alone.
            metadata = {key: value for key, value in item.metadata.items() if key != RANGE}
            metadata["help"] = f"{metadata.get('help', '').rstrip()} Valid: {declared.describe(kind)}.".lstrip()
            item = copy.copy(item)
            item.metadata = types.MappingProxyType(metadata)
        HfArgumentParser._parse_dataclass_field(parser, item)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> tuple[Any, list[str]]:
        namespace, remaining = super().parse_known_args(args, namespace)
        for name, (declared, kind) in self.ranges.items():
            error = range_error(name, getattr(namespace, name, None), declared, kind, self.recipe_fields.get(name))
            if error is not None:
                raise error
        return namespace, remaining

    def error(self, message: str) -> NoReturn:
        """argparse's own errors (an unknown flag, a value of the wrong type) as one line, not usage + message."""
        raise UserError(f"{message.rstrip('.')}; see {self.prog} --help")


def make_parser(dataclass_types: type | Sequence[type], description: str | None = None) -> ArgumentParser:
    """An `ArgumentParser` over `dataclass_types`, with the script's docstring as its description."""
    return ArgumentParser(dataclass_types, description=description, formatter_class=HelpFormatter)


def parse_arguments(parser: HfArgumentParser, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse `argv` (default: `sys.argv[1:]`) into the parser's dataclasses, reading a leading recipe file.

    Returns the dataclass instances in order, then a namespace of any positional arguments the parser
    was given with `add_argument`. A recipe that is not valid YAML/JSON (file, line and column), unknown
    recipe fields, values of the wrong type and invalid combinations are a one-line `UserError`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(RECIPE_SUFFIXES):
        recipe = Path(argv.pop(0))
        values = read_recipe(parser, recipe)
        given = _flags_given(parser, argv)
        replaced = {name for flag in given for name in REPLACES.get(flag, ())} - given
        kept = {key: value for key, value in values.items() if key not in replaced}
        parser.set_defaults(**kept)
        if isinstance(parser, ArgumentParser):
            parser.recipe_fields = {key: recipe for key in kept if key not in given}
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except (ValueError, TypeError) as err:  # a dataclass's __post_init__ refusing a combination of values
        raise UserError(first_line(err)) from None
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    return tuple(parsed)


def given_fields(parser: HfArgumentParser, argv: Sequence[str] | None = None) -> set[str]:
    """The fields the user set, by a flag or a recipe field (what an automatic choice must not override).

    Call it on arguments `parse_arguments` accepted: the recipe, if any, is read again but not checked again.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe: set[str] = set()
    if argv and argv[0].endswith(RECIPE_SUFFIXES):
        recipe = set(yaml.safe_load(Path(argv.pop(0)).read_text(encoding="utf-8")) or {})
    flags = _flags_given(parser, argv)
    replaced = {name for flag in flags for name in REPLACES.get(flag, ())} - flags
    return (recipe - replaced) | flags


def read_recipe(parser: HfArgumentParser, recipe: Path) -> dict[str, Any]:
    """The fields of a recipe file, each checked against the type of its flag."""
    if not recipe.is_file():
        raise UserError(f"recipe {recipe} does not exist.")
    try:
        text = recipe.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"recipe {recipe} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
            "save it as UTF-8."
        ) from None
    except OSError as err:
        raise UserError(f"cannot read recipe {recipe}: {err.strerror or first_line(err)}.") from None
    try:
        values = yaml.safe_load(text) or {}  # JSON is YAML too
        lines = _key_lines(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or first_line(err)
        raise UserError(f"recipe {recipe}{where}: not valid YAML/JSON: {problem}") from None
    if not isinstance(values, dict):
        raise UserError(f"recipe {recipe} must be a mapping of field: value.")
    actions = {action.dest: action for action in parser._actions}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise UserError(f"recipe {recipe}: unknown field(s) {', '.join(unknown)}; see --help for the fields.")
    # The declared types: HfArgumentParser replaces a field's `dict | str` type by `str` in place.
    annotations = {
        name: str(annotation)
        for dtype in parser.dataclass_types
        for cls in reversed(dtype.__mro__)
        for name, annotation in vars(cls).get("__annotations__", {}).items()
    }
    for key, value in values.items():
        problem = _type_problem(value, actions[key], annotations.get(key, ""))
        if problem is not None:
            line = f", line {lines[key]}" if key in lines else ""
            raise UserError(f"recipe {recipe}{line}: {key} must be {problem}, got {value!r}.")
        if isinstance(value, str) and actions[key].nargs in ("+", "*"):
            values[key] = [value]  # `eval_tasks: mc.jsonl` is a list of one file, not of its characters
    return values


def _key_lines(text: str) -> dict[str, int]:
    """The line (1-based) of each top-level key of a YAML/JSON mapping."""
    node = yaml.compose(text)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {key.value: key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)}


def _type_problem(value: Any, action: argparse.Action, annotation: str) -> str | None:
    """What a recipe value for `action` must be, or `None` when `value` is acceptable.

    argparse converts string defaults with the flag's type but takes any other default as it is, so a
    YAML `2.5` for an int flag would reach the Trainer unchecked.
    """
    if value is None or isinstance(value, str) and action.type in (None, str):
        return None
    if isinstance(value, dict):
        return None if "dict" in annotation else _kind(action)
    if isinstance(value, list):
        return None if action.nargs in ("+", "*") or "list" in annotation else _kind(action)
    if action.type is int:
        ok = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, str) and _converts(int, value)
    elif action.type is float:
        ok = not isinstance(value, bool) and (isinstance(value, int | float) or _converts(float, value))
    elif action.type is string_to_bool:
        ok = isinstance(value, bool) or isinstance(value, str) and _converts(string_to_bool, value)
    elif action.choices:
        ok = str(value) in map(str, action.choices)
    elif action.type is str:
        ok = isinstance(value, int | float | bool)  # written as a string on the command line
    else:
        ok = True  # the few exotic flag types (e.g. ParallelismConfig) are left to their own checks
    return None if ok else _kind(action)


def _converts(convert: Any, value: str) -> bool:
    try:
        convert(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return False
    return True


def _kind(action: argparse.Action) -> str:
    if action.choices:
        return f"one of {', '.join(map(str, action.choices))}"
    kinds = {int: "an integer", float: "a number", string_to_bool: "true or false", str: "a string"}
    return kinds.get(action.type, "a single value")


def _flags_given(parser: HfArgumentParser, argv: Sequence[str]) -> set[str]:
    """The fields that `argv` sets with their exact flag (`--name value` or `--name=value`)."""
    options = {option: action.dest for action in parser._actions for option in action.option_strings}
    return {options[token.split("=", 1)[0]] for token in argv if token.split("=", 1)[0] in options}


__all__ = [
    "REPLACES",
    "ArgumentParser",
    "HelpFormatter",
    "given_fields",
    "make_parser",
    "parse_arguments",
    "read_recipe",
]
