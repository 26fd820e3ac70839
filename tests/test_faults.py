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

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_run_clm import ENV, ROOT, write_corpus

from modeling_pg_gpt2.checkpoints import LOCK_FILE, checkpoint_problem
from modeling_pg_gpt2.corpus import CorpusArguments
from modeling_pg_gpt2.tokenizer import TokenizerArguments, train_tokenizer

pytestmark = pytest.mark.slow

MODEL = "n_layer=2,n_embd=32,n_head=2,n_positions=64"
STEPS, EVERY = 40, 8  # the reference run: 40 steps, evaluated and saved every 8
RUN = ("run_clm.py", "{recipe}", "--output_dir", "{out}")
NAMESPACE = ("unshare", "--user", "--map-root-user", "--mount")


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
    unchanged: tuple[str, ...] = ()  # files or folders (every file inside) hashed before and after
    prepare: Callable[[dict[str, Any]], None] | None = None  # makes the faulty input or situation
    during: Callable[[subprocess.Popen, dict[str, Any]], None] | None = None  # acts on the running command
    disk: str | None = None  # mount options of a tmpfs at {tmp}/disk for the command ("size=..." or "ro")
    check: Callable[[dict[str, Any], str], None] | None = None  # more checks, given the context and stderr


def digest(path: Path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


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
def context(tmp_path_factory) -> dict[str, Any]:
    """corpus, tokenizer, recipe (the reference run as a YAML recipe), finished (that run, done), gpt2."""
    root = tmp_path_factory.mktemp("faults")
    corpus = write_corpus(root / "corpus")
    tokenizer = root / "tokenizer"
    train_tokenizer(
        CorpusArguments(train_file=str(corpus)), TokenizerArguments(output_dir=str(tokenizer), vocab_size=400)
    )
    recipe = root / "recipe.yaml"
    values = {
        "train_file": str(corpus), "validation_split_percentage": 10, "tokenizer_name": str(tokenizer),
        "config_name": "tiny", "config_overrides": MODEL, "block_size": 64, "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8, "max_steps": STEPS, "eval_steps": EVERY, "save_steps": EVERY,
        "logging_steps": 4, "learning_rate": 3e-3, "warmup_steps": 3, "lr_scheduler_type": "cosine", "seed": 0,
        "disable_tqdm": True,
    }  # fmt: skip
    recipe.write_text(json.dumps(values, indent=1), encoding="utf-8")  # JSON is YAML
    finished = root / "finished"
    done = python("run_clm.py", str(recipe), "--output_dir", str(finished))
    assert done.returncode == 0, done.stderr[-3000:]

    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = root / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=400, n_positions=64, n_embd=32, n_layer=2, n_head=2)).save_pretrained(gpt2)
    return {"corpus": corpus, "tokenizer": tokenizer, "recipe": recipe, "finished": finished, "gpt2": gpt2}


# -- what the rows prepare, do and check ------------------------------------------------------------------------


def copy_finished(ctx: dict[str, Any]) -> None:
    shutil.copytree(ctx["finished"], ctx["out"])


def write(name: str, text: str) -> Callable[[dict[str, Any]], None]:
    def prepare(ctx: dict[str, Any]) -> None:
        (ctx["tmp"] / name).write_text(text, encoding="utf-8")

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


def ctrl_c_after_the_first_checkpoint(process: subprocess.Popen, ctx: dict[str, Any]) -> None:
    first = ctx["out"] / f"checkpoint-{EVERY}"
    wait_for(lambda: first.is_dir() and checkpoint_problem(first) is None, process)
    process.send_signal(signal.SIGINT)


