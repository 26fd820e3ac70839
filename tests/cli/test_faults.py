"""Bad inputs and faults, one table: every row is a real command that must end in one clear line.

Each row of `FAULTS` runs a command in a fresh process, as a user would, and checks how it ends: the
exit status (0 nothing wrong, 1 a fault to act on, 2 bad input, 130 Ctrl-C), a fragment of the message
(for a failure, the last line of stderr, `error: ...`), no traceback, and that the files it must not
touch hash the same before and after. Some rows act on the running process (Ctrl-C, a second run) or
run it on a small disk of its own (a tmpfs in a user namespace), and most check what was left behind:
a resumable checkpoint, bit-identical weights after resuming. docs/faults.md points at these rows.

To add a row: append a `Fault` to `FAULTS`. `{name}` in its arguments and paths is filled from the
row's context (`context` below): the shared inputs, and `tmp`/`out` of the row's own folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import torch
from datasets import Dataset
from helpers import ENV, ROOT, write_corpus
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from modeling_pg_gpt2 import PgGPT2Config, PgGPT2ForCausalLM
from modeling_pg_gpt2.common.errors import first_line
from modeling_pg_gpt2.common.outputs import LOCK_FILE, output_lock
from modeling_pg_gpt2.data.corpus import CorpusArguments
from modeling_pg_gpt2.data.tokenizer import TokenizerArguments, train_tokenizer
from modeling_pg_gpt2.reports.model_card import write_model_card
from modeling_pg_gpt2.reports.run_record import RunInfo
from modeling_pg_gpt2.training.checkpoints import checkpoint_problem
from modeling_pg_gpt2.training.hardware import SHARDING_ENGINES

pytestmark = pytest.mark.slow

MODEL = "n_layer=2,n_embd=32,n_head=2,n_positions=64"
STEPS, EVERY = 40, 8  # the reference run: 40 steps, evaluated and saved every 8
RUN = ("run_clm.py", "{recipe}", "--output_dir", "{out}")
NAMESPACE = ("unshare", "--user", "--map-root-user", "--mount")
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
# A run without whitespace this long takes BPE training more than 10 minutes when pre-tokens are not
# bounded (the cost grows with the square of the run: 200k characters take ~12 s here); bounded, < 1 s.
LONG_RUN_CHARS = 1_500_000
NO_CUDA = None if not torch.cuda.is_available() else "this machine has CUDA"
NO_SYS = None if os.path.isdir("/sys") else "needs /sys (read-only even for root) to make an unwritable folder"
NO_XPU = None if not (hasattr(torch, "xpu") and torch.xpu.is_available()) else "this machine has an XPU"


def _namespaces_work() -> bool:
    """Whether this machine lets an unprivileged process mount a tmpfs of its own (a user namespace)."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            probe = subprocess.run(
                [*NAMESPACE, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", folder],
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return probe.returncode == 0


NAMESPACES = shutil.which("unshare") is not None and _namespaces_work()


@dataclass(frozen=True)
class Fault:
    """One row: a command, how it must end, and what it must leave untouched."""

    id: str
    argv: tuple[str, ...]  # after `python`; "{name}" is filled from the row's context
    message: str  # must be in stderr; for a failure, in its last line, which starts with "error: "
    exit_code: int
    unchanged: tuple[str, ...] = ()  # files or folders (every file inside), relative to `cwd`, hashed before and after
    prepare: Callable[[dict[str, Any]], None] | None = None  # makes the faulty input or situation
    during: Callable[[subprocess.Popen, dict[str, Any]], None] | None = None  # acts on the running command
    disk: str | None = None  # mount options of a tmpfs at {tmp}/disk for the command ("size=..." or "ro")
    check: Callable[[dict[str, Any], str], None] | None = None  # more checks, given the context and stderr
    cwd: str = "{root}"  # where the command runs
    in_process: bool = False  # run through `run_cli` in this process, as `python SCRIPT` would (no start-up cost)
    env: dict[str, str] = field(default_factory=dict)  # added to the environment of the command
    timeout: float = 900  # a hang guard only: a busy CI machine may be many times slower than usual
    skip: str | None = None  # why the row cannot run on this machine


def ws_fault(
    name: str,
    command: tuple[str, ...],
    message: str,
    exit_code: int = 2,
    unchanged: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    fresh_process: bool = False,
    timeout: float = 900,
    skip: str | None = None,
) -> Fault:
    """A row of the tokenizer, generation and Hub scripts: run in {ws} (see `workspace`), in this process
    unless it needs an environment of its own or a time limit."""
    return Fault(
        name, command, message, exit_code, unchanged, cwd="{ws}", in_process=not fresh_process, env=env or {},
        timeout=timeout, skip=skip,
    )  # fmt: skip


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


def python(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, **kwargs)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_same_weights(folder: Path, reference: Path) -> None:
    expected, result = weights(reference), weights(folder)
    assert expected.keys() == result.keys()
    for name in expected:
        assert torch.equal(expected[name], result[name]), name


def wait_for(condition: Callable[[], bool], process: subprocess.Popen | None = None, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process is None or process.poll() is None, "the command ended too early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def lock_record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None


def start_run(ctx: dict[str, Any], *extra: str) -> subprocess.Popen:
    """A real run on {out} in the background, returned once it holds the folder's lock."""
    command = [sys.executable, *(a.format(**ctx) for a in RUN), *extra]
    process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (lock_record(ctx["out"]) or {}).get("pid") == process.pid, process)
    return process


# -- inputs shared by the rows --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def context(tmp_path_factory, tokenizer_dir) -> dict[str, Any]:
    """corpus, tokenizer, recipe (the reference run as a YAML recipe), finished (that run, done), gpt2."""
    root = tmp_path_factory.mktemp("faults")
    corpus = write_corpus(root / "corpus")
    tokenizer = tokenizer_dir  # conftest's, trained on this same corpus
    recipe = root / "recipe.yaml"
    values = {
        "train_file": str(corpus), "validation_split_percentage": 10, "tokenizer_name": str(tokenizer),
        "config_name": "tiny", "config_overrides": MODEL, "block_size": 64, "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8, "max_steps": STEPS, "eval_steps": EVERY, "save_steps": EVERY,
        "logging_steps": 4, "learning_rate": 3e-3, "warmup_steps": 3, "lr_scheduler_type": "cosine", "seed": 0,
        "disable_tqdm": True, "auto_recipe": False,
    }  # fmt: skip
    recipe.write_text(json.dumps(values, indent=1), encoding="utf-8")  # JSON is YAML
    finished = root / "finished"
    done = python("run_clm.py", str(recipe), "--output_dir", str(finished))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "starting over" not in done.stderr  # a fresh run's own lock file is no run stopped early

    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = root / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=400, n_positions=64, n_embd=32, n_layer=2, n_head=2)).save_pretrained(gpt2)
    return {"corpus": corpus, "tokenizer": tokenizer, "recipe": recipe, "finished": finished, "gpt2": gpt2}


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
    write_model_card(model, run=RunInfo(corpus=CorpusArguments(train_file="corpus")))

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

    broken_variants(ws, model, config)
    (ws / "outputs").mkdir()
    (ws / "a-file").write_text("not a folder")
    (ws / "long-run.txt").write_text("ACGT" * 10 + "a" * LONG_RUN_CHARS + "\n", encoding="utf-8")
    return ws


