"""Recipe benchmark: `run_clm.py`'s plain CPU recipe against GPT2LMHeadModel with the Trainer's defaults.

Both runs train the same model shape from the same initial weights on the same packed Shakespeare
blocks, with the recipe's hyper-parameters (batch, learning rate and schedule, warm-up, weight decay,
betas, clipping, seed) and the same wall-clock budget (`--minutes`). What differs is what the recipe
chooses for speed:

- pg_gpt2: `python run_clm.py configs/shakespeare-cpu.yaml`, the plain CPU recipe as it is (its
  optimizer, precision, attention, thread and compile settings, packing), in the environment this
  script was started in;
- baseline: transformers' `GPT2LMHeadModel` in a plain `Trainer` with its defaults for everything
  else (the default optimizer, fp32, sdpa attention, no compile, torch's thread settings:
  OMP_*/MKL_*/GOMP_* variables are removed).

Mid-run evaluations and checkpoints are switched off for both, so the budget is spent training; each
run ends with one evaluation on the whole validation split (loss, bits per byte). The table gives
training tokens/s (steps done x tokens per step / training time) and the validation bits per byte
reached within the budget.

    .venv/bin/python bench/bench_recipe.py                 # 5 minutes each, about 10 minutes in all
    .venv/bin/python bench/bench_recipe.py --quick         # 1 minute each, a smoke run
    .venv/bin/python bench/bench_recipe.py --repeats 2     # pg, baseline, baseline, pg: medians of 2

The tokenizer is trained first (a few seconds) unless `--tokenizer_name` names one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import HF, PG, REPO, machine_description, print_table, rate, shakespeare_tokenizer

RECIPE = REPO / "configs" / "shakespeare-cpu.yaml"
# Switch off what is not training (mid-run evaluations, checkpoints, loggers); the recipe keeps the rest.
RUN_OVERRIDES = [
    "--overwrite_output_dir",
    "--eval_strategy",
    "no",
    "--save_strategy",
    "no",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
]
# The recipe's hyper-parameters, which the baseline shares; everything else stays at the Trainer's default.
SHARED_HYPERPARAMETERS = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "max_steps",
    "num_train_epochs",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "seed",
    "logging_steps",
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS")


def train_baseline(argv: list[str], minutes: float, result_file: Path) -> None:
    """The baseline, in its own process: GPT2LMHeadModel, the recipe's data and hyper-parameters, Trainer defaults."""
    import transformers
    from transformers import GPT2LMHeadModel, Trainer, TrainingArguments, default_data_collator, set_seed

    from modeling_pg_gpt2.cli.arguments import make_parser, parse_arguments
    from modeling_pg_gpt2.data.blocks import DataTrainingArguments, prepare_datasets
    from modeling_pg_gpt2.data.corpus import CorpusArguments
    from modeling_pg_gpt2.evaluation.metrics import ComputeLMMetrics, preprocess_logits_for_metrics
    from modeling_pg_gpt2.export.layout import pg_config_to_gpt2, pg_state_dict_to_gpt2
    from modeling_pg_gpt2.training.arguments import CLMTrainingArguments
    from modeling_pg_gpt2.training.callbacks import ScheduleCallback
    from modeling_pg_gpt2.training.model_init import ModelArguments, build_model, run_tokenizer

    transformers.logging.set_verbosity_error()
    parser = make_parser((ModelArguments, CorpusArguments, DataTrainingArguments, CLMTrainingArguments))
    model_args, corpus_args, data_args, recipe_args = parse_arguments(parser, argv)
    set_seed(recipe_args.seed)  # as run_clm.py does before building the model: the same initial weights
    tokenizer = run_tokenizer(model_args)
    ours, _ = build_model(model_args, tokenizer)
    model = GPT2LMHeadModel(pg_config_to_gpt2(ours.config))
    model.load_state_dict(pg_state_dict_to_gpt2(ours.state_dict()))
    block_size = data_args.block_size or min(ours.config.n_positions, 1024)
    del ours

    shared = {name: getattr(recipe_args, name) for name in SHARED_HYPERPARAMETERS}
    shared["lr_scheduler_type"] = str(getattr(shared["lr_scheduler_type"], "value", shared["lr_scheduler_type"]))
    args = TrainingArguments(
        output_dir=recipe_args.output_dir, eval_strategy="no", save_strategy="no", report_to="none", **shared
    )
    datasets = prepare_datasets(corpus_args, data_args, args, tokenizer, block_size)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"],
        data_collator=default_data_collator,
        compute_metrics=ComputeLMMetrics(tokenizer),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        callbacks=[ScheduleCallback(minutes)],
    )
    train_metrics = trainer.train().metrics
    eval_metrics = trainer.evaluate()
    tokens_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * block_size
    result = {
        **train_metrics,
        **eval_metrics,
        "global_step": trainer.state.global_step,
        "tokens_per_step": tokens_per_step,
        "optim": str(getattr(args.optim, "value", args.optim)),
        "torch_compile": args.torch_compile,
        "bf16": args.bf16,
        "attn_implementation": model.config._attn_implementation,
        "shared_hyperparameters": shared,
    }
    result_file.write_text(json.dumps(result, indent=2, default=str) + "\n")


