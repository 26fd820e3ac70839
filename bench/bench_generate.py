"""Generation benchmark: greedy decoding with a KV cache, pg_gpt2 against transformers' GPT2LMHeadModel.

Both models get the same weights and the same prompt (32 random tokens), and produce 128 new tokens
with `generate(do_sample=False)`; the table checks that the two outputs are identical. Rounds
alternate between the models. New tokens/s counts the whole `generate` call (prefill included);
the decode time per token is the median interval between two new tokens, and for batch 1 it is
compared with the memory-bandwidth limit: every weight is read once per token, so a token cannot
take less than (bytes of weights) / (read bandwidth measured here).

    .venv/bin/python bench/bench_generate.py            # tiny and 124M, batch 1 and 8, CPU
    .venv/bin/python bench/bench_generate.py --quick    # smoke run (tiny only, few rounds)
    python bench/bench_generate.py --device cuda --dtype bf16 --compile   # static cache, compiled decoding
    .venv/bin/python bench/bench_generate.py --matvec   # only the weight-times-few-rows products, per shape
    .venv/bin/python bench/bench_generate.py --paths    # pg_gpt2's decoding products: measured choice vs forced

`--dtype bf16` casts the weights (inference); `--compile` generates with a static cache, which makes
transformers compile the decoding step (on GPUs).
"""

from __future__ import annotations

import argparse
import collections
import functools
import statistics
import time

import torch
from common import (
    DTYPES,
    HF,
    PG,
    SHAPES,
    add_common_arguments,
    csv,
    decoding_rows,
    interleave,
    machine_description,
    model_pair,
    preset_config,
    print_table,
    rate,
    read_bandwidth,
    setup,
    synchronize,
    weight_bytes_per_token,
)

from modeling_pg_gpt2 import batched_matvec
from modeling_pg_gpt2.batched_matvec import BatchedMatvecLinear


class TokenClock:
    """A `generate` streamer that only records when each new token arrives (the prompt comes first)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass

    def intervals(self) -> list[float]:
        # stamps[0] is the prompt, stamps[1] the first new token (after the prefill); decoding steps follow.
        return [b - a for a, b in zip(self.stamps[1:], self.stamps[2:], strict=False)]


def generate(model, prompt: torch.Tensor, kwargs: dict, outputs: dict, intervals: list[float], name: str) -> None:
    """One timed `generate` call: keeps the output under `name` and appends the decoding intervals."""
    clock = TokenClock(prompt.device)
    with torch.inference_mode():
        outputs[name] = model.generate(prompt, streamer=clock, **kwargs)
    intervals.extend(clock.intervals())


def every_layer(layers: list[BatchedMatvecLinear], x: torch.Tensor, forward) -> None:
    """One product with each layer's weight, by calling `forward(layer, x)` (without module-call overhead)."""
    with torch.inference_mode():
        for layer in layers:
            forward(layer, x)


def batched_forward(layer: BatchedMatvecLinear, x: torch.Tensor) -> torch.Tensor:
    """The batched form of `layer(x)`, whatever the layer's own measurement chose."""
    return batched_matvec._batched_product(x.reshape(-1, layer.in_features), layer.weight, layer.bias)