def broken_variants(ws: Path, model: Path, config: PgGPT2Config) -> None:
    """More broken copies of {ws}/model: cut-off weights, a vocabulary smaller than the tokenizer's, ONNX exports
    without pieces; and evaluation data whose text is a number or null."""
    shutil.copytree(model, ws / "model-truncated")
    weights_file = ws / "model-truncated" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])  # a copy cut off
    small = PgGPT2Config(**{**config.to_dict(), "vocab_size": config.vocab_size - 20})
    PgGPT2ForCausalLM(small).save_pretrained(ws / "model-small-vocab")
    for name in os.listdir(model):
        if name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(model / name, ws / "model-small-vocab" / name)
    for text in ("3", "null"):
        (ws / f"text-{text}.jsonl").write_text(f'{{"text": "It is the east."}}\n{{"text": {text}}}\n')
    from modeling_pg_gpt2.export.onnx import export_onnx

    export_onnx(model, ws / "onnx")
    for variant, damage in (
        ("truncated", "model.onnx"),
        ("no-tokenizer", "tokenizer.json"),
        ("no-config", "config.json"),
    ):
        shutil.copytree(ws / "onnx", ws / f"onnx-{variant}")
        path = ws / f"onnx-{variant}" / damage
        if variant == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        else:
            path.unlink()


# -- what the rows prepare, do and check ------------------------------------------------------------------------


def copy_finished(ctx: dict[str, Any]) -> None:
    shutil.copytree(ctx["finished"], ctx["out"])


def copy_corpus(ctx: dict[str, Any]) -> None:
    shutil.copytree(ctx["corpus"], ctx["tmp"] / "corpus")


def copy_finished_to_model(ctx: dict[str, Any]) -> None:
    shutil.copytree(ctx["finished"], ctx["tmp"] / "model")


def evaluated_the_trained_model(ctx: dict[str, Any], stderr: str) -> None:
    """What `--do_train false` printed (stdout's JSON line) is the finished run's own validation of its model."""
    printed = json.loads((ctx["tmp"] / "stdout.txt").read_text().strip().splitlines()[-1])
    recorded = json.loads((ctx["finished"] / "metrics.json").read_text())
    assert printed["eval_loss"] == pytest.approx(recorded["eval_loss"], rel=1e-5)
    assert printed["eval_bits_per_byte"] == pytest.approx(recorded["eval_bits_per_byte"], rel=1e-5)


def another_prepare_holds_the_folder(ctx: dict[str, Any]) -> None:
    """{tmp}/prepared locked as a prepare_data.py writing it holds it (the same lock, taken by this process)."""
    lock = output_lock(ctx["tmp"] / "prepared")
    lock.__enter__()
    ctx["held"] = lock


def write(name: str, text: str, encoding: str = "utf-8") -> Callable[[dict[str, Any]], None]:
    def prepare(ctx: dict[str, Any]) -> None:
        (ctx["tmp"] / name).write_text(text, encoding=encoding)

    return prepare


def a_run_holds_the_folder(ctx: dict[str, Any]) -> None:
    ctx["first"] = start_run(ctx, "--max_steps", "100000")
    ctx["first"].send_signal(signal.SIGSTOP)  # paused, it keeps the lock and leaves the CPU to the second run


def the_first_run_went_on(ctx: dict[str, Any], stderr: str) -> None:
    first = ctx["first"]
    assert f"pid {first.pid} " in stderr.splitlines()[-1]
    assert first.poll() is None and lock_record(ctx["out"])["pid"] == first.pid


def a_killed_run_left_its_lock(ctx: dict[str, Any]) -> None:
    first = start_run(ctx, "--max_steps", "100000")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert lock_record(ctx["out"])["pid"] == first.pid