def run(name: str, recipe_argv: list[str], minutes: float, folder: Path) -> dict:
    """One training run in a fresh process; returns its metrics plus `global_step` and `tokens_per_step`."""
    output_dir = folder / f"{name}-{time.monotonic_ns()}"
    argv = [*recipe_argv, "--output_dir", str(output_dir), "--max_train_minutes", str(minutes), *RUN_OVERRIDES]
    environment = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if name == PG:
        command = [sys.executable, str(REPO / "run_clm.py"), *argv, "--log_level", "warning"]
    else:
        for variable in THREAD_VARIABLES:  # the baseline gets torch's defaults, whatever this shell sets
            environment.pop(variable, None)
        result_file = output_dir.with_suffix(".json")
        command = [sys.executable, __file__, "--baseline-worker", str(result_file), "--minutes", str(minutes)]
        command += ["--", *argv]
    print(f"  {name}: training for up to {minutes:g} minutes...", flush=True)
    log = output_dir.with_suffix(".log")
    with log.open("w") as stream:
        finished = subprocess.run(command, cwd=REPO, env=environment, stdout=stream, stderr=subprocess.STDOUT)
    if finished.returncode != 0:
        sys.exit(f"error: the {name} run failed; its last lines:\n" + "\n".join(log.read_text().splitlines()[-20:]))
    if name == PG:
        metrics = json.loads((output_dir / "metrics.json").read_text())
        info = json.loads((output_dir / "training_info.json").read_text())
        metrics.update(
            global_step=info["global_step"],
            tokens_per_step=info["tokens_per_step"],
            optim=info["optim"],
            torch_compile=info["torch_compile"],
            bf16=info["bf16"],
            attn_implementation=info["attn_implementation"],
        )
        return metrics
    return json.loads(result_file.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock budget of each run (default 5)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, in the order pg, hf, hf, pg, ...")
    parser.add_argument("--recipe", default=str(RECIPE), help="the run_clm.py recipe (default: the CPU demo)")
    parser.add_argument("--tokenizer_name", default=None, help="an existing tokenizer folder (default: train one)")
    parser.add_argument("--quick", action="store_true", help="1 minute each")
    parser.add_argument("--baseline-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    minutes = args.minutes or (1.0 if args.quick else 5.0)
    if args.baseline_worker:
        train_baseline(rest[1:] if rest[:1] == ["--"] else rest, minutes, args.baseline_worker)
        return

    import torch  # only the parent reports the machine; the runs import everything themselves

    print(f"# Recipe: {machine_description(torch.device('cpu'))}")
    print(f"Recipe {args.recipe}, budget {minutes:g} minutes per run, {args.repeats} run(s) each.")
    results: dict[str, list[dict]] = {PG: [], HF: []}
    with tempfile.TemporaryDirectory(prefix="bench-recipe-") as tmp:
        folder = Path(tmp)
        tokenizer = args.tokenizer_name or shakespeare_tokenizer(folder)
        recipe_argv = [args.recipe, "--tokenizer_name", tokenizer]
        for repeat in range(args.repeats):
            for name in (PG, HF) if repeat % 2 == 0 else (HF, PG):
                results[name].append(run(name, recipe_argv, minutes, folder))

    def median(name: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in results[name])

    def tokens_per_second(result: dict) -> float:
        return result["global_step"] * result["tokens_per_step"] / result["train_runtime"]

    speed = {name: statistics.median(tokens_per_second(r) for r in results[name]) for name in results}
    rows = []
    for name in (PG, HF):
        first = results[name][0]
        rows.append(
            [
                name,
                f"{first['optim']}, {'bf16' if first['bf16'] else 'fp32'}, {first['attn_implementation']}, "
                f"compile {first['torch_compile']}",
                f"{median(name, 'global_step'):.0f}",
                rate(speed[name]),
                f"**{speed[name] / speed[HF]:.2f}×**" if name == PG else "1",
                f"{median(name, 'eval_loss'):.3f}",
                f"**{median(name, 'eval_bits_per_byte'):.3f}**",
            ]
        )
    print()
    print_table(
        [
            "run",
            "optimizer, precision, attention, compile",
            "steps",
            "train tokens/s",
            f"vs {HF}",
            "val loss",
            "val bits/byte",
        ],
        rows,
    )
    for name in (PG, HF):
        for r in results[name]:
            print(
                f"- {name}: {r['global_step']} steps in {r['train_runtime']:.0f} s, {rate(tokens_per_second(r))} "
                f"tokens/s, val loss {r['eval_loss']:.4f}, bits/byte {r['eval_bits_per_byte']:.4f}"
            )
    print(f"\nAfter the runs: {machine_description(torch.device('cpu'))}")


if __name__ == "__main__":
    main()
