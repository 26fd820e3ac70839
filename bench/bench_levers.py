"""Step cost of the two training levers of `run_clm.py`: `--document_masking` and `--optim muon`.

One training step (forward, backward, optimizer step) of the demo's model (`tiny` preset, 256-token blocks,
batch 8, eager attention) in three variants that alternate round by round in one process, so load that
drifts during the run hits all three alike:

- `adamw`: the recipe's step, fused AdamW on plain packed blocks;
- `adamw + document masking`: the same on a batch where one block holds a document boundary (the model then
  builds a per-document mask for the whole batch; a batch without any boundary costs what `adamw` costs);
- `muon`: `MuonAdamW` (Muon on the hidden matrices, fused AdamW on the rest) on plain blocks.

    .venv/bin/python bench/bench_levers.py --dtype bf16      # bf16 autocast, as the demo on an AVX512-BF16 CPU
    .venv/bin/python bench/bench_levers.py --quick
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import (
    DTYPES,
    add_common_arguments,
    interleave,
    machine_description,
    paired_ratios,
    preset_config,
    print_table,
    rate,
    setup,
    span,
    training_step,
)

from modeling_pg_gpt2 import PgGPT2ForCausalLM
from modeling_pg_gpt2.data.collators import DocumentMaskingCollator
from modeling_pg_gpt2.training.optim import MuonAdamW, hidden_matrices

EOS = 0  # any id: the batch only needs one boundary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=256)
    args = parser.parse_args()
    device = setup(args)
    rounds = args.rounds or (3 if args.quick else 20)
    autocast = DTYPES[args.dtype] if args.dtype != "fp32" else None

    config = preset_config("tiny", dropout=0.0)
    ids = torch.randint(1, config.vocab_size, (args.batch, args.context))
    ids[0, args.context // 2] = EOS
    plain = {"input_ids": ids, "labels": ids}
    masked = DocumentMaskingCollator(EOS)([{"input_ids": row.tolist(), "labels": row.tolist()} for row in ids])
    candidates = {}
    for name in ("adamw", "adamw + document masking", "muon"):
        torch.manual_seed(args.seed)  # the same weights for each
        model = PgGPT2ForCausalLM._from_config(config, attn_implementation="eager").to(device).train()
        adamw = {"lr": 2e-3, "betas": (0.9, 0.99), "weight_decay": 0.1, "fused": True}
        if name == "muon":
            optimizer = MuonAdamW(model.parameters(), muon_params=hidden_matrices(model), **adamw)
        else:
            optimizer = torch.optim.AdamW(model.parameters(), **adamw)
        batch = masked if "masking" in name else plain
        candidates[name] = training_step(model, optimizer, {k: v.to(device) for k, v in batch.items()}, autocast)

    timings = interleave(candidates, rounds=rounds, warmup=2, device=device)
    print(machine_description(device))
    tokens = args.batch * args.context
    rows = []
    for name, timing in timings.items():
        speeds = [tokens / s for s in timing.samples]
        ratios = paired_ratios(timings["adamw"], timing)
        rows.append(
            [name, rate(statistics.median(speeds)), span(min(speeds), max(speeds)), f"{statistics.median(ratios):.2f}"]
        )
    print_table(["step", "tokens/s (median)", "min–max", "speed vs adamw (paired median)"], rows)


if __name__ == "__main__":
    main()