def finished_like_the_reference(ctx: dict[str, Any], stderr: str) -> None:
    assert_same_weights(ctx["out"], ctx["finished"])
    assert not (ctx["out"] / LOCK_FILE).exists()


def continued_to_the_new_max_steps(ctx: dict[str, Any], stderr: str) -> None:
    assert f"Resuming from {ctx['out'] / f'checkpoint-{STEPS}'}" in stderr
    info = json.loads((ctx["out"] / "training_info.json").read_text())
    assert info["global_step"] == STEPS + EVERY and info["finished"] == "max_steps"


def no_final_output_and_finite_checkpoints(ctx: dict[str, Any], stderr: str) -> None:
    out = ctx["out"]
    for name in ("model.safetensors", "metrics.json", "training_info.json", "README.md"):
        assert not (out / name).exists(), name
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints and f"the newest checkpoint (finite weights) is {checkpoints[-1]}" in stderr
    for checkpoint in checkpoints:
        assert checkpoint_problem(checkpoint) is None
        assert all(torch.isfinite(t).all() for t in weights(checkpoint).values()), checkpoint


def gated(*argv: str) -> tuple[str, ...]:
    """`argv` held after its first checkpoint (step EVERY) until the row opens {tmp}/gate (see gated_run.py)."""
    return ("tests/gated_run.py", "{tmp}/gate", str(EVERY), *argv)


def signal_at_the_gate(signum: int) -> Callable[[subprocess.Popen, dict[str, Any]], None]:
    """Send `signum` while the run waits after its first checkpoint, then let it go on."""

    def during(process: subprocess.Popen, ctx: dict[str, Any]) -> None:
        gate = ctx["tmp"] / "gate"
        wait_for(lambda: (gate / "reached").exists(), process, seconds=600)
        process.send_signal(signum)
        (gate / "open").touch()

    return during


def make_gate(ctx: dict[str, Any]) -> None:
    (ctx["tmp"] / "gate").mkdir()


def resumes_from_the_ctrl_c_checkpoint(ctx: dict[str, Any], stderr: str) -> None:
    """Stopped by Ctrl-C or SIGTERM: a checkpoint of the step it was at, the lock released, and the same
    command resumes from that checkpoint to the weights of an uninterrupted run."""
    out = ctx["out"]
    step = int(stderr.splitlines()[-1].split("at step ")[1].split(";")[0])
    assert EVERY <= step < STEPS and checkpoint_problem(out / f"checkpoint-{step}") is None
    assert f"saving a checkpoint of step {step}, then stopping" in stderr
    assert not (out / "model.safetensors").exists() and not (out / LOCK_FILE).exists()
    resumed = python(*(a.format(**ctx) for a in RUN))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {out / f'checkpoint-{step}'}" in resumed.stderr
    assert_same_weights(out, ctx["finished"])


def resumes_after_freeing_space(ctx: dict[str, Any], stderr: str) -> None:
    """The folder as the full disk left it (copied out of the tmpfs) resumes to the reference weights."""
    out = ctx["tmp"] / "disk-after" / "out"
    complete = sorted(p.name for p in out.glob("checkpoint-*") if checkpoint_problem(p) is None)
    assert complete == [f"checkpoint-{EVERY}"] and not (out / "model.safetensors").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == complete  # the cut-off one was removed
    assert f"to resume from {ctx['tmp'] / 'disk' / 'out' / complete[0]}" in stderr
    resumed = python("run_clm.py", str(ctx["recipe"]), "--output_dir", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(out, ctx["finished"])


def nothing_left_on_the_disk(ctx: dict[str, Any], stderr: str) -> None:
    assert list((ctx["tmp"] / "disk-after").iterdir()) == []  # no half-written copy, no staging folder


def before_any_data_work(ctx: dict[str, Any], stderr: str) -> None:
    assert "Tokenizing" not in stderr and "Model from scratch" not in stderr


def prepared_folder(tokenizer: str) -> Callable[[dict[str, Any]], None]:
    """The reference corpus prepared into {tmp}/prepared (blocks of 64) with the recipe's tokenizer or {ws}/tok."""

    def prepare(ctx: dict[str, Any]) -> None:
        from modeling_pg_gpt2.data.prepared import PrepareArguments, prepare_corpus

        folder = ctx["ws"] / "tok" if tokenizer == "ws" else ctx["tokenizer"]
        corpus = CorpusArguments(train_file=str(ctx["corpus"]), validation_split_percentage=10)
        prepare_corpus(corpus, PrepareArguments(str(ctx["tmp"] / "prepared"), str(folder), block_size=64))

    return prepare


def prepared_folder_without_its_blocks(ctx: dict[str, Any]) -> None:
    """{tmp}/prepared (see `prepared_folder`) whose train blocks were lost, e.g. by a partial copy to a node."""
    prepared_folder("recipe")(ctx)
    for blocks in (ctx["tmp"] / "prepared" / "train").iterdir():
        blocks.unlink()


def prepared_folder_of_format_1(ctx: dict[str, Any]) -> None:
    """{tmp}/old-prepared as the first prepare_data.py left it: its record says format 1 (save_to_disk's layout)."""
    folder = ctx["tmp"] / "old-prepared"
    folder.mkdir()
    (folder / "prepared.json").write_text(json.dumps({"format_version": 1, "block_size": 64}), encoding="utf-8")


def damaged_prepared_folder(damage: Callable[[Path], None]) -> Callable[[dict[str, Any]], None]:
    """{tmp}/prepared (see `prepared_folder`), then `damage` done to it."""

    def prepare(ctx: dict[str, Any]) -> None:
        prepared_folder("recipe")(ctx)
        damage(ctx["tmp"] / "prepared")

    return prepare


def cut_at_a_record_batch_boundary(folder: Path) -> None:
    """The train blocks file without its last record batch (as a copy cut there leaves it): Arrow reads the
    shorter file without a word, so only prepared.json's record tells."""
    path = next((folder / "train").iterdir())
    rows = Dataset.from_file(str(path)).num_rows
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_stream(source)
        ends = [source.tell(), *(source.tell() for _ in reader)]  # after the schema, after each batch
    path.write_bytes(path.read_bytes()[: ends[-2]])
    assert Dataset.from_file(str(path)).num_rows < rows


def bytes_changed_in_place(folder: Path) -> None:
    """Token ids in the middle of the train blocks overwritten with 65535 (0xFFFF, past any vocabulary here)."""
    path = next((folder / "train").iterdir())
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))


