"""The installed commands (`[project.scripts]`) are the scripts' own functions, and they run."""

from __future__ import annotations

import subprocess
import sysconfig
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest
from helpers import ROOT

from modeling_pg_gpt2.cli import commands, serve

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

DECLARED = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
SCRIPTS = {
    "run_clm.py": commands.train,
    "train_tokenizer.py": commands.tokenizer,
    "generate.py": commands.generate,
    "evaluate_lm.py": commands.evaluate,
    "push_to_hub.py": commands.push,
    "prepare_data.py": commands.prepare,
}


def test_every_script_has_a_command_and_every_command_loads() -> None:
    targets = {name: EntryPoint(name, value, "console_scripts").load() for name, value in DECLARED.items()}
    assert all(callable(target) for target in targets.values())
    assert set(targets.values()) == {*SCRIPTS.values(), commands.convert, serve.main}  # serve: transformers serve
    for script, function in SCRIPTS.items():  # the script is a front that calls the command's function
        assert f"from modeling_pg_gpt2.cli.commands import {function.__name__}" in (ROOT / script).read_text()


def test_the_installed_entry_points_are_the_declared_ones() -> None:
    installed = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.name.startswith("pg-gpt2-")}
    assert installed == DECLARED, "the installed package is older than pyproject.toml: run `pip install -e .`"
    for ep in entry_points(group="console_scripts", name="pg-gpt2-train"):
        assert ep.load() is commands.train


@pytest.mark.slow
def test_an_installed_command_answers_help() -> None:
    program = Path(sysconfig.get_path("scripts")) / "pg-gpt2-generate"
    if not program.is_file():
        pytest.skip(f"{program} is not installed (pip install -e .)")
    result = subprocess.run([str(program), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Generate text with a trained model" in result.stdout and "--max_new_tokens" in result.stdout
