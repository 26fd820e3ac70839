"""ONNX Runtime against torch: greedy decoding of the same pg_gpt2 weights, on the CPU.

The torch side is pg_gpt2's `generate()` (sdpa attention, KV cache); the ONNX side is the graph that
`convert --to onnx` writes, run by onnxruntime through `OnnxCausalLM.generate` (the loop behind
`generate.py --backend onnxruntime`). Both get the same prompt (32 random tokens) and produce 128 new
tokens; the table checks that the tokens are identical. Rounds alternate between the two. New tokens/s
counts the whole call (prefill included); the decode time per token is the median interval between
two new tokens, and at batch 1 it is compared with the memory-bandwidth limit (every weight read once
per token), as in bench_generate.py.

    .venv/bin/python bench/bench_onnx.py            # tiny and 124M, batch 1 and 8
    .venv/bin/python bench/bench_onnx.py --quick    # smoke run (tiny only, few rounds)
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
from pathlib import Path

import onnxruntime
import torch
from bench_generate import TokenClock
from common import (
    SHAPES,
    add_common_arguments,
    csv,
    decoding_rows,
    interleave,
    machine_description,
    preset_config,
    print_table,
    rate,
    read_bandwidth,
    setup,
    weight_bytes_per_token,
)

from modeling_pg_gpt2 import PgGPT2ForCausalLM
from modeling_pg_gpt2.export.layout import pg_config_to_gpt2
from modeling_pg_gpt2.export.onnx import export_model
from modeling_pg_gpt2.generation.onnx import OnnxCausalLM, ort_session

TORCH, ORT = "torch", "onnxruntime"


def decode(model, prompt: torch.Tensor, new: int, outputs: dict, intervals: list[float], name: str) -> None:
    """One timed greedy `generate` call of `new` tokens: keeps the output, appends the decoding intervals."""
    clock = TokenClock(torch.device("cpu"))
    with torch.inference_mode():
        outputs[name] = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            streamer=clock,
        )
    intervals.extend(clock.intervals())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--shapes", default="tiny,124m", help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--batch", default="1,8", help="batch sizes, comma-separated")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens (default 32)")
    parser.add_argument("--new", type=int, default=128, help="new tokens (default 128)")
    args = parser.parse_args()
    if args.device != "cpu" or args.dtype != "fp32" or args.compile:
        parser.error("this benchmark compares the fp32 CPU paths; see bench_generate.py for the others")
    device = setup(args)
    rounds = args.rounds or (3 if args.quick else 6)
    shapes = ["tiny"] if args.quick and args.shapes == "tiny,124m" else csv(args.shapes)

    print(f"# ONNX Runtime vs torch: {machine_description(device)}; onnxruntime {onnxruntime.__version__}")
    bandwidth = read_bandwidth(device, quick=args.quick)
    print(f"Measured read bandwidth: {bandwidth / 1e9:.1f} GB/s. Rounds: {rounds} (+1 warm-up).")
    print(f"Greedy, KV cache, prompt {args.prompt} tokens, {args.new} new tokens, fp32.\n")
    headers = ["shape", "batch", "runtime", "new tokens/s", "min–max", f"vs {TORCH}", "decode ms/token", "same tokens"]
    rows, limits = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for shape in shapes:
            config = preset_config(SHAPES[shape][0], dropout=0.0)
            model = PgGPT2ForCausalLM._from_config(config, attn_implementation="sdpa").eval()
            path = Path(scratch) / f"{shape}.onnx"
            export_model(model, path)
            onnx = OnnxCausalLM(
                ort_session(path, None, args.threads), pg_config_to_gpt2(config), model.generation_config
            )
            models = {TORCH: model, ORT: onnx}
            for batch in (int(b) for b in csv(args.batch)):
                prompt = torch.randint(0, config.vocab_size, (batch, args.prompt))
                outputs: dict[str, torch.Tensor] = {}
                clocks: dict[str, list[float]] = {name: [] for name in models}
                candidates = {
                    name: functools.partial(decode, m, prompt, args.new, outputs, clocks[name], name)
                    for name, m in models.items()
                }
                timings = interleave(candidates, rounds=rounds, warmup=1, device=device)
                new_tokens = batch * args.new
                same = torch.equal(outputs[TORCH], outputs[ORT])
                rows += decoding_rows(shape, batch, new_tokens, (TORCH, ORT), TORCH, timings, clocks, same)
                if batch == 1:
                    for name in (TORCH, ORT):
                        limits.append((shape, name, weight_bytes_per_token(model), statistics.median(clocks[name])))
                print(
                    f"{shape} batch {batch}: {TORCH} {rate(new_tokens / timings[TORCH].median)} new tokens/s, "
                    f"{ORT} {rate(new_tokens / timings[ORT].median)}, "
                    f"ratio {timings[TORCH].median / timings[ORT].median:.2f}",
                    flush=True,
                )
            del models, onnx, model
    # The machine's bandwidth is the better of the two measurements (other processes only ever lower it).
    bandwidth = max(bandwidth, read_bandwidth(device, quick=args.quick))
    print()
    print_table(headers, rows)
    print(f"\nBandwidth limit at batch 1 (read bandwidth {bandwidth / 1e9:.1f} GB/s, better of before/after the run):")
    for shape, name, weights, per_token in limits:
        floor = weights / bandwidth
        print(
            f"- {shape}, {name}: {weights / 1e6:,.0f} MB of weights per token, at least {floor * 1e3:.2f} ms/token; "
            f"decoding takes {per_token * 1e3:.2f} ms/token = **{floor / per_token:.0%}** of the bandwidth limit"
        )
    print(f"\nAfter the run: {machine_description(device)}")


if __name__ == "__main__":
    main()
