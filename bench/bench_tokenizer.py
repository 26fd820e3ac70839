"""Benchmark: tokenizer training time and encode throughput on the bundled Shakespeare corpus.

    python bench/bench_tokenizer.py                      # vocab sizes 8192 and 50257, 3 runs each
    python bench/bench_tokenizer.py --vocab_sizes 8192 --repeats 5

For each vocabulary size it trains the tokenizer exactly as `train_tokenizer.py` does (corpus streamed
from the `datasets` table), then encodes every play, whole, with the `tokenizers` batch encoder and
with the transformers tokenizer that `AutoTokenizer` loads. Times are medians over `--repeats` runs
(shared machines have CPU steal); throughput is UTF-8 bytes per second. Bytes per token are measured on
the held-out plays (what the training report prints) and on the whole corpus.

A corpus only supports so many merges: "vocab got" is the size the trainer reached (5 MB of Shakespeare
has fewer distinct words than GPT-2's 50257 tokens).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import tokenizers
import transformers
from transformers import AutoTokenizer

from modeling_pg_gpt2.data.corpus import CorpusArguments, corpus_bytes, load_corpus
from modeling_pg_gpt2.data.tokenizer import count_tokens, iter_text_batches, to_transformers, train_bpe


def median_seconds(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of `repeats` calls of `run`, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def cpu_name() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab_sizes", type=int, nargs="+", default=[8192, 50257])
    parser.add_argument("--min_frequency", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()  # whole plays exceed model_max_length; that is the point here

    corpus = load_corpus(CorpusArguments(dataset_name="shakespeare"))
    train, validation = corpus["train"], corpus["validation"]
    documents = list(train["text"]) + list(validation["text"])
    total_bytes = corpus_bytes(train) + corpus_bytes(validation)
    validation_bytes = corpus_bytes(validation)

    print(
        f"Shakespeare: {len(documents)} plays, {total_bytes / 1e6:.2f} MB "
        f"(train {train.num_rows} plays, validation {validation.num_rows} plays, {validation_bytes / 1e6:.2f} MB)"
    )
    print(
        f"{cpu_name()}, {os.cpu_count()} CPUs; tokenizers {tokenizers.__version__}, "
        f"transformers {transformers.__version__}, TOKENIZERS_PARALLELISM="
        f"{os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}; median of {args.repeats} runs\n"
    )
    header = (
        "| vocab asked | vocab got | train time (s) | encode, tokenizers batch (MB/s) | encode, AutoTokenizer (MB/s) "
        "| bytes/token (validation) | bytes/token (all) |"
    )
    print(header)
    print("|---:|---:|---:|---:|---:|---:|---:|")

    for vocab_size in args.vocab_sizes:
        train_seconds, tokenizer = median_seconds(
            lambda vocab_size=vocab_size: train_bpe(iter_text_batches(train), vocab_size, args.min_frequency),
            args.repeats,
        )
        with tempfile.TemporaryDirectory() as folder:
            to_transformers(tokenizer).save_pretrained(folder)
            auto = AutoTokenizer.from_pretrained(Path(folder))
        fast_seconds, encodings = median_seconds(
            lambda tokenizer=tokenizer: tokenizer.encode_batch_fast(documents, add_special_tokens=False),
            args.repeats,
        )
        auto_seconds, _ = median_seconds(lambda auto=auto: auto(documents)["input_ids"], args.repeats)
        all_tokens = sum(len(encoding.ids) for encoding in encodings)
        validation_tokens = count_tokens(tokenizer, validation)
        print(
            f"| {vocab_size} | {tokenizer.get_vocab_size()} | {train_seconds:.2f} "
            f"| {total_bytes / fast_seconds / 1e6:.2f} "
            f"| {total_bytes / auto_seconds / 1e6:.2f} | {validation_bytes / validation_tokens:.3f} "
            f"| {total_bytes / all_tokens:.3f} |"
        )


if __name__ == "__main__":
    main()
