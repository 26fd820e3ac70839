"""Every flag of every command, walked: each numeric flag declares its range, and no bad value gets past parsing.

The test reads the flags from the commands' own parsers (`cli.commands.parser`), so a flag added to any
argument dataclass (or to transformers' `TrainingArguments`, which run_clm.py exposes) is covered without a
new row. Each numeric flag is fed 0, -1, a huge value (past 64 bits for an int, infinity for a float), NaN
and a wrong type; each flag with choices, and each true/false flag, a value it does not take. A value the
flag's declared `Range` refuses, and every value of the wrong type, must end the real command, run in this
process, with exit 2 and one `error:` line naming the flag, before any file is touched; a value the range
takes must pass the check. Nothing here loads a model or data: the whole walk takes seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest
from helpers import folder_digest, write_corpus
from transformers.hf_argparser import string_to_bool

from modeling_pg_gpt2.cli import commands

# A command that would do real work (train, write, load a model) were its flags good; {name}s are paths.
COMMANDS = {
    "train": ("--train_file", "{corpus}", "--tokenizer_name", "{tok}", "--config_name", "tiny", "--max_steps", "2",
              "--output_dir", "{out}"),
    "tokenizer": ("--train_file", "{corpus}", "--vocab_size", "300", "--output_dir", "{out}"),
    "prepare": ("--train_file", "{corpus}", "--tokenizer_name", "{tok}", "--block_size", "16",
                "--output_dir", "{out}"),
    "generate": ("{model}", "ROMEO:"),
    "evaluate": ("{model}", "--task", "perplexity", "--data_file", "{corpus}/act00.txt",
                 "--output_file", "{out}/r.json"),
    "push": ("{model}", "me/tiny", "--dry_run"),
    "convert": ("{model}", "{out}"),
}  # fmt: skip
BAD_NUMBERS = ("0", "-1", "huge", "nan", "abc")
HUGE = {int: str(2**63), float: "1e999"}  # past what a 64-bit int holds; infinity


def flags(name: str) -> list[argparse.Action]:
    """The command's options (not its positional arguments or --help), one action per field."""
    seen, actions = set(), []
    for action in commands.parser(name)._actions:
        if action.option_strings and action.dest != "help" and action.dest not in seen:
            seen.add(action.dest)
            actions.append(action)
    return actions


def is_numeric(action: argparse.Action) -> bool:
    return action.type in (int, float) and not action.choices


def cases() -> list:
    """(command, flag, value) for every flag of every command that has a value to get wrong."""
    params = []
    for name in COMMANDS:
        for action in flags(name):
            if is_numeric(action):
                values = [HUGE[action.type] if value == "huge" else value for value in BAD_NUMBERS]
            elif action.choices:
                values = ["0", "-1", "bogus"]
            elif action.type is string_to_bool:
                values = ["-1", "maybe"]
            else:
                continue  # text: a path, a name, a Hub id
            for value in values:
                params.append(pytest.param(name, action.dest, value, id=f"{name} --{action.dest} {value}"))
    return params


def expected_to_pass(name: str, dest: str, value: str) -> bool:
    """Whether the flag's declaration takes `value`: its range (numbers), its choices, or true/false."""
    parser = commands.parser(name)
    action = next(a for a in parser._actions if a.dest == dest and a.option_strings)
    try:
        converted = action.type(value) if action.type else value
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return False
    if action.choices:
        return converted in action.choices
    if dest in parser.ranges:
        declared, kind = parser.ranges[dest]
        return declared.accepts(converted)
    return True


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer_dir) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ranges")
    write_corpus(root / "corpus")
    return {"corpus": str(root / "corpus"), "tok": str(tokenizer_dir), "model": str(tokenizer_dir), "root": root}


def run_command(name: str, argv: list[str]) -> tuple[int, str]:
    """The command run in this process as its script would run it: exit code and stderr."""
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            getattr(commands, name)(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, err.getvalue()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_numeric_flag_declares_a_range_its_default_is_in(name):
    parser = commands.parser(name)
    numeric = [action for action in flags(name) if is_numeric(action)]
    assert numeric or name in ("push", "convert"), f"{name}: no numeric flag; is the walk reading the right parser?"
    for action in numeric:
        assert action.dest in parser.ranges, f"{name} --{action.dest} ({action.type.__name__}) declares no range"
        declared, _ = parser.ranges[action.dest]
        assert action.default is None or declared.accepts(action.default), f"--{action.dest}'s default is refused"
        assert "Valid: " in action.help, f"--{action.dest}'s --help does not show its range"


def test_the_walk_covers_every_command_and_transformers_flags():
    walked = {(param.values[0], param.values[1]) for param in cases()}
    assert {name for name, _ in walked} == set(COMMANDS)
    for flag in (
        "learning_rate",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "seed",
        "max_grad_norm",
        "warmup_steps",
        "lr_scheduler_type",
        "cpu_threads",
        "split_seed",
        "max_train_samples",
        "max_eval_samples",
        "early_stopping_patience",
        "max_train_minutes",
    ):
        assert ("train", flag) in walked, flag  # fmt: skip
    for name, flag in (
        ("generate", "seed"),
        ("evaluate", "max_examples"),
        ("evaluate", "stride"),
        ("evaluate", "max_length"),
        ("convert", "to"),
        ("convert", "dtype"),
        ("push", "dry_run"),
    ):
        assert (name, flag) in walked, (name, flag)  # fmt: skip


@pytest.mark.parametrize(("name", "dest", "value"), cases())
def test_a_bad_value_of_any_flag_is_one_line_before_any_work(name, dest, value, workspace):
    out = workspace["root"] / f"out-{name}"
    argv = [*(arg.format(**workspace, out=out) for arg in COMMANDS[name]), f"--{dest}", value]
    if expected_to_pass(name, dest, value):
        commands.parser(name).parse_known_args(argv)  # the range check passes (no UserError)
        return
    before = folder_digest(workspace["root"])
    code, stderr = run_command(name, argv)
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert f"--{dest}" in lines[0], lines[0]
    assert not out.exists() and folder_digest(workspace["root"]) == before


def test_a_recipe_value_out_of_range_names_the_recipe(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("dataset_name: shakespeare\nlearning_rate: -0.001\n", encoding="utf-8")
    code, stderr = run_command("train", [str(recipe), "--output_dir", str(tmp_path / "out")])
    assert code == 2
    assert stderr.strip().splitlines() == [f"error: recipe {recipe}: learning_rate must be a number > 0, got -0.001."]
    code, stderr = run_command("train", [str(recipe), "--learning_rate", "nan", "--output_dir", str(tmp_path / "o")])
    assert stderr.strip().splitlines() == ["error: --learning_rate must be a number > 0, got nan."]
