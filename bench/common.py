"""Helpers shared by the benchmarks: interleaved timing, machine peaks, model pairs, tables.

Every benchmark compares pg_gpt2 with transformers' `GPT2LMHeadModel` *in the same process*, round by
round: each round runs every candidate once, in an order that alternates between rounds, so that load
from other processes (CPU steal on a shared machine) hits both sides alike. Results are medians with
min/max, and the ratio is taken against the baseline of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

# `python bench/bench_x.py` from a fresh clone: make the repository's package importable without installing it.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import transformers  # noqa: E402
from transformers import GPT2LMHeadModel  # noqa: E402

from modeling_pg_gpt2 import PgGPT2Config, PgGPT2ForCausalLM  # noqa: E402
from modeling_pg_gpt2.export.layout import pg_config_to_gpt2, pg_state_dict_to_gpt2  # noqa: E402
from modeling_pg_gpt2.training.throughput import best_seconds  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PG, HF = "pg_gpt2", "GPT2LMHeadModel"  # the candidate and the baseline, as the tables name them

# The benchmark shapes of issue 6: (preset, batch, context).
SHAPES = {
    "tiny": ("tiny", 8, 256),  # 4 layers, 256 wide, vocab 8192
    "124m": ("gpt2", 4, 256),  # GPT-2 small, vocab 50257
}


# -- command line --------------------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every benchmark understands: where to run, in which precision, how long to measure."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="parameter dtype (default: fp32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds (default depends on --quick)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run: few rounds, small shapes first")
    parser.add_argument("--seed", type=int, default=0)


def setup(args: argparse.Namespace) -> torch.device:
    """Apply --threads and --seed and return the device, refusing a device this machine does not have."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA GPU on this machine")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what GPU users run with; both sides get it
        torch.backends.cudnn.allow_tf32 = True
    transformers.logging.set_verbosity_error()  # one loss_type notice per model would drown the tables
    return device


def csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


# -- timing --------------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Seconds per call of one candidate, one sample per round."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(
    candidates: dict[str, Callable[[], object]], rounds: int, warmup: int, device: torch.device
) -> dict[str, Timing]:
    """Time each candidate once per round, alternating the order between rounds; `warmup` untimed rounds first."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    synchronize(device)
    timings = {name: Timing() for name in names}
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            candidates[name]()
            synchronize(device)
            timings[name].samples.append(time.perf_counter() - start)
    return timings


def paired_ratios(baseline: Timing, candidate: Timing) -> list[float]:
    """Per-round speed-ups (baseline time / candidate time): robust to load that drifts during the run."""
    return [b / c for b, c in zip(baseline.samples, candidate.samples, strict=True)]


# -- machine peaks -------------------------------------------------------------------------------------------


def read_bandwidth(device: torch.device, quick: bool = False) -> float:
    """Bytes/s at which this machine streams memory it only reads (a reduction over a buffer far larger than caches).

    Decoding one token at batch 1 reads every weight once, so weight bytes / this bandwidth is the
    fastest a token can possibly be generated.
    """
    n_bytes = (256 if quick else 1024) * 2**20
    x = torch.ones(n_bytes // 4, device=device, dtype=torch.float32)
    seconds = best_seconds(lambda: x.sum(), device, repeats=3 if quick else 10)
    return n_bytes / seconds


# -- models --------------------------------------------------------------------------------------------------


def preset_config(preset: str, dropout: float) -> PgGPT2Config:
    """The preset's config with every dropout probability set to `dropout`."""
    return PgGPT2Config.from_preset(preset, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)


def model_pair(
    config: PgGPT2Config, attn_implementation: str, device: torch.device, dtype: torch.dtype
) -> dict[str, torch.nn.Module]:
    """pg_gpt2 and transformers' `GPT2LMHeadModel` with the same config and exactly the same weights."""
    ours = PgGPT2ForCausalLM._from_config(config, attn_implementation=attn_implementation)
    theirs = GPT2LMHeadModel._from_config(pg_config_to_gpt2(config), attn_implementation=attn_implementation)
    theirs.load_state_dict(pg_state_dict_to_gpt2(ours.state_dict()), strict=True)
    return {PG: ours.to(device=device, dtype=dtype), HF: theirs.to(device=device, dtype=dtype)}


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    autocast_dtype: torch.dtype | None,
) -> Callable[[], None]:
    """A closure running one optimisation step (forward, backward, step) of `model` on `batch` (labels inside)."""
    device_type = batch["input_ids"].device.type

    def step() -> None:
        with torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights one decoding step reads: every parameter once, except the position table (one row)."""
    unique = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() * p.element_size() for p in unique)
    wpe = model.get_submodule("transformer.wpe").weight
    return total - wpe.numel() * wpe.element_size()


def shakespeare_tokenizer(folder: Path, vocab_size: int = 8192) -> str:
    """Train the demo's byte-level BPE on the bundled Shakespeare corpus into `folder` with `train_tokenizer.py`."""
    output_dir = folder / "tokenizer"
    command = [sys.executable, str(REPO / "train_tokenizer.py"), "--dataset_name", "shakespeare"]
    command += ["--vocab_size", str(vocab_size), "--output_dir", str(output_dir)]
    print(f"Training the Shakespeare tokenizer ({vocab_size} tokens)...", flush=True)
    environment = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=environment)
    if finished.returncode != 0:
        sys.exit(f"error: train_tokenizer.py failed:\n{finished.stderr[-2000:]}")
    return str(output_dir)


# -- reporting -----------------------------------------------------------------------------------------------


def machine_description(device: torch.device) -> str:
    """One line saying what ran the benchmark: processor, threads, load, library versions."""
    if device.type == "cuda":
        hardware = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        hardware = _cpu_name()
        hardware += f", {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads"
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    return (
        f"{hardware}{load}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}"
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A Markdown table, so the output pastes into RESULTS.md as it is."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    sys.stdout.flush()


def rate(value: float) -> str:
    """A throughput with three significant digits (tokens/s, GB/s...)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def span(low: float, high: float) -> str:
    return f"{rate(low)}–{rate(high)}"


def decoding_rows(
    shape: str,
    batch: int,
    new_tokens: int,
    names: tuple[str, ...],
    baseline: str,
    timings: dict[str, Timing],
    clocks: dict[str, list[float]],
    same: bool,
) -> list[list[str]]:
    """The table rows of one decoding comparison, one per name in `names`, each timed against `baseline`.

    `clocks` hold each runtime's seconds per decoded token; `same`: whether they produced the same tokens.
    """
    rows = []
    for name in names:
        timing = timings[name]
        speedup = "1" if name == baseline else f"**{timings[baseline].median / timing.median:.2f}×**"
        rows.append(
            [
                shape,
                str(batch),
                name,
                rate(new_tokens / timing.median),
                span(new_tokens / timing.max, new_tokens / timing.min),
                speedup,
                f"{statistics.median(clocks[name]) * 1e3:.2f}",
                "yes" if same else "NO",
            ]
        )
    return rows
