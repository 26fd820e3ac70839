"""Data benchmark: the corpus pipeline of `run_clm.py` (read, tokenize, pack into blocks), in MB/s of text.

The corpus is the bundled Shakespeare (36 plays, ~5 MB), written `--copies` times into a JSON-lines
file so that the pipeline has enough text to show how it scales with `--preprocessing_num_workers`
(`num_proc` of `datasets.map`). Each measurement runs `prepare_datasets` — the function `run_clm.py` calls:
`load_corpus`, tokenization with the trained tokenizer (`<|endoftext|>` after each document), packing
into blocks — without reusing cached results, once per worker count. Worker
count 0 is `run_clm.py`'s default (no `--preprocessing_num_workers`): no worker processes, the fast
tokenizer encodes on every core with its own threads. The workers run in `run_clm.py`'s environment,
TOKENIZERS_PARALLELISM unset.

    .venv/bin/python bench/bench_data.py                        # 4 copies (~20 MB), num_proc 0, 1 and 2
    .venv/bin/python bench/bench_data.py --quick                # 1 copy, 2 rounds
    .venv/bin/python bench/bench_data.py --copies 10 --num_proc 1,2,4

Every measurement runs in a fresh process (not timed: the imports) with an empty `datasets` cache, as a
first run has; rounds alternate the worker counts. Reading alone (`load_corpus`, JSON to Arrow, document
split) is timed separately; "tokenize + pack" is the rest. Throughput counts UTF-8 bytes of the training
and validation text.
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

from common import csv, machine_description, print_table, rate, shakespeare_tokenizer, span

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, TrainingArguments  # noqa: E402

from modeling_pg_gpt2.data.blocks import DataTrainingArguments, prepare_datasets  # noqa: E402
from modeling_pg_gpt2.data.corpus import CorpusArguments, corpus_bytes, load_corpus, load_shakespeare  # noqa: E402


def write_corpus(folder: Path, copies: int) -> Path:
    """The Shakespeare plays, `copies` times over, one document per line of a JSON-lines file."""
    path = folder / "corpus.jsonl"
    plays = load_shakespeare()["text"]
    with path.open("w", encoding="utf-8") as stream:
        for _ in range(copies):
            for text in plays:
                stream.write(json.dumps({"text": text}) + "\n")
    return path


def timed_pipeline(corpus_file: Path, tokenizer_dir: str, num_proc: int, block_size: int, folder: Path) -> dict:
    """Seconds of `load_corpus` alone and of the whole `prepare_datasets`, without the `datasets` cache.

    Runs in a fresh process per measurement (`--worker`), so that no run inherits another's warm state.
    """
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    corpus = CorpusArguments(train_file=str(corpus_file), preprocessing_num_workers=num_proc or None)
    start = time.perf_counter()
    load_corpus(corpus)
    read = time.perf_counter() - start
    data = DataTrainingArguments(block_size=block_size, overwrite_cache=True)
    training = TrainingArguments(output_dir=str(folder / "unused"), report_to="none")
    start = time.perf_counter()
    packed = prepare_datasets(corpus, data, training, tokenizer, block_size)
    total = time.perf_counter() - start
    return {"read": read, "total": total, "tokens": sum(len(packed[split]) for split in packed) * block_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=None, help="copies of the corpus (default 4; 1 with --quick)")
    parser.add_argument(
        "--num_proc", default="0,1,2", help="worker counts to compare, comma-separated; 0 = none (the default)"
    )
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; 2 with --quick)")
    parser.add_argument("--tokenizer_name", default=None, help="a trained tokenizer (default: train Shakespeare's)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one measurement, printed as JSON for the parent
        os.environ.pop("TOKENIZERS_PARALLELISM", None)  # as run_clm.py runs (common.py turns it off)
        corpus_file, tokenizer_dir, num_proc = args.worker
        result = timed_pipeline(Path(corpus_file), tokenizer_dir, int(num_proc), args.block_size, Path.cwd())
        print(json.dumps(result))
        return
    copies = args.copies or (1 if args.quick else 4)
    rounds = args.rounds or (2 if args.quick else 3)
    workers = [int(n) for n in csv(args.num_proc)]
    datasets.disable_progress_bars()
    print(f"# Data pipeline: {machine_description(torch.device('cpu'))}; datasets {datasets.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        folder = Path(tmp)
        tokenizer_dir = args.tokenizer_name or shakespeare_tokenizer(folder)
        corpus_file = write_corpus(folder, copies)
        corpus = load_corpus(CorpusArguments(train_file=str(corpus_file)))
        n_bytes = sum(corpus_bytes(corpus[split]) for split in corpus)
        print(
            f"Corpus: {copies} x Shakespeare = {n_bytes / 1e6:.1f} MB of UTF-8 in {sum(corpus.num_rows.values())} "
            f"documents; block size {args.block_size}; {rounds} rounds.\n"
        )
        runs: dict[int, list[dict]] = {n: [] for n in workers}
        for round_index in range(rounds):
            for n in workers if round_index % 2 == 0 else workers[::-1]:
                command = [sys.executable, __file__, "--worker", str(corpus_file), tokenizer_dir, str(n)]
                command += ["--block_size", str(args.block_size)]
                # A `datasets` cache of its own: files an earlier run left (even unused) slowed the next one 2x.
                environment = dict(os.environ, HF_DATASETS_CACHE=str(folder / f"cache-{round_index}-{n}"))
                finished = subprocess.run(
                    command, check=True, capture_output=True, text=True, cwd=folder, env=environment
                )
                runs[n].append(json.loads(finished.stdout.strip().splitlines()[-1]))
    rows = []
    single = statistics.median(r["total"] for r in runs[workers[0]])
    for n in workers:
        total = [r["total"] for r in runs[n]]
        read = statistics.median(r["read"] for r in runs[n])
        median = statistics.median(total)
        rows.append(
            [
                str(n),
                f"{median:.1f}",
                f"{n_bytes / median / 1e6:.2f}",
                span(n_bytes / max(total) / 1e6, n_bytes / min(total) / 1e6),
                f"{read:.2f}",
                f"{n_bytes / (median - read) / 1e6:.2f}",
                rate(runs[n][0]["tokens"] / median),
                f"{single / median:.2f}×",
            ]
        )
    headers = ["num_proc", "total s", "MB/s", "min–max", "read s", "tokenize + pack MB/s", "tokens/s", "speed-up"]
    print_table(headers, rows)
    print(f"\nMedians of {rounds} rounds, each in a fresh process. After: {machine_description(torch.device('cpu'))}")


if __name__ == "__main__":
    main()
