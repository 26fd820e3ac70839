"""Zero-shot evaluation speed: evaluate_lm.py's multiple-choice scoring against lm-evaluation-harness.

Both score the same requests (context, " " + candidate) with the same pg_gpt2 model in the same process:
ours with `modeling_pg_gpt2.evaluation.zero_shot.score_multiple_choice`, lm-evaluation-harness with its `HFLM`
(`--model hf`) `loglikelihood`, both tokenizing the texts themselves, with the same batch size.
Rounds alternate between the two; the table gives tokens/s (tokens read by the model, context and
candidate) as median and min–max, and checks that the two give the same accuracy.

The task is built from the bundled Shakespeare corpus (the `demo` extra): the context is a few
consecutive lines of a play, the candidates the line that follows and three lines drawn at random.
The model has random weights: speed does not depend on what it knows.

    .venv/bin/python bench/bench_eval.py --quick      # tiny model, 40 questions
    .venv/bin/python bench/bench_eval.py              # tiny and GPT-2 124M, 200 questions
    python bench/bench_eval.py --device cuda --presets gpt2 --batch_size 32
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from pathlib import Path

import torch
from common import (
    add_common_arguments,
    csv,
    interleave,
    machine_description,
    print_table,
    rate,
    setup,
    shakespeare_tokenizer,
    span,
)
from transformers import AutoTokenizer

from modeling_pg_gpt2 import PgGPT2Config, PgGPT2ForCausalLM
from modeling_pg_gpt2.data.corpus import load_shakespeare
from modeling_pg_gpt2.evaluation.zero_shot import score_multiple_choice


def shakespeare_questions(count: int, seed: int) -> list[tuple[str, list[str], int]]:
    """`count` (context, four candidate lines, index of the true next line) from the plays."""
    lines = [line.strip() for play in load_shakespeare()["text"] for line in play.splitlines() if line.strip()]
    rng = random.Random(seed)
    questions = []
    for _ in range(count):
        start = rng.randrange(len(lines) - 5)
        span_lines = rng.randint(2, 4)
        context = "\n".join(lines[start : start + span_lines])
        choices = [lines[start + span_lines], *rng.sample(lines, 3)]
        rng.shuffle(choices)
        questions.append((context, choices, choices.index(lines[start + span_lines])))
    return questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--presets", type=csv, default=None, help="model presets (default: tiny,gpt2)")
    parser.add_argument("--questions", type=int, default=None, help="multiple-choice questions (default: 200)")
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()
    device = setup(args)
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    presets = args.presets or (["tiny"] if args.quick else ["tiny", "gpt2"])
    rounds = args.rounds or (2 if args.quick else 3)
    questions = shakespeare_questions(args.questions or (40 if args.quick else 200), args.seed)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = AutoTokenizer.from_pretrained(shakespeare_tokenizer(Path(folder)))
    print(f"Machine: {machine_description(device)}")
    print(f"{len(questions)} questions, 4 candidates each, batch size {args.batch_size}, {rounds} rounds\n")

    rows = []
    for preset in presets:
        config = PgGPT2Config.from_preset(preset, vocab_size=len(tokenizer))
        config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
        model = PgGPT2ForCausalLM(config).eval().to(device)
        context = config.n_positions
        harness = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device=str(device))
        requests = [
            Instance("loglikelihood", {}, (text, " " + choice), index)
            for text, choices, _ in questions
            for index, choice in enumerate(choices)
        ]
        results: dict[str, object] = {}

        def ours(results=results, model=model, context=context) -> None:
            results["ours"] = score_multiple_choice(model, tokenizer, questions, context, args.batch_size, desc=None)

        def theirs(results=results, harness=harness, requests=requests) -> None:
            results["theirs"] = harness.loglikelihood(requests, disable_tqdm=True)

        timings = interleave({"evaluate_lm.py": ours, "lm-eval (hf)": theirs}, rounds, warmup=1, device=device)
        metrics, tokens = results["ours"]
        logprobs = [logprob for logprob, _ in results["theirs"]]
        their_correct = 0
        for number, (_, choices, answer) in enumerate(questions):
            scores = logprobs[4 * number : 4 * number + len(choices)]
            their_correct += scores.index(max(scores)) == answer
        agree = "yes" if abs(their_correct / len(questions) - metrics["accuracy"]) < 1e-9 else "NO"
        base = timings["lm-eval (hf)"]
        for name, timing in timings.items():
            ratio = statistics.median(b / c for b, c in zip(base.samples, timing.samples, strict=True))
            rows.append(
                [preset, name, rate(tokens / timing.median), span(tokens / timing.max, tokens / timing.min),
                 f"{ratio:.2f}x", f"{metrics['accuracy']:.3f}" if name == "evaluate_lm.py" else agree]
            )  # fmt: skip
        del model, harness
        if device.type == "cuda":
            torch.cuda.empty_cache()
    headers = ["model", "scorer", "tokens/s (median)", "min–max", "vs lm-eval", "accuracy / same"]
    print_table(headers, rows)


if __name__ == "__main__":
    main()
