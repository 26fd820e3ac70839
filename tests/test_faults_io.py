"""Fault table of the tokenizer, generation and Hub scripts: every bad input ends in one line, nothing is lost.

Each row is a command line, the fragment its `error:` line must hold (or, for a command that succeeds,
its output), its exit code, and the files that must be byte for byte the same afterwards. Rows run in
this process through `run_cli`, as `python SCRIPT ...` would run them (an exception escaping a script is
the traceback a user would see), or in a fresh process when they need their own environment or a
time limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import runpy
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from modeling_pg_gpt2 import PgGPT2Config, PgGPT2ForCausalLM
from modeling_pg_gpt2.cli import first_line
from modeling_pg_gpt2.corpus import CorpusArguments
from modeling_pg_gpt2.model_card import write_model_card
from modeling_pg_gpt2.tokenizer import TokenizerArguments, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
# A run without whitespace this long takes BPE training more than 10 minutes when pre-tokens are not
# bounded (the cost grows with the square of the run: 200k characters take ~12 s here); bounded, < 1 s.
LONG_RUN_CHARS = 1_500_000
NO_CUDA = None if not torch.cuda.is_available() else "this machine has CUDA"
NO_SYS = None if os.path.isdir("/sys") else "needs /sys (read-only even for root) to make an unwritable folder"


@dataclass(frozen=True)
class Fault:
    """One row: `command` (a script or `-m module`, then its arguments; `{ws}` is the workspace folder), run
    with python from the workspace, must exit with `exit_code`, its one `error:` line (its output when it exits 0)
    holding `message`, and leave the files `unchanged` (relative to the workspace) as they were."""

    name: str
    command: tuple[str, ...]
    message: str
    exit_code: int = 2
    unchanged: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # set for a fresh process only
    fresh_process: bool = False
    timeout: float = 300
    skip: str | None = None

    def __post_init__(self) -> None:
        if self.env and not self.fresh_process:
            raise ValueError(f"{self.name}: an environment applies to a fresh process only")


def generate(*args: str) -> tuple[str, ...]:
    return ("generate.py", *args)


FAULTS = [
    # 1: a folder without tokenizer.json (AutoTokenizer makes it a 1-token tokenizer encoding text to []).
    Fault(
        "run_clm: tokenizer folder holding only tokenizer_config.json",
        ("run_clm.py", "--tokenizer_name", "tok-config-only", "--train_file", "corpus", "--config_name", "tiny",
         "--config_overrides", "n_layer=1,n_head=2,n_embd=16,n_positions=32", "--block_size", "16",
         "--max_steps", "2", "--output_dir", "out-clm"),
        "tok-config-only has no tokenizer.json (it holds only tokenizer_config.json)",
        unchanged=("out-clm",),
    ),
    Fault(
        "run_clm: empty tokenizer folder (the message was cut off)",
        ("run_clm.py", "--tokenizer_name", "empty", "--train_file", "corpus", "--output_dir", "out-clm"),
        "empty has no tokenizer.json (it holds no tokenizer file)",
        unchanged=("out-clm",),
    ),
    Fault(
        "run_clm: a tokenizer.json with a 1-token vocabulary",
        ("run_clm.py", "--tokenizer_name", "tok-one-token", "--train_file", "corpus", "--output_dir", "out-clm"),
        "tok-one-token is not a working tokenizer: it has 1 token(s)",
        unchanged=("out-clm",),
    ),
    Fault(
        "generate: model folder holding only tokenizer_config.json",
        generate("model-tok-config-only", "ROMEO:"),
        "model-tok-config-only has no tokenizer.json (it holds only tokenizer_config.json)",
    ),
    Fault("generate: model folder without a tokenizer", generate("model-no-tok", "ROMEO:"), "has no tokenizer.json"),
    Fault(
        "push_to_hub --dry_run: model folder holding only tokenizer_config.json",
        ("push_to_hub.py", "model-tok-config-only", "me/tiny", "--dry_run"),
        "model-tok-config-only has no tokenizer.json",
        unchanged=("model-tok-config-only/README.md",),
    ),
    Fault(
        "convert: checkpoint holding only tokenizer_config.json",
        ("-m", "modeling_pg_gpt2.convert", "model-tok-config-only", "converted", "--to", "gpt2"),
        "model-tok-config-only has no tokenizer.json",
        unchanged=("converted",),
    ),
    # 5: a run without whitespace made BPE training hang.
    Fault(
        "train_tokenizer: a long run without whitespace trains in bounded time",
        ("train_tokenizer.py", "--train_file", "long-run.txt", "--validation_split_percentage", "0",
         "--output_dir", "tok-long-run"),
        "Tokenizer saved to tok-long-run",
        exit_code=0,
        fresh_process=True,
        timeout=300,  # ~10 s here; generous for a loaded CI machine
    ),
    # 6: an output folder that cannot be written is found before training.
    Fault(
        "train_tokenizer: --output_dir below a file",
        ("train_tokenizer.py", "--train_file", "corpus", "--output_dir", "a-file/tok"),
        "--output_dir a-file/tok cannot be created: a-file is a file",
        unchanged=("a-file",),
    ),
    Fault(
        "train_tokenizer: --output_dir in a read-only place",
        ("train_tokenizer.py", "--train_file", "corpus", "--output_dir", "/sys/pg-gpt2-tokenizer"),
        "--output_dir /sys/pg-gpt2-tokenizer is not writable",
        skip=NO_SYS,
    ),
    # 10: generate.py's options, device, tokenizer, weights and missing folders.
    Fault("generate: --temperature 0", generate("model", "x", "--temperature", "0"), "--temperature must be a"),
    Fault("generate: --temperature < 0", generate("model", "x", "--temperature", "-1"), "--temperature must be"),
    Fault("generate: --top_k < 0", generate("model", "x", "--top_k", "-1"), "--top_k must be 0 (no limit) or more"),
    Fault("generate: --top_p 0", generate("model", "x", "--top_p", "0"), "--top_p must be in (0, 1]"),
    Fault("generate: --top_p > 1", generate("model", "x", "--top_p", "1.5"), "--top_p must be in (0, 1]"),
    Fault(
        "generate: --repetition_penalty 0",
        generate("model", "x", "--repetition_penalty", "0"),
        "--repetition_penalty must be a positive number",
    ),
    Fault(
        "generate: --device cuda without CUDA",
        generate("model", "x", "--device", "cuda"),
        "--device cuda: CUDA is not available here",
        skip=NO_CUDA,
    ),
    Fault("generate: NaN weights", generate("model-nan", "x"), "has NaN or infinite weights (transformer."),
    Fault("generate: missing ./folder", generate("./missing", "x"), "no such folder: ./missing"),
    Fault("generate: missing absolute folder", generate("{ws}/missing", "x"), "no such folder: {ws}/missing"),
    Fault(
        "generate: missing outputs/NAME where outputs/ exists",
        generate("outputs/shakespeare", "x"),
        "no such folder: outputs/shakespeare",
    ),
    Fault(
        "generate: a Hub id with the Hub unreachable fails at once",
        generate("nobody/no-such-model", "x"),
        "no such folder: nobody/no-such-model, and the Hub at http://127.0.0.1:9 is unreachable",
        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"},
        fresh_process=True,
        timeout=40,  # transformers' own lookup retries for ~53 s
    ),
    # 12: a dry run or a refused push leaves the folder's model card (or its absence) as it was.
    Fault(
        "push_to_hub --dry_run keeps the local README.md",
        ("push_to_hub.py", "model", "me/tiny", "--dry_run"),
        "dry run: would upload",
        exit_code=0,
        unchanged=("model/README.md",),
    ),
    Fault(
        "push_to_hub refused (NaN weights) writes no README.md",
        ("push_to_hub.py", "model-nan", "me/tiny", "--dry_run"),
        "model-nan is not ready to publish: the model outputs NaN or infinite logits",
        unchanged=("model-nan/README.md",),
    ),
]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A corpus, a trained tokenizer, a small model folder as run_clm.py writes it, and broken variants."""
    ws = tmp_path_factory.mktemp("faults-io")
    (ws / "corpus").mkdir()
    for number in range(4):
        (ws / "corpus" / f"{number}.txt").write_text(TEXT * (20 + number), encoding="utf-8")
    train_tokenizer(
        CorpusArguments(train_file=str(ws / "corpus")), TokenizerArguments(output_dir=str(ws / "tok"), vocab_size=300)
    )
    tokenizer = AutoTokenizer.from_pretrained(ws / "tok")
    torch.manual_seed(0)
    config = PgGPT2Config(
        vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = ws / "model"
    PgGPT2ForCausalLM(config).save_pretrained(model)
    tokenizer.save_pretrained(model)
    (model / "metrics.json").write_text(json.dumps({"eval_loss": 5.6, "eval_perplexity": 270.4}))
    write_model_card(model, corpus={"train_file": "corpus"})

    (ws / "empty").mkdir()
    one_token = Tokenizer(models.WordLevel({"<|endoftext|>": 0}, unk_token="<|endoftext|>"))
    PreTrainedTokenizerFast(tokenizer_object=one_token, eos_token="<|endoftext|>").save_pretrained(
        ws / "tok-one-token"
    )
    (ws / "tok-config-only").mkdir()
    (ws / "tok-config-only" / "tokenizer_config.json").write_bytes((ws / "tok" / "tokenizer_config.json").read_bytes())
    for variant, drop in (("model-tok-config-only", ["tokenizer.json"]), ("model-no-tok", None), ("model-nan", [])):
        folder = ws / variant
        folder.mkdir()
        for path in model.iterdir():
            keep = path.name not in drop if drop is not None else not path.name.startswith("tokenizer")
            if keep and not (variant == "model-nan" and path.name == "README.md"):
                (folder / path.name).write_bytes(path.read_bytes())
    weights = load_file(ws / "model-nan" / "model.safetensors")
    name = next(name for name in weights if name.endswith("ln_f.weight"))
    weights[name] = torch.full_like(weights[name], float("nan"))  # as a diverged run would save them
    save_file(weights, ws / "model-nan" / "model.safetensors", metadata={"format": "pt"})

    (ws / "outputs").mkdir()
    (ws / "a-file").write_text("not a folder")
    (ws / "long-run.txt").write_text("ACGT" * 10 + "a" * LONG_RUN_CHARS + "\n", encoding="utf-8")
    return ws


def digest(path: Path) -> str | None:
    """sha256 of a file, of a folder's files and their names, or None for nothing there."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_dir():
        sha = hashlib.sha256()
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            sha.update(child.relative_to(path).as_posix().encode() + b"\0" + child.read_bytes())
        return sha.hexdigest() + "/"
    return None


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    """Run `python *argv` here: its exit code, stdout and stderr; an escaping exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    module = argv[1] if argv[0] == "-m" else None
    sys.argv = [module or argv[0], *argv[2 if module else 1 :]]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if module:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(str(REPO / argv[0]), run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException as exc:  # what a user would see as a traceback
        pytest.fail(f"{' '.join(argv)} raised {type(exc).__name__}: {exc}\nstderr: {err.getvalue()}")
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


def run_fresh(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    argv = [sys.executable, *argv] if argv[0] == "-m" else [sys.executable, str(REPO / argv[0]), *argv[1:]]
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(argv)} still ran after {timeout} s")
    return proc.returncode, proc.stdout, proc.stderr


def as_param(fault: Fault):
    return pytest.param(
        fault, id=fault.name, marks=[pytest.mark.skipif(fault.skip is not None, reason=str(fault.skip))]
    )


@pytest.mark.parametrize("fault", [as_param(fault) for fault in FAULTS])
def test_fault(fault: Fault, workspace: Path, monkeypatch) -> None:
    fill = lambda text: text.replace("{ws}", str(workspace))  # noqa: E731
    before = {name: digest(workspace / name) for name in fault.unchanged}
    argv = [fill(part) for part in fault.command]
    if fault.fresh_process:
        code, stdout, stderr = run_fresh(argv, workspace, fault.env, fault.timeout)
    else:
        monkeypatch.chdir(workspace)
        code, stdout, stderr = run_in_process(argv)

    assert "Traceback" not in stderr, stderr
    assert code == fault.exit_code, f"exit code {code}\nstdout: {stdout[-2000:]}\nstderr: {stderr[-2000:]}"
    if fault.exit_code == 0:
        assert fill(fault.message) in stdout + stderr
    else:
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, stderr
        assert fill(fault.message) in errors[0], errors[0]
    assert {name: digest(workspace / name) for name in fault.unchanged} == before


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (ValueError("first\nsecond"), "first"),
        (ValueError("\n  \n  indented first \nsecond"), "indented first"),
        (ValueError(), "ValueError"),  # used to raise IndexError
        (OSError(""), "OSError"),
        (KeyError("key"), "'key'"),
    ],
)
def test_first_line_of_any_exception(error: BaseException, line: str) -> None:
    assert first_line(error) == line
