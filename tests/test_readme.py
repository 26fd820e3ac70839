"""The README and the docs stay true: their Python snippets run, their commands name real scripts, flags, files,
make targets and pytest markers, their links and anchors lead somewhere, and the figures the README quotes are in
bench/RESULTS.md.

The pages: README.md, docs/*.md, bench/README.md and CONTRIBUTING.md. The commands themselves are exercised by the
other test files (train_tokenizer.py in tests/data/test_tokenizer.py, run_clm.py in tests/training/test_run_clm.py,
...) on small inputs; here we check that what a page tells a user to type is what those scripts accept. Commands
that need a GPU, several nodes or the Hub are checked the same way: their scripts, configs and flags exist.
"""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from helpers import ROOT, saved_small_model

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
PAGES.append(ROOT / "CONTRIBUTING.md")
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Pages that other work in flight writes: a link to one is checked once it exists.
PENDING: dict[str, str] = {}


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text(encoding="utf-8")) if lang == language]


def _commands(page: Path) -> list[list[str]]:
    """Every shell command in a page's bash blocks: continuation lines joined, comments, `VAR=value` prefixes and
    a trailing `&` dropped; "[--private] [--revision BRANCH]" (optional flags) checked like the others."""
    commands = []
    for block in _blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                words = shlex.split(line.replace("[", " ").replace("]", " "))
                while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                    words.pop(0)
                commands.append([word for word in words if word != "&"])
    return commands


ALL_COMMANDS = [(page, command) for page in PAGES for command in _commands(page)]