def resumes_from_the_ctrl_c_checkpoint(ctx: dict[str, Any], stderr: str) -> None:
    out = ctx["out"]
    step = int(stderr.splitlines()[-1].split("at step ")[1].split(";")[0])
    assert EVERY <= step < STEPS and checkpoint_problem(out / f"checkpoint-{step}") is None
    assert not (out / "model.safetensors").exists()
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
        "--max_steps 0", (*RUN[:3], "{finished}", "--max_steps", "0"), "--max_steps 0 trains nothing", 2,
        unchanged=("{finished}",),
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
    # -- Ctrl-C
    Fault(
        "Ctrl-C during training", RUN, "stopped by Ctrl-C at step", 130, during=ctrl_c_after_the_first_checkpoint,
        check=resumes_from_the_ctrl_c_checkpoint,
    ),
    # -- full disk and unusable output folders
    Fault(
        "full disk while saving a checkpoint", (*RUN[:3], "{tmp}/disk/out"), "no space left on device while writing",
        1, disk="one checkpoint", check=resumes_after_freeing_space,
    ),
    Fault(
        "full disk while converting", ("-m", "modeling_pg_gpt2.convert", "{gpt2}", "{tmp}/disk/pg"),
        "no space left on device while writing", 1, unchanged=("{gpt2}",), disk="size=64k",
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
        "recipe with a YAML syntax error", ("run_clm.py", "{tmp}/bad.yaml"), "bad.yaml, line 3, column 7", 2,
        prepare=write("bad.yaml", "max_steps: 10\nwarmup_steps: 2\n  seed: 1\n"),
    ),
    Fault(
        "malformed JSON Lines corpus", (*RUN, "--train_file", "{tmp}/bad.jsonl"), "bad.jsonl, line 2, column 16", 2,
        prepare=write("bad.jsonl", '{"text": "one"}\n{"text": "two" "three"}\n'), unchanged=("{tmp}/bad.jsonl",),
    ),
]  # fmt: skip


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.id for fault in FAULTS])
def test_fault_ends_in_one_line_and_loses_nothing(fault: Fault, context: dict[str, Any], tmp_path: Path) -> None:
    if fault.disk is not None and not NAMESPACES:
        pytest.skip("needs a tmpfs in a user namespace (unshare --user --map-root-user --mount)")
    ctx = {**context, "tmp": tmp_path, "out": tmp_path / "out"}
    try:
        run_row(fault, ctx)
    finally:  # runs a row started beside its command
        for process in ctx.values():
            if isinstance(process, subprocess.Popen):
                process.kill()
                process.wait()


def run_row(fault: Fault, ctx: dict[str, Any]) -> None:
    tmp = ctx["tmp"]
    if fault.prepare is not None:
        fault.prepare(ctx)
    unchanged = [Path(path.format(**ctx)) for path in fault.unchanged]
    before = [digest(path) for path in unchanged]

    command = [sys.executable, *(arg.format(**ctx) for arg in fault.argv)]
    if fault.disk is not None:  # on a tmpfs of its own at {tmp}/disk, copied to {tmp}/disk-after at the end
        options = disk_for_one_checkpoint(ctx) if fault.disk == "one checkpoint" else fault.disk
        script = 'mount -t tmpfs -o "$0" tmpfs "$1" || exit 97; d=$1 a=$2; shift 2; "$@"; rc=$?; cp -a "$d/." "$a"; '
        script += "exit $rc"
        (tmp / "disk").mkdir()
        (tmp / "disk-after").mkdir()
        command = [*NAMESPACE, "sh", "-c", script, options, str(tmp / "disk"), str(tmp / "disk-after"), *command]
    with open(tmp / "stderr.txt", "w") as stderr_file:  # a file, not a pipe: nothing blocks while `during` waits
        process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr_file)
        ctx["command"] = process
        if fault.during is not None:
            fault.during(process, ctx)
        process.wait(timeout=300)
    stderr = (tmp / "stderr.txt").read_text()

    assert process.returncode == fault.exit_code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert fault.message in stderr, stderr[-3000:]
    if fault.exit_code != 0:
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and fault.message in last, last
    assert [digest(path) for path in unchanged] == before
    if fault.check is not None:
        fault.check(ctx, stderr)
