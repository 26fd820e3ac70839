"""Your own text: validation bits per byte after 2, 4 and 8 training minutes, corpus size by corpus size.

What a user with a folder of text gets from `run_clm.py --train_file DIR --max_train_minutes M`. For each
corpus and each budget, three recipes train in the same hour, one after another, on the same text with the
same held-out validation text:

- `auto`: the automatic recipe (`run_clm.py --train_file TRAIN --validation_file VAL --max_train_minutes M`:
  no tokenizer, no recipe; it trains its own tokenizer and chooses everything from the corpus, the budget
  and the speed it measures);
- `today`: the plain CPU recipe (`configs/shakespeare-cpu.yaml` with an 8192-token tokenizer trained on the
  same training text by `train_tokenizer.py`), the documented path before the automatic recipe;
- `nanogpt`: nanoGPT's character-level CPU recipe (its own model.py/train.py, unmodified, run by
  `../shared/anchors/nanogpt/run_char_cpu.sh`, MIT), with its iterations chosen so that it trains for the
  same minutes at the speed measured at the start of the bench. Its best checkpoint is then scored on the
  whole validation text (non-overlapping windows of its context, every character), as run_clm.py scores
  the whole validation split with the model it keeps; bits per character become bits per byte through the
  text's characters per byte.

The corpora (built under OUT/corpora, offline): whole plays of the bundled Shakespeare corpus totalling about
0.25, 0.5, 1 and 2 MB and all of them (~4.75 MB), each validated on the same held-out play (Julius Caesar);
and Python's own documentation text (`pydoc_data.topics`, ~0.45 MB, another register), 10% of its topics held
out. Minutes are training minutes: run_clm.py's evaluations are not counted, nanoGPT's few are.

    .venv/bin/python bench/bench_corpus_sizes.py                           # everything: ~5.5 hours, idle machine
    .venv/bin/python bench/bench_corpus_sizes.py --corpora plays-1 --minutes 2 --recipes auto nanogpt

Runs under OUT (default outputs/bench-corpus-sizes: corpora, models; OUT/results.json gets every run as it
ends, so an interrupted bench keeps what it measured and a re-run replaces only the cells it runs). Writes
bench/corpus_sizes.json (the machine and every run) and bench/corpus_sizes.png (bits per byte against
minutes, one panel per corpus, one line per recipe), and prints a Markdown table with the CPU named.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import REPO, machine_description

NANOGPT = REPO.parent / "shared" / "anchors" / "nanogpt"  # ../shared beside the repository, as the project has it
HELD_OUT_PLAY = "Julius Caesar"
PLAY_SIZES = {
    "plays-0.25": 250_000,
    "plays-0.5": 500_000,
    "plays-1": 1_000_000,
    "plays-2": 2_000_000,
    "plays-all": None,
}
CORPORA = [*PLAY_SIZES, "pydoc"]
RECIPES = ("auto", "today", "nanogpt")
SEED = 24
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}


def build_corpora(out: Path) -> dict[str, dict]:
    """Every corpus as OUT/NAME/train/*.txt (one document a file), OUT/NAME/train.txt and OUT/NAME/validation.txt."""
    from modeling_pg_gpt2.data.corpus import load_shakespeare

    plays = load_shakespeare()["text"]
    titles = [text.split("\n", 1)[0].strip() for text in plays]
    held = titles.index(HELD_OUT_PLAY)
    order = [i for i in range(len(plays)) if i != held]
    random.Random(SEED).shuffle(order)
    corpora = {}
    for name, target in PLAY_SIZES.items():
        chosen, total = [], 0
        for i in order:
            size = len(plays[i].encode("utf-8"))
            if target is not None and abs(total + size - target) >= abs(total - target):
                break  # the next play would take the subset farther from its size
            chosen.append(i)
            total += size
        documents = [(re.sub(r"\W+", "-", titles[i].lower()), plays[i]) for i in chosen]
        corpora[name] = _write_corpus(out / name, documents, [plays[held]])
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    names = sorted(topics)
    held_out = set(random.Random(SEED).sample(names, k=len(names) // 10))
    documents = [(name, topics[name]) for name in names if name not in held_out]
    corpora["pydoc"] = _write_corpus(out / "pydoc", documents, [topics[name] for name in sorted(held_out)])
    return corpora


def _write_corpus(folder: Path, documents: list[tuple[str, str]], validation: list[str]) -> dict:
    (folder / "train").mkdir(parents=True, exist_ok=True)
    for index, (name, text) in enumerate(documents):
        (folder / "train" / f"{index:03d}-{name}.txt").write_text(text, encoding="utf-8")
    train = "\n\n".join(text for _, text in documents)
    held = "\n\n".join(validation)
    (folder / "train.txt").write_text(train, encoding="utf-8")  # nanoGPT reads one file
    (folder / "validation.txt").write_text(held, encoding="utf-8")
    return {
        "folder": str(folder),
        "train_bytes": len(train.encode("utf-8")),
        "documents": len(documents),
        "validation_bytes": len(held.encode("utf-8")),
        "validation_chars_per_byte": len(held) / len(held.encode("utf-8")),
    }


def python() -> str:
    return sys.executable


def run_auto(corpus: dict, minutes: float, out: Path) -> dict:
    folder = Path(corpus["folder"])
    command = [
        python(), str(REPO / "run_clm.py"), "--train_file", str(folder / "train"),
        "--validation_file", str(folder / "validation.txt"), "--max_train_minutes", str(minutes),
        "--output_dir", str(out), "--overwrite_output_dir", "--disable_tqdm", "true", "--report_to", "none",
    ]  # fmt: skip
    return _run_clm(command, out)


def run_today(corpus: dict, minutes: float, out: Path) -> dict:
    folder = Path(corpus["folder"])
    tokenizer = out.parent / f"{out.name}-tokenizer"
    subprocess.run(
        [python(), str(REPO / "train_tokenizer.py"), "--train_file", str(folder / "train"), "--validation_file",
         str(folder / "validation.txt"), "--vocab_size", "8192", "--output_dir", str(tokenizer),
         "--overwrite_output_dir"],
        check=True, capture_output=True, env={**os.environ, **OFFLINE},
    )  # fmt: skip
    command = [
        python(), str(REPO / "run_clm.py"), str(REPO / "configs" / "shakespeare-cpu.yaml"),
        "--train_file", str(folder / "train"), "--validation_file", str(folder / "validation.txt"),
        "--tokenizer_name", str(tokenizer), "--max_train_minutes", str(minutes), "--output_dir", str(out),
        "--overwrite_output_dir", "--disable_tqdm", "true", "--report_to", "none",
    ]  # fmt: skip
    return _run_clm(command, out)


def _run_clm(command: list[str], out: Path) -> dict:
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **OFFLINE})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    info = json.loads((out / "training_info.json").read_text())
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    curve = [(e["train_minutes"], e["eval_bits_per_byte"]) for e in history if "eval_bits_per_byte" in e]
    return {
        "bits_per_byte": metrics["eval_bits_per_byte"],
        "curve": curve,
        "steps": info["global_step"],
        "best_step": info["best_global_step"],
        "finished": info["finished"],
        "choices": {name: choice["value"] for name, choice in (info.get("recipe") or {}).items()},
        "wall_seconds": round(time.monotonic() - start, 1),
    }


def nanogpt_iterations_per_second(anchor: Path) -> float:
    """nanoGPT's training iterations per second here: two short runs, their difference cancels the start-up."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text(
            (REPO / "README.md").read_text(encoding="utf-8") * 20, encoding="utf-8"
        )  # any text: speed does not depend on it
        seconds = {}
        for iterations in (100, 400):
            start = time.monotonic()
            subprocess.run(
                ["bash", str(anchor / "run_char_cpu.sh"), str(text), str(text), str(iterations), python()],
                check=True,
                capture_output=True,
            )
            seconds[iterations] = time.monotonic() - start
    return 300 / (seconds[400] - seconds[100])


def run_nanogpt(corpus: dict, minutes: float, iterations_per_second: float, anchor: Path) -> dict:
    folder = Path(corpus["folder"])
    # A multiple of its eval_interval (250), so that its last iteration is evaluated (and kept if best) too.
    iterations = max(250, 250 * round(iterations_per_second * minutes * 60 / 250))
    start = time.monotonic()
    done = subprocess.run(
        ["bash", str(anchor / "run_char_cpu.sh"), str(folder / "train.txt"), str(folder / "validation.txt"),
         str(iterations), python()],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    work = Path(re.search(r"work dir (\S+)\)", done.stdout).group(1))
    curve = [
        (float(m.group(1)) / 60, float(m.group(2)) * corpus["validation_chars_per_byte"])
        for m in re.finditer(r"t=(\d+)s .*-> val ([\d.]+) bits/char", done.stdout)
    ]
    bits_per_char, best_iteration = nanogpt_exact_validation(work)
    return {
        "bits_per_byte": bits_per_char * corpus["validation_chars_per_byte"],
        "curve": curve,  # nanoGPT's own estimates (20 random batches), converted to bits per byte
        "steps": iterations,
        "best_step": best_iteration,
        "wall_seconds": round(time.monotonic() - start, 1),
    }


def nanogpt_exact_validation(work: Path) -> tuple[float, int]:
    """(bits per character of nanoGPT's kept checkpoint on the whole validation text, its iteration).

    Reads nanoGPT's own model.py from its work folder; every character is scored once, in non-overlapping
    windows of the model's context.
    """
    import numpy as np

    sys.path.insert(0, str(work))
    try:
        from model import GPT, GPTConfig  # nanoGPT's model.py, copied into the work folder by run_char_cpu.sh
    finally:
        sys.path.remove(str(work))
    checkpoint = torch.load(work / "out" / "ckpt.pt", map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()})
    model.eval()
    del sys.modules["model"]
    context = checkpoint["model_args"]["block_size"]
    ids = np.fromfile(work / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16).astype(np.int64)
    values = torch.from_numpy(ids)
    windows = (len(values) - 1) // context
    inputs = values[: windows * context].view(windows, context)
    targets = values[1 : windows * context + 1].view(windows, context)
    total = 0.0
    with torch.no_grad():
        for start in range(0, windows, 256):
            logits, _ = model(inputs[start : start + 256], targets[start : start + 256])
            total += torch.nn.functional.cross_entropy(
                logits.view(-1, logits.size(-1)), targets[start : start + 256].reshape(-1), reduction="sum"
            ).item()
    return total / (windows * context) / math.log(2), int(checkpoint["iter_num"])


def write_plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = list(dict.fromkeys(r["corpus"] for r in results))
    columns = min(3, len(corpora))
    rows = math.ceil(len(corpora) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    colours = dict(zip(RECIPES, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    for axis, corpus in zip(axes.flat, corpora, strict=False):
        for recipe in RECIPES:
            rows = sorted(
                (r for r in results if (r["corpus"], r["recipe"]) == (corpus, recipe)), key=lambda r: r["minutes"]
            )
            if not rows:
                continue
            # The evaluations of the longest run as a line (nanoGPT's are its own 20-batch estimates), and the
            # score of the model each run kept as a point.
            curve = rows[-1]["curve"]
            axis.plot(*zip(*curve, strict=True), color=colours[recipe], alpha=0.6, label=f"{recipe}, during the run")
            points = [(r["minutes"], r["bits_per_byte"]) for r in rows]
            axis.plot(*zip(*points, strict=True), "o", color=colours[recipe], label=f"{recipe}, model kept")
        kept = [r["bits_per_byte"] for r in results if r["corpus"] == corpus]
        axis.set_ylim(min(kept) * 0.95, max(kept) * 1.25)  # the first evaluations would flatten the rest
        axis.set_title(corpus)
        axis.set_xlabel("training minutes")
        axis.set_ylabel("validation bits per byte")
        axis.grid(alpha=0.3)
        axis.legend()
    for axis in list(axes.flat)[len(corpora) :]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def table(results: list[dict], minutes: list[float]) -> str:
    lines = [
        "| corpus | MB | "
        + " | ".join(f"{r} {m:g} min" for m in minutes for r in RECIPES)
        + " | auto vs nanoGPT at 8 min |"
    ]
    lines.append("|" + "---|" * (len(minutes) * len(RECIPES) + 3))
    for corpus in dict.fromkeys(r["corpus"] for r in results):
        cells, row = {}, [r for r in results if r["corpus"] == corpus]
        for r in row:
            cells[(r["recipe"], r["minutes"])] = r["bits_per_byte"]
        size = row[0]["train_bytes"] / 1e6
        values = [f"{cells[(r, m)]:.3f}" if (r, m) in cells else "" for m in minutes for r in RECIPES]
        last = max(minutes)
        gain = ""
        if ("auto", last) in cells and ("nanogpt", last) in cells:
            gain = f"{100 * (1 - cells[('auto', last)] / cells[('nanogpt', last)]):+.1f}% lower"
        lines.append(f"| {corpus} | {size:.2f} | " + " | ".join(values) + f" | {gain} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", nargs="+", default=CORPORA, choices=CORPORA)
    parser.add_argument("--minutes", nargs="+", type=float, default=[2, 4, 8])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--nanogpt", type=Path, default=NANOGPT, help="the folder of run_char_cpu.sh")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench-corpus-sizes", help="corpora, runs")
    parser.add_argument("--record", type=Path, default=REPO / "bench" / "corpus_sizes", help="JSON and plot kept")
    parser.add_argument("--replot", action="store_true", help="only redraw the record from OUT/results.json")
    parser.add_argument(
        "--nanogpt_speed",
        type=float,
        help="nanoGPT's iterations/s as an earlier start of the bench measured them (its log's first line): "
        "re-running a cell then gives nanoGPT the iterations of the cells it is compared with",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        args.corpora, args.recipes = [], []
    corpora = build_corpora(args.out / "corpora") if args.corpora else {}
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    for row in results:  # written before the automatic recipe's choices had a key of their own
        if isinstance(row["recipe"], dict):
            row["choices"], row["recipe"] = row["recipe"], "auto"
    speed = args.nanogpt_speed
    if speed is None and "nanogpt" in args.recipes:
        speed = nanogpt_iterations_per_second(args.nanogpt)
    machine = machine_description(torch.device("cpu"))
    print(f"{machine}; nanoGPT: {speed or 0:.2f} iterations/s", flush=True)
    for corpus_name in args.corpora:
        corpus = corpora[corpus_name]
        for minutes in args.minutes:
            for recipe in args.recipes:  # the recipes of a cell one after another: the same hour, the same load
                out = args.out / "runs" / f"{corpus_name}-{recipe}-{minutes:g}"
                if recipe == "auto":
                    measured = run_auto(corpus, minutes, out)
                elif recipe == "today":
                    measured = run_today(corpus, minutes, out)
                else:
                    measured = run_nanogpt(corpus, minutes, speed, args.nanogpt)
                row = {
                    "corpus": corpus_name, "train_bytes": corpus["train_bytes"], "recipe": recipe, "minutes": minutes,
                    "when": time.strftime("%Y-%m-%d %H:%M"), "loadavg": os.getloadavg()[0], **measured,
                }  # fmt: skip
                results = [
                    r for r in results if (r["corpus"], r["recipe"], r["minutes"]) != (corpus_name, recipe, minutes)
                ]
                results.append(row)
                results_file.write_text(json.dumps(results, indent=1) + "\n")
                print(f"{corpus_name} {recipe} {minutes:g} min: {measured['bits_per_byte']:.3f} bits/byte", flush=True)
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.with_suffix(".json").write_text(json.dumps({"machine": machine, "results": results}, indent=1) + "\n")
    write_plot(results, args.record.with_suffix(".png"))
    print(f"\n{machine}\n")
    print(table(results, sorted({r["minutes"] for r in results})))


if __name__ == "__main__":
    main()