def matvec(shapes: list[str], device: torch.device, dtype: torch.dtype, rounds: int) -> None:
    """Each weight shape of the models times 1 and 8 rows: `nn.Linear` against the batched form (pg_gpt2's layers).

    The batched form is timed as `BatchedMatvecLinear` takes it where its measurement finds it faster, whatever
    that measurement says here; the last column says what it decided at first use.

    Decoding reads every weight from memory, not cache: each timed pass multiplies enough copies of the
    weight (256 MB or more) that none is still cached when its turn comes again.
    """
    rows, per_token = [], []
    for shape in shapes:
        model = model_pair(preset_config(SHAPES[shape][0], dropout=0.0), "sdpa", device, dtype)[PG]
        layers_of = collections.Counter(
            (m.out_features, m.in_features, m.bias is not None)
            for m in model.modules()
            if type(m) is BatchedMatvecLinear
        )
        model_bytes = weight_bytes_per_token(model)
        seconds = {"nn.Linear": 0.0, "batched": 0.0, "BatchedMatvecLinear": 0.0}  # one token's products at batch 1
        del model
        for out_features, in_features, bias in sorted(layers_of):
            layer_bytes = out_features * in_features * torch.finfo(dtype).bits // 8
            layers = [
                BatchedMatvecLinear(in_features, out_features, bias=bias, device=device, dtype=dtype)
                for _ in range(max(1, 2**28 // layer_bytes))
            ]
            for n_rows in (1, 8):
                x = torch.randn(n_rows, 1, in_features, device=device, dtype=dtype)
                candidates = {
                    "nn.Linear": functools.partial(every_layer, layers, x, torch.nn.Linear.forward),
                    "batched": functools.partial(every_layer, layers, x, batched_forward),
                }
                timings = interleave(candidates, rounds=rounds, warmup=1, device=device)
                speed = {name: len(layers) * layer_bytes / t.median / 1e9 for name, t in timings.items()}
                with torch.inference_mode():
                    candidate = layers[0]._candidate_rows(x) > 0
                    chosen = candidate and batched_matvec.batched_is_faster(
                        x.reshape(n_rows, -1), layers[0].weight, layers[0].bias
                    )
                speed["BatchedMatvecLinear"] = speed["batched" if chosen else "nn.Linear"]
                if n_rows == 1:
                    for name in seconds:
                        seconds[name] += layers_of[out_features, in_features, bias] * layer_bytes / speed[name] / 1e9
                rows.append(
                    [
                        shape,
                        f"{out_features} × {in_features}",
                        str(n_rows),
                        f"{speed['nn.Linear']:.1f}",
                        f"{speed['batched']:.1f}",
                        f"**{speed['batched'] / speed['nn.Linear']:.2f}×**",
                        "batched" if chosen else ("nn.Linear" if candidate else "nn.Linear (not a candidate)"),
                    ]
                )
            del layers
        per_token.append((shape, model_bytes, seconds))
    headers = ["shape", "weight (out × in)", "rows", "nn.Linear GB/s", "batched GB/s", "speed-up", "first-use choice"]
    print_table(headers, rows)
    bandwidth = read_bandwidth(device)
    print(f"\nOne token's weight products at batch 1, at these speeds (read bandwidth {bandwidth / 1e9:.1f} GB/s):")
    for shape, model_bytes, seconds in per_token:
        floor = model_bytes / bandwidth
        print(
            f"- {shape}: "
            + ", ".join(
                f"{name} {s * 1e3:.2f} ms ({floor / s:.0%} of the bandwidth limit)" for name, s in seconds.items()
            )
        )


def generate_with(choice, model, prompt: torch.Tensor, kwargs: dict, outputs: dict, name: str) -> None:
    """`generate` with `choice` deciding, for every candidate product, whether the batched form runs."""
    measured = batched_matvec.batched_is_faster
    batched_matvec.batched_is_faster = choice
    try:
        generate(model, prompt, kwargs, outputs, [], name)
    finally:
        batched_matvec.batched_is_faster = measured


def decoding_paths(shapes: list[str], batches: list[int], args: argparse.Namespace, device: torch.device) -> None:
    """pg_gpt2 generating with `BatchedMatvecLinear`'s measured choice against the batched form forced on for every
    candidate product (what the CPU-vendor rule did on this machine) and forced off (`nn.Linear`), interleaved."""
    rounds = args.rounds or 3
    measured = batched_matvec.batched_is_faster
    forced = {"measured": measured, "always batched": lambda *a: True, "nn.Linear": lambda *a: False}
    rows = []
    for shape in shapes:
        config = preset_config(SHAPES[shape][0], dropout=0.0)
        model = model_pair(config, args.attn, device, DTYPES[args.dtype])[PG].eval()
        for batch in batches:
            prompt = torch.randint(0, config.vocab_size, (batch, args.prompt), device=device)
            kwargs = dict(
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=args.new,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
            outputs: dict[str, torch.Tensor] = {}
            candidates = {
                name: functools.partial(generate_with, choice, model, prompt, kwargs, outputs, name)
                for name, choice in forced.items()
            }
            timings = interleave(candidates, rounds, 1, device)
            chosen = sorted({key[:3] for key, faster in batched_matvec._FASTER.items() if faster})
            same = all(torch.equal(out, outputs["nn.Linear"]) for out in outputs.values())
            for name, timing in timings.items():
                speed = timings["nn.Linear"].median / timing.median
                tokens = batch * args.new / timing.median
                rows.append([shape, str(batch), name, rate(tokens), f"**{speed:.2f}×**", "yes" if same else "NO"])
            print(f"{shape} batch {batch}: batched form chosen for (out, in, rows) = {chosen or 'none'}", flush=True)
    print()
    print_table(["shape", "batch", "decoding products", "new tokens/s", "vs nn.Linear", "same tokens"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--shapes", default="tiny,124m", help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--batch", default="1,8", help="batch sizes, comma-separated")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (default: sdpa)")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens (default 32)")
    parser.add_argument("--new", type=int, default=128, help="new tokens (default 128)")
    parser.add_argument("--matvec", action="store_true", help="only time the weight products of decoding, per shape")
    parser.add_argument("--paths", action="store_true", help="pg_gpt2 only: measured decoding products vs forced")
    args = parser.parse_args()
    device = setup(args)
    rounds = args.rounds or (3 if args.quick else 6)
    shapes = ["tiny"] if args.quick and args.shapes == "tiny,124m" else csv(args.shapes)
    dtype = DTYPES[args.dtype]

    print(f"# Generation: {machine_description(device)}")
    if args.matvec:
        matvec(shapes, device, dtype, rounds)
        return
    if args.paths:
        decoding_paths(shapes, [int(b) for b in csv(args.batch)], args, device)
        return
    bandwidth = read_bandwidth(device, quick=args.quick)
    print(f"Measured read bandwidth: {bandwidth / 1e9:.1f} GB/s. Rounds: {rounds} (+1 warm-up).")
    print(
        f"Greedy, KV cache, prompt {args.prompt} tokens, {args.new} new tokens, attention {args.attn}, "
        f"dtype {args.dtype}, compile {args.compile}.\n"
    )
    headers = ["shape", "batch", "model", "new tokens/s", "min–max", f"vs {HF}", "decode ms/token", "same tokens"]
    rows, limits = [], []
    for shape in shapes:
        preset = SHAPES[shape][0]
        config = preset_config(preset, dropout=0.0)
        models = model_pair(config, args.attn, device, dtype)
        for model in models.values():
            model.eval()
        for batch in (int(b) for b in csv(args.batch)):
            prompt = torch.randint(0, config.vocab_size, (batch, args.prompt), device=device)
            outputs: dict[str, torch.Tensor] = {}
            clocks: dict[str, list[float]] = {name: [] for name in models}
            kwargs = dict(
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=args.new,
                do_sample=False,
                eos_token_id=None,  # always exactly `new` tokens
                pad_token_id=0,
            )
            if args.compile:
                kwargs["cache_implementation"] = "static"

            candidates = {
                name: functools.partial(generate, model, prompt, kwargs, outputs, clocks[name], name)
                for name, model in models.items()
            }
            timings = interleave(candidates, rounds=rounds, warmup=1, device=device)
            new_tokens = batch * args.new
            same = torch.equal(outputs[PG], outputs[HF])
            rows += decoding_rows(shape, batch, new_tokens, (PG, HF), HF, timings, clocks, same)
            if batch == 1:
                for name in (PG, HF):
                    limits.append((shape, name, weight_bytes_per_token(models[name]), statistics.median(clocks[name])))
            print(
                f"{shape} batch {batch}: {PG} {rate(new_tokens / timings[PG].median)} new tokens/s, "
                f"{HF} {rate(new_tokens / timings[HF].median)}, ratio {timings[HF].median / timings[PG].median:.2f}",
                flush=True,
            )
        del models
    # The machine's bandwidth is the better of the two measurements (other processes only ever lower it).
    bandwidth = max(bandwidth, read_bandwidth(device, quick=args.quick))
    one_core = None
    if device.type == "cpu" and torch.get_num_threads() > 1:
        # BLAS libraries run a matrix-vector product (batch-1 decoding) on one core: what one core reads.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        one_core = read_bandwidth(device, quick=args.quick)
        torch.set_num_threads(threads)
    print()
    print_table(headers, rows)
    print(f"\nBandwidth limit at batch 1 (read bandwidth {bandwidth / 1e9:.1f} GB/s, better of before/after the run):")
    for shape, name, weights, per_token in limits:
        floor = weights / bandwidth
        line = (
            f"- {shape}, {name}: {weights / 1e6:,.0f} MB of weights per token, at least {floor * 1e3:.2f} ms/token; "
            f"decoding takes {per_token * 1e3:.2f} ms/token = **{floor / per_token:.0%}** of the bandwidth limit"
        )
        if one_core:
            line += f" ({weights / one_core / per_token:.0%} of one core's, {one_core / 1e9:.1f} GB/s)"
        print(line)
    print(f"\nAfter the run: {machine_description(device)}")


if __name__ == "__main__":
    main()
