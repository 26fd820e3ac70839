"""Scale benchmark: a synthetic multi-GB corpus prepared into blocks, peak memory and tokens/s per path.

Issue 14's goal: memory is bounded by the block, not the corpus (peak resident memory < 2 GB whatever the
corpus size). The corpus is `--size_gb` of JSON-lines shards (one document per row, 2-16 KB each) cut from
the bundled Shakespeare at random offsets, so the text tokenizes like real text. Each path runs in a fresh
process with an empty `datasets` cache of its own, and the parent samples the memory of that process and
all its workers every 0.2 s:

- `prepare`: `prepare_data.py`'s `prepare_corpus` (one map pass, each worker writing its blocks into the folder);
- `map`: `run_clm.py`'s map-style path, `data.prepare_datasets` (tokenized into the `datasets` cache,
  then packed into it, as before every run);
- `stream`: `run_clm.py --streaming`'s data, `data.streaming_datasets` (documents read, tokenized and packed on
  the fly, 1000 at a time), iterated once over the whole corpus without training: nothing is cached or
  written, so its memory is that of the stream alone. The training stream repeats without end (the Trainer's
  `--max_steps` stops it); the pass ends where the stream's `state_dict()` says it starts over.

Peak memory is the proportional set size (PSS) summed over the processes: a page shared by several (a forked
worker's copy-on-write pages) counts once, where a sum of RSS counts it in each. It includes clean pages of
memory-mapped Arrow files, which the kernel can drop at any time; the anonymous part is what the processes
really hold. The main process's own peak RSS is shown as well, and the largest RSS of any one process.
Tokens/s counts the tokens in the blocks (train + validation) over the whole run, reading included.

    .venv/bin/python bench/bench_scale.py --size_gb 2            # ~2 GB corpus, the three paths, 2 workers
    .venv/bin/python bench/bench_scale.py --size_gb 0.2 --paths prepare --num_proc 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
from common import csv, machine_description, print_table, rate, shakespeare_tokenizer

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402

PATHS = ("prepare", "map", "stream")
SHARD_BYTES = 256 * 2**20


def write_corpus(folder: Path, size_gb: float, seed: int = 0) -> tuple[int, int]:
    """JSON-lines shards of `size_gb` GB of Shakespeare cut at random offsets: (bytes of text, documents)."""
    from modeling_pg_gpt2.data.corpus import load_shakespeare

    text = "\n".join(load_shakespeare()["text"])
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    target, written, documents, shard = int(size_gb * 1e9), 0, 0, None
    while written < target:
        if shard is None or shard.tell() > SHARD_BYTES:
            if shard is not None:
                shard.close()
            shard = (folder / f"shard-{documents:09d}.jsonl").open("w", encoding="utf-8")
        length = rng.randint(2_000, 16_000)
        start = rng.randrange(len(text) - length)
        document = text[start : start + length]
        shard.write(json.dumps({"text": document}) + "\n")
        written += len(document.encode("utf-8"))
        documents += 1
    shard.close()
    return written, documents


def run_path(path: str, corpus: Path, tokenizer_dir: str, num_proc: int, block_size: int, work: Path) -> dict:
    """One path in this process (the `--worker` side): seconds and tokens in the blocks."""
    datasets.disable_progress_bars()
    from modeling_pg_gpt2.data.corpus import CorpusArguments

    corpus_args = CorpusArguments(train_file=str(corpus), preprocessing_num_workers=num_proc or None)
    start = time.perf_counter()
    if path == "prepare":
        from modeling_pg_gpt2.data.prepared import PrepareArguments, prepare_corpus

        arguments = PrepareArguments(
            output_dir=str(work / "prepared"), tokenizer_name=tokenizer_dir, block_size=block_size
        )
        tokens = sum(prepare_corpus(corpus_args, arguments).tokens.values())
    elif path == "stream":
        from transformers import AutoTokenizer, TrainingArguments

        from modeling_pg_gpt2.data.blocks import DataTrainingArguments, streaming_datasets

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        # As run_clm.py --streaming --do_train --max_steps N calls it; max_steps only passes its check.
        training = TrainingArguments(output_dir=str(work / "unused"), report_to="none", do_train=True, max_steps=1)
        data = DataTrainingArguments(block_size=block_size, streaming=True)
        streams = streaming_datasets(corpus_args, data, training, tokenizer, block_size)
        blocks = len(streams["validation"])
        for _ in streams["train"]:
            if streams["train"].state_dict()["examples_iterable"]["repeat_index"] > 0:
                break  # the first block of the second pass
            blocks += 1
        tokens = blocks * block_size
    else:
        from transformers import AutoTokenizer, TrainingArguments

        from modeling_pg_gpt2.data.blocks import DataTrainingArguments, prepare_datasets

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        training = TrainingArguments(output_dir=str(work / "unused"), report_to="none")
        packed = prepare_datasets(
            corpus_args, DataTrainingArguments(block_size=block_size), training, tokenizer, block_size
        )
        tokens = sum(len(packed[split]) for split in packed) * block_size
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


def _proportional_bytes(process: psutil.Process) -> tuple[int, int]:
    """(Pss, Pss_Anon) of a process: pages shared with others (a forked worker's copy-on-write pages, a file
    mapped by several workers) count once in a sum over processes, where RSS would count them in each."""
    values = {}
    for line in Path(f"/proc/{process.pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Pss", "Pss_Anon"):
            values[name] = int(rest.split()[0]) * 1024
    return values.get("Pss", 0), values.get("Pss_Anon", 0)


def measure(path: str, corpus: Path, tokenizer_dir: str, num_proc: int, block_size: int, work: Path) -> dict:
    """Run one path in a fresh process; sample the memory of it and its workers until it ends."""
    work.mkdir(parents=True)
    command = [sys.executable, __file__, "--worker", path, str(corpus), tokenizer_dir, str(num_proc)]
    command += ["--block_size", str(block_size), "--work", str(work)]
    environment = dict(os.environ, HF_DATASETS_CACHE=str(work / "cache"))
    environment.pop("TOKENIZERS_PARALLELISM", None)  # as run_clm.py and prepare_data.py run
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    parent = psutil.Process(child.pid)
    peak_pss = peak_anon = peak_main = peak_any = 0
    while child.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            pss, anon = (sum(values) for values in zip(*(_proportional_bytes(p) for p in tree), strict=True))
            rss = [p.memory_info().rss for p in tree]
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            continue  # a worker ended between listing and reading
        peak_pss, peak_anon = max(peak_pss, pss), max(peak_anon, anon)
        peak_main, peak_any = max(peak_main, rss[0]), max(peak_any, *rss)
        time.sleep(0.2)
    out, err = child.communicate()
    if child.returncode != 0:
        sys.exit(f"error: the {path} path failed:\n{err[-3000:]}")
    disk = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
    return {**json.loads(out.strip().splitlines()[-1]), "peak_pss": peak_pss, "peak_anon": peak_anon,
            "peak_main": peak_main, "peak_any": peak_any, "disk": disk}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size_gb", type=float, default=2.0, help="corpus size in GB of UTF-8 text")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"paths to measure, of {', '.join(PATHS)}")
    parser.add_argument("--num_proc", type=int, default=2, help="--preprocessing_num_workers (0: none)")
    parser.add_argument("--block_size", type=int, default=1024)
    parser.add_argument("--workdir", default="/tmp/pg-gpt2-bench-scale", help="scratch folder, deleted at the end")
    parser.add_argument("--tokenizer_name", default=None, help="a trained tokenizer (default: train Shakespeare's)")
    parser.add_argument("--worker", nargs=4, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one measurement, printed as JSON for the parent
        path, corpus, tokenizer_dir, num_proc = args.worker
        result = run_path(path, Path(corpus), tokenizer_dir, int(num_proc), args.block_size, Path(args.work))
        print(json.dumps(result))
        return
    paths = csv(args.paths)
    if unknown := set(paths) - set(PATHS):
        parser.error(f"unknown path(s) {', '.join(sorted(unknown))}")
    workdir = Path(args.workdir)
    if workdir.exists():
        parser.error(f"--workdir {workdir} exists; remove it or choose another")
    print(f"# Scale: {machine_description(torch.device('cpu'))}; datasets {datasets.__version__}", flush=True)
    try:
        tokenizer_dir = args.tokenizer_name or shakespeare_tokenizer(workdir)
        start = time.perf_counter()
        n_bytes, documents = write_corpus(workdir / "corpus", args.size_gb)
        print(f"Corpus: {n_bytes / 1e9:.2f} GB of text in {documents:,} documents "
              f"(written in {time.perf_counter() - start:.0f} s); block size {args.block_size}, "
              f"num_proc {args.num_proc}.\n", flush=True)  # fmt: skip
        rows = []
        for path in paths:
            result = measure(path, workdir / "corpus", tokenizer_dir, args.num_proc, args.block_size, workdir / path)
            shutil.rmtree(workdir / path)
            rows.append([
                path, f"{result['seconds']:.0f}", rate(result["tokens"] / result["seconds"]),
                f"{n_bytes / result['seconds'] / 1e6:.2f}", f"{result['peak_pss'] / 2**30:.2f}",
                f"{result['peak_anon'] / 2**30:.2f}", f"{result['peak_main'] / 2**30:.2f}",
                f"{result['peak_any'] / 2**30:.2f}",
                f"{result['disk'] / 2**30:.2f}", f"{result['tokens'] / 1e6:.1f}",
            ])  # fmt: skip
            print(json.dumps({"path": path, **result}), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    headers = ["path", "s", "tokens/s", "MB/s", "peak memory GiB (PSS, all processes)", "of it anonymous GiB",
               "peak RSS main GiB",
               "peak RSS of any process GiB", "disk GiB", "M tokens"]  # fmt: skip
    print()
    print_table(headers, rows)
    print(f"\nAfter: {machine_description(torch.device('cpu'))}")


if __name__ == "__main__":
    main()