def edit_record(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        record = json.loads((folder / "prepared.json").read_text(encoding="utf-8"))
        change(record)
        (folder / "prepared.json").write_text(json.dumps(record), encoding="utf-8")

    return damage


def disk_for_one_checkpoint(ctx: dict[str, Any]) -> str:
    """tmpfs options with room for the first checkpoint and the plots, not for a second checkpoint."""
    finished = ctx["finished"]
    checkpoint = sum(p.stat().st_size for p in (finished / f"checkpoint-{STEPS}").iterdir())
    plots = sum(p.stat().st_size for p in finished.glob("*.png"))
    return f"size={(checkpoint * 3 // 2 + plots) // 1024 + 64}k"


FAULTS = [
    # -- re-runs and max_steps
    Fault("re-run of a finished run", RUN[:3] + ("{finished}",), "is complete", 0, unchanged=("{finished}",)),
    Fault(
        "larger --max_steps continues a finished run", (*RUN, "--max_steps", str(STEPS + EVERY)), "written to", 0,
        prepare=copy_finished, check=continued_to_the_new_max_steps,
    ),
    Fault(
        "--max_steps 0", (*RUN[:3], "{finished}", "--max_steps", "0"), "--max_steps must be an integer >= 1, or -1", 2,
        unchanged=("{finished}",),
    ),
    # -- evaluation only: a run folder changes only by training
    Fault(
        "--do_train false in a finished run's folder", (*RUN, "--do_train", "false"), "Validation of", 0,
        prepare=copy_finished, unchanged=("{out}",), check=evaluated_the_trained_model,
    ),
    Fault(
        "--do_train false --model_name_or_path of the run's own folder",
        (*RUN, "--do_train", "false", "--model_name_or_path", "{out}"), "Validation of", 0, prepare=copy_finished,
        unchanged=("{out}",), check=evaluated_the_trained_model,
    ),
    Fault(
        "--do_train false in a folder without a model", (*RUN, "--do_train", "false"),
        "--do_train false evaluates a trained model, and {out} holds none", 2, in_process=True,
    ),
    # -- divergence: a huge learning rate (warmed up over 20 steps, so checkpoints come first)
    Fault(
        "non-finite gradients", (*RUN, "--learning_rate", "1e6", "--warmup_steps", "20", "--save_steps", "2",
                                 "--eval_steps", "2"),
        "training diverged: the gradient norm is nan at step", 1, check=no_final_output_and_finite_checkpoints,
    ),
    # -- concurrent runs and stale locks
    Fault(
        "second run on a folder in use", RUN, "is writing to", 2, prepare=a_run_holds_the_folder,
        check=the_first_run_went_on,
    ),
    Fault(
        "lock left by a killed run", RUN, "Taking over the lock of pid", 0, prepare=a_killed_run_left_its_lock,
        check=finished_like_the_reference,
    ),
    # -- Ctrl-C, and SIGTERM (a cluster preempting the job) handled alike
    Fault(
        "Ctrl-C during training", gated(*RUN), "stopped by Ctrl-C at step", 130, prepare=make_gate,
        during=signal_at_the_gate(signal.SIGINT), check=resumes_from_the_ctrl_c_checkpoint,
    ),
    Fault(
        "SIGTERM during training", gated(*RUN), "stopped by SIGTERM at step", 143, prepare=make_gate,
        during=signal_at_the_gate(signal.SIGTERM), check=resumes_from_the_ctrl_c_checkpoint,
    ),
    # -- resuming: the checkpoint must fit the run
    Fault(
        "resuming with another n_layer", (*RUN, "--max_steps", str(STEPS + EVERY), "--config_overrides",
                                          "n_layer=3,n_embd=32,n_head=2,n_positions=64"),
        f"checkpoint-{STEPS} holds a model with n_layer=2 (this run: 3)", 2, prepare=copy_finished,
        unchanged=("{out}",), in_process=True,
    ),
    Fault(
        "--metric_for_best_model that no evaluation logs", (*RUN, "--metric_for_best_model", "eval_bogus"),
        "--metric_for_best_model eval_bogus is not a metric of the evaluation; choose one of eval_loss", 2,
        unchanged=("{out}",), in_process=True, check=before_any_data_work,
    ),
    Fault(
        "--streaming --max_train_samples 0", (*RUN, "--streaming", "--max_train_samples", "0"),
        "--max_train_samples must be an integer >= 1, got 0", 2, unchanged=("{out}",), in_process=True,
    ),
    # -- full disk and unusable output folders
    Fault(
        "full disk while saving a checkpoint", (*RUN[:3], "{tmp}/disk/out"), "no space left on device while writing",
        1, disk="one checkpoint", check=resumes_after_freeing_space,
    ),
    Fault(
        "full disk while converting", ("convert.py", "{gpt2}", "{tmp}/disk/pg"),
        "no space left on device while writing", 1, unchanged=("{gpt2}",), disk="size=64k",
        check=nothing_left_on_the_disk,
    ),
    Fault(
        "full disk while exporting GGUF", ("convert.py", "{ws}/model", "{tmp}/disk/model.gguf", "--to", "gguf"),
        "no space left on device while writing", 1, unchanged=("{ws}/model",), disk="size=64k",
        check=nothing_left_on_the_disk,
    ),
    Fault(
        "--output_dir is a file", RUN, "is a file, not a folder", 2, prepare=write("out", "mine"),
        unchanged=("{out}",),
        check=before_any_data_work,
    ),
    Fault(
        "--output_dir not writable", (*RUN[:3], "{tmp}/disk/out"), "is not writable", 2, disk="ro,size=64k",
        check=before_any_data_work,
    ),
    # -- recipes and corpus files
    Fault(
        "recipe value of the wrong type", ("run_clm.py", "{tmp}/bad.yaml"), "line 2: max_steps must be an integer", 2,
        prepare=write("bad.yaml", "dataset_name: shakespeare\nmax_steps: 2.5\n"), unchanged=("{tmp}/bad.yaml",),
    ),
    Fault(
        "run_clm: a recipe that is not UTF-8", ("run_clm.py", "{tmp}/latin1.yaml"), "latin1.yaml is not UTF-8 text", 2,
        prepare=write("latin1.yaml", "dataset_name: caf\u00e9\n", encoding="latin-1"), in_process=True,
    ),
    Fault(
        "train_tokenizer: a recipe that is not UTF-8", ("train_tokenizer.py", "{tmp}/latin1.yaml"),
        "latin1.yaml is not UTF-8 text", 2,
        prepare=write("latin1.yaml", "train_file: caf\u00e9\n", encoding="latin-1"), in_process=True,
    ),
    Fault(
        "an abbreviated flag after a recipe", (*RUN, "--train_fil", "{corpus}"),
        "unrecognized arguments: --train_fil", 2, unchanged=("{out}",), in_process=True,
    ),
    Fault(
        "recipe with a YAML syntax error", ("run_clm.py", "{tmp}/bad.yaml"), "bad.yaml, line 3, column 7", 2,
        prepare=write("bad.yaml", "max_steps: 10\nwarmup_steps: 2\n  seed: 1\n"),
    ),
    # -- prepared data (prepare_data.py): a folder that does not fit the run is refused before training
    Fault(
        "--prepared_data made with another block size", (*RUN, "--prepared_data", "{tmp}/prepared", "--block_size",
                                                        "32"),
        "holds blocks of 64 tokens, not 32; pass --block_size 64", 2, prepare=prepared_folder("recipe"),
        unchanged=("{tmp}/prepared",), in_process=True,
    ),
    Fault(
        "--prepared_data made with another tokenizer", (*RUN, "--prepared_data", "{tmp}/prepared"),
        "was tokenized with another tokenizer", 2, prepare=prepared_folder("ws"), unchanged=("{tmp}/prepared",),
        in_process=True,
    ),
    Fault(
        "--prepared_data whose block files are missing", (*RUN, "--prepared_data", "{tmp}/prepared"),
        "cannot read its blocks", 2, prepare=prepared_folder_without_its_blocks, unchanged=("{tmp}/prepared",),
        in_process=True,
    ),
    Fault(
        "--prepared_data whose block file was cut at a record-batch boundary",
        (*RUN, "--prepared_data", "{tmp}/prepared"), "the file was cut or changed (an interrupted copy?)", 2,
        prepare=damaged_prepared_folder(cut_at_a_record_batch_boundary), unchanged=("{tmp}/prepared",),
        in_process=True, check=before_any_data_work,
    ),
    Fault(
        "--prepared_data whose block file has bytes changed", (*RUN, "--prepared_data", "{tmp}/prepared"),
        "does not match its checksum in prepared.json", 2, prepare=damaged_prepared_folder(bytes_changed_in_place),
        unchanged=("{tmp}/prepared",), in_process=True, check=before_any_data_work,
    ),
    Fault(
        "--prepared_data whose prepared.json has an edited block size",
        (*RUN, "--prepared_data", "{tmp}/prepared", "--block_size", "32"),
        "holds blocks of 64 tokens, prepared.json says 32: the record was edited", 2,
        prepare=damaged_prepared_folder(edit_record(lambda record: record.update(block_size=32))),
        unchanged=("{tmp}/prepared",), in_process=True,
    ),
    Fault(
        "--prepared_data whose prepared.json lacks files.validation", (*RUN, "--prepared_data", "{tmp}/prepared"),
        "prepared.json is damaged (no files.validation); prepare it again", 2,
        prepare=damaged_prepared_folder(edit_record(lambda record: record["files"].pop("validation"))),
        unchanged=("{tmp}/prepared",), in_process=True,
    ),
    Fault(
        "--prepared_data of an older format", (*RUN, "--prepared_data", "{tmp}/old-prepared"),
        "has format 1; this version reads 3: prepare it again", 2, prepare=prepared_folder_of_format_1,
        unchanged=("{tmp}/old-prepared",), in_process=True,
    ),
    Fault(
        "--prepared_data not made by prepare_data.py", (*RUN, "--prepared_data", "{ws}/corpus"),
        "holds no prepared.json: it was not made by prepare_data.py", 2, in_process=True,
    ),
    Fault(
        "--prepared_data and a corpus", (*RUN, "--prepared_data", "{tmp}/prepared", "--train_file", "{corpus}"),
        "pass either --prepared_data or a corpus", 2, prepare=prepared_folder("recipe"), in_process=True,
    ),
    Fault(
        "prepare_data.py into a folder that holds something", ("prepare_data.py", "--train_file", "{corpus}",
        "--tokenizer_name", "{tokenizer}", "--output_dir", "{finished}"), "is not empty", 2,
        unchanged=("{finished}",), in_process=True,
    ),
    Fault(
        "prepare_data.py into its own corpus folder", ("prepare_data.py", "--train_file", "{tmp}/corpus",
        "--tokenizer_name", "{tokenizer}", "--output_dir", "{tmp}/corpus", "--overwrite_output_dir"),
        "--output_dir {tmp}/corpus would replace --train_file {tmp}/corpus", 2, prepare=copy_corpus,
        unchanged=("{tmp}/corpus",), in_process=True,
    ),
    Fault(
        "prepare_data.py into a folder inside its corpus", ("prepare_data.py", "--train_file", "{tmp}/corpus",
        "--tokenizer_name", "{tokenizer}", "--output_dir", "{tmp}/corpus/prepared"),
        "is inside --train_file {tmp}/corpus", 2, prepare=copy_corpus, unchanged=("{tmp}/corpus",), in_process=True,
    ),
    Fault(
        "second prepare_data.py on a folder in use", ("prepare_data.py", "--train_file", "{corpus}",
        "--tokenizer_name", "{tokenizer}", "--output_dir", "{tmp}/prepared", "--overwrite_output_dir"),
        "is writing to {tmp}/prepared", 2, prepare=another_prepare_holds_the_folder, unchanged=("{tmp}/prepared",),
    ),
    Fault(
        "run_clm.py --output_dir inside its corpus folder", (*RUN[:3], "{tmp}/corpus/run", "--train_file",
        "{tmp}/corpus"), "is inside --train_file {tmp}/corpus", 2, prepare=copy_corpus, unchanged=("{tmp}/corpus",),
        in_process=True,
    ),
    Fault(
        "train_tokenizer.py --overwrite_output_dir into a model folder", ("train_tokenizer.py", "--train_file",
        "{corpus}", "--vocab_size", "300", "--output_dir", "{tmp}/model", "--overwrite_output_dir"),
        "holds a model (config.json, model.safetensors) whose embeddings belong to its own tokenizer", 2,
        prepare=copy_finished_to_model, unchanged=("{tmp}/model",), in_process=True,
    ),
    # -- sharding engines that accelerate only applies on GPUs (it would silently run plain DDP on a CPU)
    *(
        Fault(
            f"{engine} config on a CPU", RUN, f"{engine} needs GPUs: on a CPU accelerate would silently train with "
            "plain DDP", 2, env={variable: "true"}, in_process=True, skip=NO_CUDA,
        )
        for engine, variable in SHARDING_ENGINES.items()
    ),
    Fault(
        "malformed JSON Lines corpus", (*RUN, "--train_file", "{tmp}/bad.jsonl"), "bad.jsonl, line 2, column 16", 2,
        prepare=write("bad.jsonl", '{"text": "one"}\n{"text": "two" "three"}\n'), unchanged=("{tmp}/bad.jsonl",),
    ),
]  # fmt: skip


def generate(*args: str) -> tuple[str, ...]:
    return ("generate.py", *args)


WORKSPACE_FAULTS = [
    # 1: a folder without tokenizer.json (AutoTokenizer makes it a 1-token tokenizer encoding text to []).
    ws_fault(
        "run_clm: tokenizer folder holding only tokenizer_config.json",
        ("run_clm.py", "--tokenizer_name", "tok-config-only", "--train_file", "corpus", "--config_name", "tiny",
         "--config_overrides", "n_layer=1,n_head=2,n_embd=16,n_positions=32", "--block_size", "16",
         "--max_steps", "2", "--output_dir", "out-clm"),
        "tok-config-only has no tokenizer.json (it holds only tokenizer_config.json)",
        unchanged=("out-clm",),
    ),
    ws_fault(
        "run_clm: empty tokenizer folder (the message was cut off)",
        ("run_clm.py", "--tokenizer_name", "empty", "--train_file", "corpus", "--output_dir", "out-clm"),
        "empty has no tokenizer.json (it holds no tokenizer file)",
        unchanged=("out-clm",),
    ),
    ws_fault(
        "run_clm: a tokenizer.json with a 1-token vocabulary",
        ("run_clm.py", "--tokenizer_name", "tok-one-token", "--train_file", "corpus", "--output_dir", "out-clm"),
        "tok-one-token is not a working tokenizer: it has 1 token(s)",
        unchanged=("out-clm",),
    ),
    ws_fault(
        "generate: model folder holding only tokenizer_config.json",
        generate("model-tok-config-only", "ROMEO:"),
        "model-tok-config-only has no tokenizer.json (it holds only tokenizer_config.json)",
    ),
    ws_fault(
        "generate: model folder without a tokenizer", generate("model-no-tok", "ROMEO:"), "has no tokenizer.json"
    ),
    ws_fault(
        "push_to_hub --dry_run: model folder holding only tokenizer_config.json",
        ("push_to_hub.py", "model-tok-config-only", "me/tiny", "--dry_run"),
        "model-tok-config-only has no tokenizer.json",
        unchanged=("model-tok-config-only/README.md",),
    ),
    ws_fault(
        "convert: checkpoint holding only tokenizer_config.json",
        ("convert.py", "model-tok-config-only", "converted", "--to", "gpt2"),
        "model-tok-config-only has no tokenizer.json",
        unchanged=("converted",),
    ),
    # 5: a run without whitespace made BPE training hang.
    ws_fault(
        "train_tokenizer: a long run without whitespace trains in bounded time",
        ("train_tokenizer.py", "--train_file", "long-run.txt", "--validation_split_percentage", "0",
         "--output_dir", "tok-long-run"),
        "Tokenizer saved to tok-long-run",
        exit_code=0,
        fresh_process=True,
        timeout=900,  # ~10 s here; a hang guard only
    ),
    # 6: an output folder that cannot be written is found before training.
    ws_fault(
        "train_tokenizer: --output_dir below a file",
        ("train_tokenizer.py", "--train_file", "corpus", "--output_dir", "a-file/tok"),
        "--output_dir a-file/tok cannot be created: a-file is a file",
        unchanged=("a-file",),
    ),
    ws_fault(
        "train_tokenizer: --output_dir in a read-only place",
        ("train_tokenizer.py", "--train_file", "corpus", "--output_dir", "/sys/pg-gpt2-tokenizer"),
        "--output_dir /sys/pg-gpt2-tokenizer is not writable",
        skip=NO_SYS,
    ),
    # 10: generate.py's options, device, tokenizer, weights and missing folders.
    ws_fault("generate: --temperature 0", generate("model", "x", "--temperature", "0"), "--temperature must be a"),
    ws_fault("generate: --temperature < 0", generate("model", "x", "--temperature", "-1"), "--temperature must be"),
    ws_fault("generate: --top_k < 0", generate("model", "x", "--top_k", "-1"), "--top_k must be an integer >= 0"),
    ws_fault("generate: --top_p 0", generate("model", "x", "--top_p", "0"), "--top_p must be a number in (0, 1]"),
    ws_fault("generate: --top_p > 1", generate("model", "x", "--top_p", "1.5"), "--top_p must be a number in (0, 1]"),
    ws_fault(
        "generate: --repetition_penalty 0",
        generate("model", "x", "--repetition_penalty", "0"),
        "--repetition_penalty must be a number > 0",
    ),
    ws_fault(
        "generate: --device cuda without CUDA",
        generate("model", "x", "--device", "cuda"),
        "--device cuda: CUDA is not available here",
        skip=NO_CUDA,
    ),
    ws_fault("generate: NaN weights", generate("model-nan", "x"), "has NaN or infinite weights (transformer."),
    ws_fault("generate: missing ./folder", generate("./missing", "x"), "no such folder: ./missing"),
    ws_fault("generate: missing absolute folder", generate("{ws}/missing", "x"), "no such folder: {ws}/missing"),
    ws_fault(
        "generate: missing outputs/NAME where outputs/ exists",
        generate("outputs/shakespeare", "x"),
        "no such folder: outputs/shakespeare",
    ),
    ws_fault(
        "generate: a Hub id with the Hub unreachable fails at once",
        generate("nobody/no-such-model", "x"),
        "no such folder: nobody/no-such-model, and the Hub at http://127.0.0.1:9 is unreachable",
        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"},
        fresh_process=True,  # the message is the probe's: transformers' own lookup would retry for ~53 s first
    ),
    # 12: a dry run or a refused push leaves the folder's model card (or its absence) as it was.
    ws_fault(
        "push_to_hub --dry_run keeps the local README.md",
        ("push_to_hub.py", "model", "me/tiny", "--dry_run"),
        "dry run: would upload",
        exit_code=0,
        unchanged=("model/README.md",),
    ),
    ws_fault(
        "push_to_hub refused (NaN weights) writes no README.md",
        ("push_to_hub.py", "model-nan", "me/tiny", "--dry_run"),
        "model-nan is not ready to publish: the model outputs NaN or infinite logits",
        unchanged=("model-nan/README.md",),
    ),
]  # fmt: skip

ONNX = ("--backend", "onnxruntime")
EVALUATE = ("evaluate_lm.py", "model", "--task", "perplexity", "--data_file")

WORKSPACE_FAULTS += [
    # generate.py: options that cannot work together, devices this machine lacks, broken model folders
    ws_fault(
        "generate: --do_sample false --num_return_sequences 3",
        generate("model", "x", "--do_sample", "false", "--num_return_sequences", "3"),
        "--num_return_sequences 3 needs --do_sample true: greedy decoding gives one text per prompt",
    ),
    ws_fault("generate: --device meta", generate("model", "x", "--device", "meta"), "--device meta holds no weights"),
    ws_fault(
        "generate: --device xpu without one",
        generate("model", "x", "--device", "xpu"),
        "--device xpu: XPU is not available here",
        skip=NO_XPU,
    ),
    ws_fault(
        "generate: weights cut off by a copy",
        generate("model-truncated", "x"),
        "cannot load the model 'model-truncated': model.safetensors is truncated or corrupt",
    ),
    ws_fault(
        "generate: a tokenizer larger than the model's vocabulary",
        generate("model-small-vocab", "x"),
        "has 300 tokens but the model only 280",
    ),
    ws_fault(
        "generate --backend onnxruntime: a truncated model.onnx",
        generate("onnx-truncated", "x", *ONNX),
        "onnx-truncated/model.onnx is not a complete ONNX model",
    ),
    ws_fault(
        "generate --backend onnxruntime: no tokenizer.json",
        generate("onnx-no-tokenizer", "x", *ONNX),
        "onnx-no-tokenizer has no tokenizer.json",
    ),
    ws_fault(
        "generate --backend onnxruntime: no config.json",
        generate("onnx-no-config", "x", *ONNX),
        "onnx-no-config has no config.json",
    ),
    # evaluate_lm.py: the output file and the data are checked before the model is loaded
    ws_fault(
        "evaluate: --output_file that is a folder",
        (*EVALUATE, "corpus/0.txt", "--output_file", "outputs"),
        "--output_file outputs is a folder",
        unchanged=("outputs",),
    ),
    *(
        ws_fault(
            f"evaluate: JSONL text that is {text}",
            (*EVALUATE, f"text-{text}.jsonl"),
            f"text-{text}.jsonl, example 2: the text field 'text' holds {text}, not text",
        )
        for text in ("3", "null")
    ),
    ws_fault(
        "evaluate: --device meta", (*EVALUATE, "corpus/0.txt", "--device", "meta"), "--device meta holds no weights"
    ),
    # convert: the destination is checked before the model is read
    ws_fault(
        "convert --to onnx into a read-only folder",
        ("convert.py", "model", "/sys/pg-gpt2-onnx", "--to", "onnx"),
        "DST /sys/pg-gpt2-onnx is not writable",
        skip=NO_SYS,
    ),
]
FAULTS += WORKSPACE_FAULTS


def as_param(fault: Fault):
    return pytest.param(fault, id=fault.id, marks=[pytest.mark.skipif(fault.skip is not None, reason=str(fault.skip))])


@pytest.mark.parametrize("fault", [as_param(fault) for fault in FAULTS])
def test_fault_ends_in_one_line_and_loses_nothing(
    fault: Fault, context: dict[str, Any], workspace: Path, tmp_path: Path, monkeypatch
) -> None:
    if fault.disk is not None and not NAMESPACES:
        pytest.skip("needs a tmpfs in a user namespace (unshare --user --map-root-user --mount)")
    ctx = {**context, "root": ROOT, "ws": workspace, "tmp": tmp_path, "out": tmp_path / "out"}
    try:
        run_row(fault, ctx, monkeypatch)
    finally:  # runs a row started beside its command, locks it took
        for held in ctx.values():
            if isinstance(held, subprocess.Popen):
                held.kill()
                held.wait()
            elif isinstance(held, contextlib.AbstractContextManager):
                held.__exit__(None, None, None)


def run_row(fault: Fault, ctx: dict[str, Any], monkeypatch) -> None:
    if fault.prepare is not None:
        fault.prepare(ctx)
    cwd = Path(fault.cwd.format(**ctx))
    unchanged = [cwd / path.format(**ctx) for path in fault.unchanged]  # an absolute path stays as it is
    before = [digest(path) for path in unchanged]
    argv = [arg.format(**ctx) for arg in fault.argv]
    if fault.in_process:
        monkeypatch.chdir(cwd)
        for name, value in fault.env.items():
            monkeypatch.setenv(name, value)
        code, stdout, stderr = run_in_process(argv)
    else:
        code, stdout, stderr = run_process(fault, argv, cwd, ctx)

    output = f"exit code {code}\nstdout: {stdout[-2000:]}\nstderr: {stderr[-3000:]}"
    assert code == fault.exit_code, output
    assert "Traceback" not in stderr, output
    message = fault.message.format(**ctx)
    assert message in stdout + stderr, output
    if fault.exit_code != 0:
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], output
        assert stderr.strip().splitlines()[-1] == errors[0], output
    assert [digest(path) for path in unchanged] == before
    if fault.check is not None:
        fault.check(ctx, stderr)


