"""Time to quality: validation bits per byte against training minutes for the plain CPU recipe.

What a user of a CPU recipe gets is the model its minutes buy. This benchmark trains the plain CPU recipe
(configs/shakespeare-cpu.yaml, which `make demo` ran until it switched to the automatic recipe) for
a fixed budget of training minutes (`--max_train_minutes`; evaluations are not counted) and evaluates on
the whole held-out split every `--eval_steps` steps, for

- `new`: today's recipe, configs/shakespeare-cpu.yaml, as `python run_clm.py configs/shakespeare-cpu.yaml` runs it;
- `old`: the recipe it replaced (bench/recipes/shakespeare-cpu-2026-11.yaml, kept for this comparison);
- `gpt2`: today's recipe with transformers' `GPT2LMHeadModel` (same initial weights, same Trainer, data,
  optimizer, precision, schedule and callbacks: only the model class differs), for reference;

each on an idle machine and with one core kept busy by another process (`--conditions idle,busy`: a
pure-Python loop at normal priority, started before the run so the run sees it).

`--isa avx2` runs as an AVX2-only machine would: torch's kernels, MKL and oneDNN limited to AVX2 and no
bf16 autocast (`--auto_bf16 false`; without AVX512-BF16 or AMX the recipe trains in fp32). The default
`native` uses what this CPU has.

    .venv/bin/python bench/bench_time_to_quality.py                              # all runs, ~1 hour
    .venv/bin/python bench/bench_time_to_quality.py --runs new --conditions idle --minutes 2
    .venv/bin/python bench/bench_time_to_quality.py --isa avx2 --out bench/time_to_quality_avx2

Writes OUT.json (every curve) and OUT.png (the plot), and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine_description, print_table, shakespeare_tokenizer

RECIPES = {
    "new": REPO / "configs" / "shakespeare-cpu.yaml",
    "old": REPO / "bench" / "recipes" / "shakespeare-cpu-2026-11.yaml",
    "gpt2": REPO / "configs" / "shakespeare-cpu.yaml",
}
LABELS = {"new": "recipe (today)", "old": "recipe (before)", "gpt2": "recipe (today), GPT2LMHeadModel"}
# Limits an AVX-512 machine to what an AVX2-only one runs: ATen's kernels, MKL's GEMMs, oneDNN's.
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
GOALS = {"idle": 2.20, "busy": 2.40}  # issue 16's goals for an AVX2-only machine, bits per byte
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def gpt2_worker(argv: list[str]) -> None:
    """`run_clm.py` with the model swapped for `GPT2LMHeadModel` right after it is built (same weights)."""
    from transformers import GPT2LMHeadModel

    from modeling_pg_gpt2.cli import commands
    from modeling_pg_gpt2.export.layout import pg_config_to_gpt2, pg_state_dict_to_gpt2
    from modeling_pg_gpt2.training import run as training

    build_pg_gpt2 = training.build_model

    def build_model(model_args, tokenizer):
        ours, source = build_pg_gpt2(model_args, tokenizer)
        config = pg_config_to_gpt2(ours.config)
        config._attn_implementation = ours.config._attn_implementation
        model = GPT2LMHeadModel(config)
        model.load_state_dict(pg_state_dict_to_gpt2(ours.state_dict()))
        return model, f"{source}, as GPT2LMHeadModel"

    training.build_model = build_model
    commands.train(argv)


def cpu_flags() -> str:
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    return " ".join(flag for flag in CPU_FLAGS if flag in flags) or "unknown"


def run(name: str, condition: str, args: argparse.Namespace, tokenizer: str, folder: Path) -> dict:
    """One training run in a fresh process; returns its curve and final figures."""
    output_dir = folder / f"{name}-{condition}"
    argv = [
        str(RECIPES[name]),
        "--tokenizer_name",
        tokenizer,
        "--output_dir",
        str(output_dir),
        "--overwrite_output_dir",
        "--max_train_minutes",
        str(args.minutes),
        "--eval_steps",
        str(args.eval_steps),
        "--save_strategy",
        "no",
        "--load_best_model_at_end",
        "false",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]
    environment = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if args.isa == "avx2":
        environment.update(AVX2_ONLY)
        argv += ["--auto_bf16", "false"]
    script = [str(REPO / "run_clm.py")] if name != "gpt2" else [__file__, "--gpt2-worker", "--"]
    busy = None
    if condition == "busy":
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(2)  # a running neighbour when the run looks at the machine
    print(f"  {name}, {condition}: {args.minutes:g} training minutes...", flush=True)
    log = output_dir.with_suffix(".log")
    try:
        with log.open("w") as stream:
            started = time.monotonic()
            finished = subprocess.run(
                [sys.executable, *script, *argv], cwd=REPO, env=environment, stdout=stream, stderr=subprocess.STDOUT
            )
            wall = time.monotonic() - started
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    if finished.returncode != 0:
        sys.exit(f"error: the {name} run failed; its last lines:\n" + "\n".join(log.read_text().splitlines()[-20:]))
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    info = json.loads((output_dir / "training_info.json").read_text())
    metrics = json.loads((output_dir / "metrics.json").read_text())
    curve = [(h["train_minutes"], h["eval_bits_per_byte"]) for h in history if "eval_bits_per_byte" in h]
    lines = log.read_text().splitlines()
    threads = next((line.split("threads: ")[-1].split()[0] for line in lines if "CPU threads: " in line), "")
    return {
        "run": name,
        "condition": condition,
        "curve": curve,
        "steps": info["global_step"],
        "tokens_per_step": info["tokens_per_step"],
        "train_minutes": curve[-1][0] if curve else None,
        "bits_per_byte": metrics["eval_bits_per_byte"],
        "precision": "bf16" if info["bf16"] else "fp32",
        "wall_seconds": round(wall),
        "threads": threads,
    }


def plot(results: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    colours = {"new": "tab:blue", "old": "tab:grey", "gpt2": "tab:orange"}
    for result in results:
        minutes, bits = zip(*result["curve"], strict=True)
        style = "-" if result["condition"] == "idle" else "--"
        label = f"{LABELS[result['run']]}, {result['condition']}"
        axes.plot(minutes, bits, style, marker=".", color=colours[result["run"]], label=label)
    for condition, goal in GOALS.items():
        axes.axhline(goal, color="tab:green", linewidth=0.8, linestyle=":" if condition == "busy" else "-")
        axes.annotate(f"goal, {condition}", (0, goal), textcoords="offset points", xytext=(2, 2), fontsize=8)
    axes.set_xlabel("training minutes (evaluations not counted)")
    axes.set_ylabel("validation bits per byte")
    axes.set_ylim(top=3.2)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="old,new,gpt2", help="which of old, new, gpt2 (default: all)")
    parser.add_argument("--conditions", default="idle,busy", help="idle, busy or both (default: both)")
    parser.add_argument("--minutes", type=float, default=8.0, help="training minutes per run (default 8)")
    parser.add_argument("--eval_steps", type=int, default=100, help="evaluate every N steps (default 100)")
    parser.add_argument("--isa", choices=("native", "avx2"), default="native", help="run as an AVX2-only CPU")
    parser.add_argument("--tokenizer_name", default=None, help="an existing tokenizer folder (default: train one)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "time_to_quality", help="OUT.json, OUT.png")
    parser.add_argument("--gpt2-worker", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.gpt2_worker:
        gpt2_worker(rest[1:] if rest[:1] == ["--"] else rest)
        return

    import torch

    machine = f"{machine_description(torch.device('cpu'))}; CPU flags: {cpu_flags()}; --isa {args.isa}"
    print(f"# Time to quality: {machine}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-ttq-") as tmp:
        tokenizer = args.tokenizer_name or shakespeare_tokenizer(Path(tmp))
        for condition in args.conditions.split(","):
            for name in args.runs.split(","):
                results.append(run(name, condition, args, tokenizer, Path(tmp)))
    rows = [
        [
            LABELS[r["run"]],
            r["condition"],
            r["precision"],
            r["threads"],
            str(r["steps"]),
            f"{r['steps'] * r['tokens_per_step'] / (r['train_minutes'] * 60):,.0f}",
            f"{r['train_minutes']:.1f}",
            f"**{r['bits_per_byte']:.3f}**",
        ]
        for r in results
    ]
    print()
    print_table(
        ["run", "machine", "precision", "threads", "steps", "train tokens/s", "minutes", "val bits/byte"], rows
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    plot(
        results, f"{args.minutes:g} training minutes, --isa {args.isa}\n{machine[:110]}", args.out.with_suffix(".png")
    )
    print(f"\nCurves: {args.out.with_suffix('.json')}, {args.out.with_suffix('.png')}")
    print(f"After the runs: {machine_description(torch.device('cpu'))}")


if __name__ == "__main__":
    main()