def _python_entry(command: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    """(what `python` runs: a script or `-m module`; its arguments) for a command that runs one of ours, else None."""
    launcher = command[0]
    if launcher in ("accelerate", "torchrun"):  # LAUNCHER [launcher flags] SCRIPT.py ARGS
        script = next(i for i, word in enumerate(command) if word.endswith(".py"))
        return (command[script],), command[script + 1 :]
    if launcher not in ("python", ".venv/bin/python"):
        return None
    if command[1] == "-m":
        return (command[1], command[2]), command[3:]
    return (command[1],), command[2:]


@cache
def _help(entry: tuple[str, ...]) -> str:
    result = subprocess.run([sys.executable, *entry, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped, spaces as `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(heading) for heading in re.findall(r"^#+ (.+)$", text, re.M)}


def _readme_folder(root: Path) -> Path:
    """What the snippets load as `outputs/shakespeare`: a small random model saved as run_clm.py saves one."""
    (root / "fixture").mkdir()
    model = saved_small_model(root / "fixture", "ROMEO:\nBut soft, what light through yonder window breaks?\n\n", 128)
    target = root / "outputs" / "shakespeare"
    target.parent.mkdir()
    shutil.move(model, target)
    return target


@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page in PAGES if _blocks(page, "python")], ids=_name)
def test_python_snippets_run(page, tmp_path):
    code = "\n\n".join(_blocks(page, "python"))
    if page.name == "README.md":
        assert "trust_remote_code=True" in code and "pipeline(" in code
        _readme_folder(tmp_path)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_two_commands_come_first():
    first_block = _blocks(ROOT / "README.md", "bash")[0]
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "demo"], ["make", "test"]]


def test_the_readme_stays_short_and_links_every_docs_page():
    assert len(README.splitlines()) <= 250
    linked = {target.split("#")[0] for target in LINK.findall(README)}
    pages = {_name(page) for page in (ROOT / "docs").glob("*.md")} | set(PENDING)
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"


def test_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    used = {command[1] for _, command in ALL_COMMANDS if command[0] == "make" and len(command) > 1}
    assert used and used <= targets, used - targets
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_pytest_commands_name_real_paths_and_markers():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    markers = set(re.findall(r'^\s*"(\w+):', pyproject.split("markers = [", 1)[1].split("]", 1)[0], re.M))
    assert "slow" in markers
    checked = 0
    for _, command in ALL_COMMANDS:
        if "pytest" not in command:
            continue
        args = command[command.index("pytest") + 1 :]
        for i, word in enumerate(args):
            if word == "-m":
                named = set(re.findall(r"\w+", args[i + 1])) - {"not", "and", "or"}
                assert named <= markers, f"unknown markers {named - markers} in {' '.join(command)}"
            elif word.startswith("tests/"):
                assert (ROOT / word.split("::")[0]).exists(), word
        checked += 1
    assert checked


def test_other_files_the_commands_name_exist():
    for _, command in ALL_COMMANDS:
        if command[0] == "bash":
            assert (ROOT / command[1]).is_file(), command[1]
        for word in command:
            if word.startswith(("configs/", "scripts/", "bench/", "tests/")) and not word.endswith("/"):
                assert (ROOT / word.split("::")[0]).exists(), f"{word} in {' '.join(command)}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "page, command",
    [(page, command) for page, command in ALL_COMMANDS if _python_entry(command)],
    ids=lambda value: _name(value) if isinstance(value, Path) else " ".join(value)[:60],
)
def test_commands_use_existing_scripts_and_flags(page, command):
    if command[0] == "accelerate":  # accelerate launch --config_file FILE run_clm.py ARGS
        assert command[1] == "launch"
        config = command[command.index("--config_file") + 1]
        assert (ROOT / config).is_file(), config
    entry, args = _python_entry(command)
    if entry[0] != "-m":
        assert (ROOT / entry[0]).is_file(), entry[0]
    for word in args:
        if word.endswith((".yaml", ".yml", ".json")) and word.startswith("configs/"):
            assert (ROOT / word).is_file(), word
    flags = {word.split("=")[0] for word in args if word.startswith("--")}
    known = set(re.findall(r"--\w+", _help(entry)))
    assert flags <= known, f"{' '.join(entry)} does not accept {sorted(flags - known)}"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_links_and_anchors_lead_somewhere(page):
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        name = file.relative_to(ROOT).as_posix() if file.is_relative_to(ROOT) else str(file)
        if name in PENDING and not file.exists():
            continue
        assert file.exists(), f"{_name(page)} links to {target}, which does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{_name(page)} links to {target}: no such heading in {name}"


def test_package_names_the_pages_give_exist():
    """`modeling_pg_gpt2.export.convert`, `...generation.onnx.OnnxCausalLM`: each a module or a name in one."""
    names = {
        name.rstrip(".")
        for page in PAGES
        for name in re.findall(r"modeling_pg_gpt2(?:\.\w+)+", page.read_text(encoding="utf-8"))
        if not name.endswith(".py") and name != "modeling_pg_gpt2.modeling_pg_gpt2"
    }
    assert names
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                found = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attribute in parts[cut:]:
            assert hasattr(found, attribute), f"{name}: {'.'.join(parts[:cut])} has no {attribute}"
            found = getattr(found, attribute)


def test_results_sections_named_by_the_pages_exist():
    results = ROOT / "bench" / "RESULTS.md"
    headings = [h.lower() for h in re.findall(r"^#+ (.+)$", results.read_text(encoding="utf-8"), re.M)]
    for page in PAGES:
        for section in re.findall(r"RESULTS\.md\W{0,4}\"([^\"]+)\"", page.read_text(encoding="utf-8")):
            section = " ".join(section.split()).lower()  # a name may wrap across lines
            assert any(section in heading for heading in headings), f"{_name(page)}: no section {section!r}"


def test_figures_the_readme_quotes_are_in_the_results():
    results = (ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    figures = set(re.findall(r"\b\d+\.\d+×|\b\d\.\d{3}\b", README))
    assert figures, "the README quotes no figure"
    missing = sorted(figure for figure in figures if figure not in results)
    assert not missing, f"figures in the README but not in bench/RESULTS.md: {missing}"


def test_results_hold_current_figures_only():
    assert len((ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8").splitlines()) <= 300
    history = ROOT / "bench" / "history"
    listed = set(LINK.findall((history / "README.md").read_text(encoding="utf-8")))
    assert {page.name for page in history.glob("*.md")} - {"README.md"} <= listed