def run_process(fault: Fault, argv: list[str], cwd: Path, ctx: dict[str, Any]) -> tuple[int, str, str]:
    """Run `python *argv` in a fresh process (on a tmpfs of its own with `fault.disk`): exit code, stdout, stderr."""
    tmp = ctx["tmp"]
    script = argv if argv[0] == "-m" else [str(ROOT / argv[0]), *argv[1:]]
    command = [sys.executable, *script]
    if fault.disk is not None:  # on a tmpfs of its own at {tmp}/disk, copied to {tmp}/disk-after at the end
        options = disk_for_one_checkpoint(ctx) if fault.disk == "one checkpoint" else fault.disk
        script = 'mount -t tmpfs -o "$0" tmpfs "$1" || exit 97; d=$1 a=$2; shift 2; "$@"; rc=$?; cp -a "$d/." "$a"; '
        script += "exit $rc"
        (tmp / "disk").mkdir()
        (tmp / "disk-after").mkdir()
        command = [*NAMESPACE, "sh", "-c", script, options, str(tmp / "disk"), str(tmp / "disk-after"), *command]
    env = {**ENV, "PYTHONPATH": str(ROOT), **fault.env}
    # Files, not pipes: nothing blocks while `during` waits.
    with open(tmp / "stdout.txt", "w") as stdout_file, open(tmp / "stderr.txt", "w") as stderr_file:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout_file, stderr=stderr_file)
        ctx["command"] = process
        if fault.during is not None:
            fault.during(process, ctx)
        try:
            process.wait(timeout=fault.timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(argv)} still ran after {fault.timeout} s")
    return process.returncode, (tmp / "stdout.txt").read_text(), (tmp / "stderr.txt").read_text()


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    """Run `python *argv` in this process: its exit code, stdout and stderr; an escaping exception fails the test."""
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
                runpy.run_path(str(ROOT / argv[0]), run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException as exc:  # what a user would see as a traceback
        pytest.fail(f"{' '.join(argv)} raised {type(exc).__name__}: {exc}\nstderr: {err.getvalue()}")
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


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
