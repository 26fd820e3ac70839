"""Training-step benchmark: pg_gpt2 against transformers' GPT2LMHeadModel.

One step is forward + backward + AdamW step on a fixed batch, with the same config, weights, batch and
optimizer on both sides. The two models alternate round by round in one process; the table gives
tokens/s (median and min–max over the rounds), the speed-up over GPT2LMHeadModel, the peak memory a
training step adds on top of the loaded model, and the model FLOPs utilisation against the matmul
peak measured here at start-up.

    .venv/bin/python bench/bench_train.py                      # tiny and 124M, eager and sdpa, CPU
    .venv/bin/python bench/bench_train.py --quick              # smoke run (tiny, few rounds)
    .venv/bin/python bench/bench_train.py --compile --shapes tiny
    .venv/bin/python bench/bench_train.py --malloc reuse           # freed memory reused, as run_clm.py trains
    python bench/bench_train.py --device cuda --dtype bf16 --compile --shapes 124m --context 1024 --batch 8

`--dtype bf16` trains under `torch.autocast` with fp32 weights (what the Trainer's `--bf16` does).
`--malloc reuse` measures both models with glibc's malloc keeping freed blocks (as `run_clm.py` trains on
a CPU): without it, blocks above malloc's mmap threshold fault in page by page at every step, and how
many do depends on each model's allocations and on the other model's in the same process.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import sys
from pathlib import Path

import torch
from common import (
    DTYPES,
    HF,
    PG,
    SHAPES,
    add_common_arguments,
    csv,
    interleave,
    machine_description,
    model_pair,
    paired_ratios,
    preset_config,
    print_table,
    rate,
    setup,
    span,
    training_step,
)
from transformers import GPT2LMHeadModel

from modeling_pg_gpt2 import PgGPT2ForCausalLM
from modeling_pg_gpt2.export.layout import pg_config_to_gpt2
from modeling_pg_gpt2.training.hardware import reuse_freed_memory
from modeling_pg_gpt2.training.throughput import flops_per_token, matmul_peak

OPTIMIZERS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}


def make_optimizer(model: torch.nn.Module, implementation: str = "fused") -> torch.optim.Optimizer:
    """AdamW with GPT-2-style settings, the same for both sides.

    The default, the fused kernel, is what the Trainer uses by default (`optim="adamw_torch_fused"`).
    """
    kwargs = OPTIMIZERS[implementation]
    return torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, **kwargs)


# -- peak memory, measured in a fresh process per model ------------------------------------------------------


def _current_rss() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _training_memory(name: str, config_dict: dict, attn: str, batch: int, context: int, options: dict) -> int:
    """Bytes a training step needs beyond the loaded model: gradients, AdamW state, activations, temporaries.

    Runs in a child process of its own so that each model's peak is measured from a clean allocator.
    On CPU it is the growth of the peak resident set (VmHWM, reset after the model is built); on CUDA
    the growth of `max_memory_allocated`.
    """
    import transformers

    from modeling_pg_gpt2 import PgGPT2Config

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if options["threads"]:
        torch.set_num_threads(options["threads"])
    device = torch.device(options["device"])
    config = PgGPT2Config.from_dict(config_dict)
    if name == PG:
        model = PgGPT2ForCausalLM._from_config(config, attn_implementation=attn)
    else:
        model = GPT2LMHeadModel._from_config(pg_config_to_gpt2(config), attn_implementation=attn)
    model = model.to(device).train()
    optimizer = make_optimizer(model, options["optimizer"])
    runnable = torch.compile(model) if options["compile"] else model
    ids = torch.randint(0, config.vocab_size, (batch, context), device=device)
    autocast = DTYPES[options["dtype"]] if options["dtype"] != "fp32" else None
    step = training_step(runnable, optimizer, {"input_ids": ids, "labels": ids}, autocast)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _current_rss()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    for _ in range(2):
        step()
    return _peak_rss() - before


def training_memory(config, attn: str, batch: int, context: int, args: argparse.Namespace) -> dict[str, int]:
    """Peak training memory of both models, each measured in a fresh process."""
    options = {
        "device": args.device,
        "dtype": args.dtype,
        "compile": args.compile,
        "threads": args.threads,
        "optimizer": args.optimizer,
    }
    environment = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    # Large blocks straight from mmap and back on free: the resident set then follows live tensors closely.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 16)
    try:
        context_ = multiprocessing.get_context("spawn")
        with context_.Pool(1, maxtasksperchild=1) as pool:
            return {
                name: pool.apply(_training_memory, (name, config.to_dict(), attn, batch, context, options))
                for name in (PG, HF)
            }
    finally:
        if environment is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = environment


# -- where the time goes -----------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop lines), restoring it afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
CATEGORIES = ("matmul", "attention", "loss", "optimizer", "other")


def breakdown(step) -> dict[str, float]:
    """Seconds of one profiled step per category: matmul (GEMM kernels), attention (SDPA kernels), loss
    (log-softmax and NLL, forward and backward), optimizer (AdamW step and zero_grad), other (the rest:
    LayerNorm, GELU, residual adds, bias gradients, embedding gradients, copies, framework overhead)."""
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    seconds = dict.fromkeys(CATEGORIES, 0.0)
    for event in prof.events():
        if event.name.startswith(("Optimizer.step", "Optimizer.zero_grad")):
            seconds["optimizer"] += event.cpu_time_total / 1e6
            continue
        parent, in_optimizer = event.cpu_parent, False
        while parent is not None and not in_optimizer:
            in_optimizer = parent.name.startswith(("Optimizer.step", "Optimizer.zero_grad"))
            parent = parent.cpu_parent
        if in_optimizer:
            continue
        self_seconds = event.self_cpu_time_total / 1e6
        if event.name in MATMULS:
            seconds["matmul"] += self_seconds
        elif "scaled_dot_product" in event.name:
            seconds["attention"] += self_seconds
        elif "log_softmax" in event.name or "nll_loss" in event.name:
            seconds["loss"] += self_seconds
        else:
            seconds["other"] += self_seconds
    return seconds


def print_breakdowns(found: dict[str, dict[str, dict[str, float]]]) -> None:
    """Table of the breakdowns, and two ceilings on any speed-up over the baseline.

    - if everything but the GEMMs took no time (the loosest bound);
    - if only the work outside the kernels both models must share took no time: the GEMMs (same
      shapes, same BLAS), the attention kernel, the cross-entropy (`loss_function` on both sides) and
      the optimizer are the same calls in any implementation, so only "other" can shrink.
    """
    rows = []
    for label, per_model in found.items():
        for name, seconds in per_model.items():
            total = sum(seconds.values())
            rows.append([label, name, f"{total:.2f}"] + [f"{seconds[c] / total:.0%}" for c in CATEGORIES])
        baseline = per_model[HF]
        total = sum(baseline.values())
        gemm_only = total / baseline["matmul"]
        shared = total / (total - baseline["other"])
        rows.append([label, "ceilings", "", f"GEMMs only: {gemm_only:.2f}×", "", "", "", f"shared: {shared:.2f}×"])
    print("\nWhere one step's time goes (torch.profiler, one step each, self CPU time):\n")
    print_table(["shape / attn", "model", "step s", *CATEGORIES], rows)
    print(
        f"\nCeilings on the speed-up over {HF}: its step time over its GEMM time (GEMMs only), and over "
        "its time in the kernels every implementation shares, GEMMs, attention, loss and optimizer (shared)."
    )


# -- main ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--shapes", default="tiny,124m", help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--attn", default="eager,sdpa", help="attention implementations, comma-separated")
    parser.add_argument("--batch", type=int, default=None, help="override the shape's batch size")
    parser.add_argument("--context", type=int, default=None, help="override the shape's context (tokens per row)")
    parser.add_argument("--dropout", type=float, default=0.0, help="all dropout probabilities (default 0)")
    parser.add_argument(
        "--optimizer", default="fused", choices=sorted(OPTIMIZERS), help="AdamW kernel (default fused)"
    )
    parser.add_argument(
        "--malloc",
        default="default",
        choices=("default", "reuse"),
        help="glibc malloc as it comes (default), or keeping freed blocks for reuse as run_clm.py trains on a "
        "CPU (no page faults on either side); both models share the choice",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--breakdown", action="store_true", help="profile one step of each: where the time goes")
    args = parser.parse_args()
    device = setup(args)
    if args.malloc == "reuse" and not reuse_freed_memory():
        sys.exit("error: --malloc reuse needs glibc (Linux); use --malloc default")
    rounds = args.rounds or (3 if args.quick else 10)
    shapes = ["tiny"] if args.quick and args.shapes == "tiny,124m" else csv(args.shapes)
    autocast = DTYPES[args.dtype] if args.dtype != "fp32" else None

    print(f"# Training step: {machine_description(device)}")
    matmul_dtype = autocast or torch.float32
    peak = matmul_peak(device, matmul_dtype, quick=args.quick)
    print(
        f"Rounds: {rounds} (+1 warm-up). Dropout {args.dropout}, compile {args.compile}, dtype {args.dtype}, "
        f"malloc {args.malloc}, "
        f"device {device.type}; AdamW(lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1), {args.optimizer} "
        "implementation on both sides.\n"
    )
    results, breakdowns = [], {}
    for shape in shapes:
        preset, batch, context = SHAPES[shape]
        batch, context = args.batch or batch, args.context or context
        config = preset_config(preset, args.dropout)
        if context > config.n_positions:
            config.n_positions = context
        ids = torch.randint(0, config.vocab_size, (batch, context), device=device)
        inputs = {"input_ids": ids, "labels": ids}  # labels = inputs, shifted inside the model
        for attn in csv(args.attn):
            models = model_pair(config, attn, device, torch.float32)
            steps = {}
            for name, model in models.items():
                model.train()
                runnable = torch.compile(model) if args.compile else model
                steps[name] = training_step(runnable, make_optimizer(model, args.optimizer), inputs, autocast)
            timings = interleave(steps, rounds=rounds, warmup=2 if args.compile else 1, device=device)
            if args.breakdown:
                breakdowns[f"{shape} {attn}"] = {name: breakdown(step) for name, step in steps.items()}
            del models, steps
            memory = {} if args.no_memory else training_memory(config, attn, batch, context, args)
            tokens = batch * context
            ratios = paired_ratios(timings[HF], timings[PG])
            print(
                f"{shape} {attn}: {PG} {rate(tokens / timings[PG].median)} tokens/s, "
                f"{HF} {rate(tokens / timings[HF].median)} tokens/s, "
                f"ratio {timings[HF].median / timings[PG].median:.2f} "
                f"(median of per-round ratios {statistics.median(ratios):.2f})",
                flush=True,
            )
            flops = flops_per_token(config, context) * tokens
            results.append((f"{shape} (B={batch}, T={context})", attn, tokens, flops, timings, memory, ratios))

    # Other processes only ever lower the peak: keep the better of the measurements before and after.
    peak = max(peak, matmul_peak(device, matmul_dtype, quick=args.quick))
    headers = ["shape", "attn", "model", "tokens/s", "min–max", f"vs {HF}", "train memory", "MFU"]
    rows = []
    for label, attn, tokens, flops, timings, memory, ratios in results:
        for name in (PG, HF):
            timing = timings[name]
            speedup = "1"
            if name == PG:
                speedup = f"**{timings[HF].median / timing.median:.2f}×** (rounds {min(ratios):.2f}–{max(ratios):.2f})"
            mib = f"{memory[name] / 2**20:,.0f} MiB" if name in memory else "–"
            rows.append(
                [
                    label,
                    attn,
                    name,
                    rate(tokens / timing.median),
                    span(tokens / timing.max, tokens / timing.min),
                    speedup,
                    mib,
                    f"{flops / timing.median / peak:.0%}",
                ]
            )
    print()
    print_table(headers, rows)
    print(
        f"\nMFU: model FLOPs (6 per weight per token + attention) per second over the measured matmul peak, "
        f"{peak / 1e9:,.1f} GFLOP/s ({args.dtype}, best of before and after the run)."
    )
    if breakdowns:
        print_breakdowns(breakdowns)
    print(f"\nAfter the run: {machine_description(device)}")


if __name__ == "__main__":
    main()
