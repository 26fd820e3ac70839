"""The README stays true: its Python snippets run, and its commands name real scripts, flags, files and targets.

The commands themselves are exercised by the other test files (train_tokenizer.py in test_tokenizer.py,
run_clm.py in test_run_clm.py, ...) on small inputs; here we check that what the README tells a user to
type is what those scripts accept.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache

import pytest
from helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def _blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README) if lang == language]


def _commands() -> list[list[str]]:
    """Every shell command in the README's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                # "[--private] [--revision BRANCH]" documents optional flags: check them like the others.
                commands.append(shlex.split(line.replace("[", " ").replace("]", " ")))
    return commands


@cache
def _help(entry: tuple[str, ...]) -> str:
    result = subprocess.run([sys.executable, *entry, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_python_snippets_run(tmp_path):
    code = "\n\n".join(_blocks("python"))
    assert "from_pretrained" in code and "PgGPT2ForCausalLM" in code
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_two_commands_come_first():
    first_block = _blocks("bash")[0]
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "demo"], ["make", "test"]]


def test_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    used = {command[1] for command in _commands() if command[0] == "make"}
    assert used and used <= targets, used - targets
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


@pytest.mark.parametrize(
    "command",
    [c for c in _commands() if c[0] in ("python", "accelerate")],
    ids=lambda c: " ".join(c)[:60],
)
def test_commands_use_existing_scripts_and_flags(command):
    if command[0] == "accelerate":  # accelerate launch --config_file FILE run_clm.py ARGS
        assert command[1] == "launch"
        config = command[command.index("--config_file") + 1]
        assert (ROOT / config).is_file(), config
        script = next(i for i, word in enumerate(command) if word.endswith(".py"))
        command = ["python", *command[script:]]
    if command[1] == "-m":
        entry, args = (command[1], command[2]), command[3:]
    else:
        entry, args = (command[1],), command[2:]
        assert (ROOT / command[1]).is_file(), command[1]
    for word in args:
        if word.endswith((".yaml", ".yml", ".json")) and "/" in word and word.startswith("configs"):
            assert (ROOT / word).is_file(), word
    flags = {word.split("=")[0] for word in args if word.startswith("--")}
    known = set(re.findall(r"--\w+", _help(entry)))
    assert flags <= known, f"{' '.join(entry)} does not accept {sorted(flags - known)}"
