"""evaluate_lm.py: perplexity, LAMBADA and multiple choice, checked against transformers' GPT-2 on the same weights."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT, gpt2_twin, saved_small_model
from huggingface_hub import ModelCard
from transformers import AutoTokenizer, GPT2LMHeadModel

from modeling_pg_gpt2 import PgGPT2ForCausalLM
from modeling_pg_gpt2.common.errors import UserError
from modeling_pg_gpt2.evaluation.scoring import encode_pair, rolling_requests, score_requests
from modeling_pg_gpt2.evaluation.tasks import EvalTasksCallback
from modeling_pg_gpt2.evaluation.zero_shot import EvaluationArguments, evaluate_model

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
CONTEXT = 32
TEXT = (
    "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father and refuse thy name.\n\n"
)
CONTEXTS = [
    "But soft, what light through yonder",
    "It is the east, and Juliet is",
    "O Romeo, Romeo! wherefore art",
    "Deny thy father and refuse thy",
    "ROMEO: But soft, what",
    "JULIET: O Romeo,",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A small random pg_gpt2 saved like run_clm.py saves one, with a tokenizer trained here."""
    return saved_small_model(tmp_path_factory.mktemp("evaluate"), TEXT, CONTEXT)


@pytest.fixture(scope="module")
def gpt2_dir(model_dir) -> Path:
    """The same model as a native transformers GPT-2 checkpoint, written by the project's converter."""
    dst = model_dir.parent / "model-gpt2"
    subprocess.run(
        [sys.executable, str(ROOT / "convert.py"), str(model_dir), str(dst), "--to", "gpt2"],
        cwd=ROOT, env=ENV, check=True, capture_output=True,
    )  # fmt: skip
    assert json.loads((dst / "config.json").read_text())["model_type"] == "gpt2"
    return dst


@pytest.fixture(scope="module")
def twin(model_dir) -> GPT2LMHeadModel:
    return gpt2_twin(PgGPT2ForCausalLM.from_pretrained(model_dir).eval())


def _logprob(model: GPT2LMHeadModel, context: list[int], targets: list[int]) -> float:
    """log p(targets | context) from one plain forward pass (the last target is never an input)."""
    ids = torch.tensor([context + targets[:-1]])
    with torch.no_grad():
        logprobs = model(ids).logits[0, len(context) - 1 :].log_softmax(-1)  # rows predicting the targets
    return logprobs[torch.arange(len(targets)), torch.tensor(targets)].sum().item()


def _evaluate(model, task: str, tmp_path: Path, **kwargs) -> dict:
    args = EvaluationArguments(task=task, output_file=str(tmp_path / f"{task}.json"), device="cpu", **kwargs)
    stream = io.StringIO()
    results = evaluate_model(model, args, stream=stream)
    assert json.loads((tmp_path / f"{task}.json").read_text())["metrics"] == results["metrics"]
    for name in results["metrics"]:  # every figure printed with its name
        assert name.replace("_", " ") + " " in stream.getvalue()
    return results["metrics"]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("stride", [7, CONTEXT])  # stride 1: test_stride_one_gives_each_token_the_full_window
def test_perplexity_matches_an_independent_gpt2_loop(model_dir, twin, tmp_path, stride):
    """Every token scored once, each with the context the stride gives it, summed by a per-token loop."""
    text = TEXT
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    metrics = _evaluate(model_dir, "perplexity", tmp_path, data_file=str(tmp_path / "text.txt"), stride=stride)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = [tokenizer.eos_token_id] + tokenizer(text)["input_ids"]
    assert len(ids) > 2 * CONTEXT  # several windows
    total = 0.0
    for j in range(1, len(ids)):  # token j is in the window of the `stride` tokens from `first`
        first = 1 + (j - 1) // stride * stride
        end = min(first + stride, len(ids))
        start = max(0, end - 1 - CONTEXT)  # as many tokens before the window's end as the model sees
        total += _logprob(twin, ids[start:j], [ids[j]])
    n_tokens, words, n_bytes = len(ids) - 1, len(text.split()), len(text.encode())
    assert metrics["tokens"] == n_tokens and metrics["words"] == words and metrics["bytes"] == n_bytes
    assert metrics["token_perplexity"] == pytest.approx(math.exp(-total / n_tokens), rel=1e-5)
    assert metrics["word_perplexity"] == pytest.approx(math.exp(-total / words), rel=1e-5)
    assert metrics["bits_per_byte"] == pytest.approx(-total / math.log(2) / n_bytes, rel=1e-5)


def test_stride_one_gives_each_token_the_full_window():
    ids = torch.arange(10, 30)
    requests = rolling_requests(ids, 0, max_length=4, stride=1)
    assert len(requests) == len(ids)
    for j, (tokens, n) in enumerate(requests, 1):  # token j of [0, *ids] with the 4 before it
        stream = [0, *ids.tolist()]
        assert n == 1 and tokens.tolist() == stream[max(0, j - 4) : j + 1]
    windows = rolling_requests(ids, 0, max_length=4, stride=4)  # lm-evaluation-harness' rolling windows
    assert sum(n for _, n in windows) == len(ids) and all(len(tokens) <= 5 for tokens, _ in windows)
    with pytest.raises(UserError, match="--stride must be between 1 and the window's length 4"):
        rolling_requests(ids, 0, max_length=4, stride=5)


def _lambada_passages(tokenizer, twin) -> list[str]:
    """Each context, then the word greedy decoding writes after it if that token is a whole word, else "window"."""
    passages = []
    for context in CONTEXTS:
        ids = tokenizer(context)["input_ids"]
        out = twin.generate(torch.tensor([ids]), max_new_tokens=1, do_sample=False, pad_token_id=0)
        word = tokenizer.decode(out[0, len(ids) :])
        greedy_word = word.startswith(" ") and word.strip().isalpha()
        passages.append(context + (word if greedy_word else " window"))
    return passages


def test_lambada_matches_greedy_generation_of_transformers_gpt2(model_dir, twin, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    passages = _lambada_passages(tokenizer, twin)
    rows = [{"text": passage} for passage in passages]
    metrics = _evaluate(model_dir, "lambada", tmp_path, data_file=str(_write_jsonl(tmp_path / "l.jsonl", rows)))

    hits, logprobs = 0, []
    for passage in passages:
        context, word = passage.rsplit(" ", 1)
        context_ids = tokenizer(context)["input_ids"]
        word_ids = tokenizer(passage)["input_ids"][len(context_ids) :]
        out = twin.generate(torch.tensor([context_ids]), max_new_tokens=len(word_ids), do_sample=False, pad_token_id=0)
        hits += out[0, len(context_ids) :].tolist() == word_ids
        logprobs.append(_logprob(twin, context_ids, word_ids))
    assert hits > 0  # the test checks real hits, not only misses
    assert metrics["examples"] == len(passages)
    assert metrics["accuracy"] == pytest.approx(hits / len(passages))
    assert metrics["perplexity"] == pytest.approx(math.exp(-sum(logprobs) / len(passages)), rel=1e-5)


def _choice_rows(tokenizer, twin) -> list[dict]:
    """Each context with four candidates; the answer is the greedy continuation for some of them."""
    rows = []
    for number, context in enumerate(CONTEXTS):
        ids = tokenizer(context)["input_ids"]
        out = twin.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False, pad_token_id=0)
        greedy = tokenizer.decode(out[0, len(ids) :]).strip() or "light"
        choices = ["the sun", "window breaks", greedy, "Juliet is the sun and Romeo"]
        label = 2 if number % 2 == 0 else number % 4
        rows.append({"context": context, "choices": choices, "label": [label, str(label), choices[label]][number % 3]})
    return rows


def test_multiple_choice_matches_transformers_gpt2(model_dir, twin, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = _choice_rows(tokenizer, twin)
    metrics = _evaluate(
        model_dir, "multiple_choice", tmp_path, data_file=str(_write_jsonl(tmp_path / "mc.jsonl", rows))
    )

    correct = correct_norm = 0
    for row in rows:
        context_ids = tokenizer(row["context"])["input_ids"]
        scores = []
        for choice in row["choices"]:
            whole = tokenizer(row["context"] + " " + choice)["input_ids"]
            assert whole[: len(context_ids)] == context_ids
            scores.append(_logprob(twin, context_ids, whole[len(context_ids) :]))
        answer = row["choices"].index(row["label"]) if row["label"] in row["choices"] else int(row["label"])
        normalised = [score / len(choice) for score, choice in zip(scores, row["choices"], strict=True)]
        correct += scores.index(max(scores)) == answer
        correct_norm += normalised.index(max(normalised)) == answer
    assert correct > 0
    assert metrics["examples"] == len(rows)
    assert metrics["accuracy"] == pytest.approx(correct / len(rows))
    assert metrics["accuracy_norm"] == pytest.approx(correct_norm / len(rows))


def test_batching_and_truncation_do_not_change_the_scores(model_dir, twin, tmp_path):
    """Long contexts keep their end (the model's window); batch size 1 or 16 give the same numbers."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = _choice_rows(tokenizer, twin)
    rows[0]["context"] = TEXT * 3 + rows[0]["context"]  # far longer than the 32-token context
    data = str(_write_jsonl(tmp_path / "mc.jsonl", rows))
    one = _evaluate(model_dir, "multiple_choice", tmp_path, data_file=data, batch_size=1)
    many = _evaluate(model_dir, "multiple_choice", tmp_path, data_file=data, batch_size=16)
    assert one == many


@pytest.mark.slow
def test_command_line_on_pg_gpt2_and_native_gpt2_checkpoints(model_dir, gpt2_dir, tmp_path):
    """The same numbers from the pg_gpt2 folder and from its conversion to transformers' GPT-2."""
    (tmp_path / "text.txt").write_text(TEXT * 3, encoding="utf-8")
    outputs = {}
    for name, model in (("pg", model_dir), ("gpt2", gpt2_dir)):
        run = subprocess.run(
            [sys.executable, "evaluate_lm.py", str(model), "--task", "perplexity", "--data_file",
             str(tmp_path / "text.txt"), "--stride", "16", "--output_file", str(tmp_path / f"{name}.json")],
            cwd=ROOT, env=ENV, capture_output=True, text=True,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert all(
            f"\n{name} " in "\n" + run.stdout for name in ("token perplexity", "word perplexity", "bits per byte")
        )
        outputs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert outputs["gpt2"]["metrics"] == pytest.approx(outputs["pg"]["metrics"], rel=1e-6)
    assert outputs["pg"]["settings"]["stride"] == 16 and outputs["pg"]["tokens_per_second"] > 0


def test_bad_input_is_one_clear_error(model_dir, tmp_path):
    def fails(match: str, task: str = "multiple_choice", model=model_dir, **kwargs) -> None:
        with pytest.raises(UserError, match=match):
            evaluate_model(model, EvaluationArguments(task=task, **kwargs), stream=io.StringIO())

    fails("--data_file .* does not exist", data_file=str(tmp_path / "missing.jsonl"))
    fails("pass --data_file FILE")
    fails("cannot load the dataset 'nobody/no-such-dataset' .*--data_file", dataset_name="nobody/no-such-dataset")
    (tmp_path / "bad.jsonl").write_text('{"context": "a", "choices": ["b", "c"], "label": 0}\nnot json\n')
    fails("line 2 of .* is not JSON", data_file=str(tmp_path / "bad.jsonl"))
    (tmp_path / "fields.jsonl").write_text('{"ctx": "a", "endings": ["b", "c"], "label": 0}\n')
    fails("example 1 has no field 'context' .*ctx, endings.*--context_field", data_file=str(tmp_path / "fields.jsonl"))
    (tmp_path / "label.jsonl").write_text('{"context": "a", "choices": ["b", "c"], "label": "d"}\n')
    fails("the label 'd' is neither", data_file=str(tmp_path / "label.jsonl"))
    (tmp_path / "range.jsonl").write_text('{"context": "a", "choices": ["b", "c"], "label": 2}\n')
    fails("the label 2 is out of range", data_file=str(tmp_path / "range.jsonl"))
    (tmp_path / "empty.jsonl").write_text('{"context": "a", "choices": ["", "c"], "label": 1}\n')
    fails("a candidate .* is empty", data_file=str(tmp_path / "empty.jsonl"), choice_delimiter="")
    (tmp_path / "one.jsonl").write_text('{"text": "word"}\n')
    fails("two or more words", task="lambada", data_file=str(tmp_path / "one.jsonl"))
    (tmp_path / "text.txt").write_text(TEXT)
    fails("--stride must be between 1 and", task="perplexity", data_file=str(tmp_path / "text.txt"), stride=99)
    fails(
        "no such folder",
        task="perplexity",
        model=str(tmp_path / "missing-model"),
        data_file=str(tmp_path / "text.txt"),
    )


@pytest.mark.slow
def test_command_line_error_is_one_line(tmp_path):
    """A model path that does not exist fails at once (no Hub round trip), in one line, with status 2."""
    (tmp_path / "text.txt").write_text(TEXT)
    (tmp_path / "outputs").mkdir()
    env = {key: value for key, value in ENV.items() if key != "HF_HUB_OFFLINE"}  # not even the offline flag
    bad = subprocess.run(
        [sys.executable, str(ROOT / "evaluate_lm.py"), "outputs/missing", "--task", "perplexity",
         "--data_file", str(tmp_path / "text.txt")],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no such folder: ") and "outputs/missing" in lines[0]


def _readme_task_yaml() -> str:
    """The lm-evaluation-harness task of docs/evaluation.md (moved there from the README), run here verbatim."""
    readme = (ROOT / "docs" / "evaluation.md").read_text(encoding="utf-8")
    [block] = [body for body in re.findall(r"^```yaml\n(.*?)^```", readme, re.S | re.M) if "output_type" in body]
    return block


# lm-evaluation-harness' own lambada_openai and wikitext definitions, over local files.
LAMBADA_YAML = """task: pg_lambada
dataset_path: json
dataset_kwargs: {data_files: {test: lambada.jsonl}}
test_split: test
output_type: loglikelihood
doc_to_text: "{{text.split(' ')[:-1]|join(' ')}}"
doc_to_target: "{{' '+text.split(' ')[-1]}}"
metric_list: [{metric: perplexity, aggregation: perplexity, higher_is_better: false}, {metric: acc}]
"""
TEXT_YAML = """task: pg_text
dataset_path: json
dataset_kwargs: {data_files: {test: text.jsonl}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list: [{metric: word_perplexity}, {metric: byte_perplexity}, {metric: bits_per_byte}]
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="needs lm-eval (pip install -e '.[eval]')")
def test_lm_evaluation_harness_gives_the_same_numbers(model_dir, twin, tmp_path):
    """`lm_eval --model hf` on the pg_gpt2 folder (remote code), offline over local files, agrees with
    evaluate_lm.py: multiple choice (accuracies and each candidate's log-likelihood), LAMBADA and perplexity."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = _choice_rows(tokenizer, twin)
    for row in rows:  # lm-eval takes the label as an index (or the text of a choice), not a numeric string
        row["label"] = row["choices"].index(row["label"]) if row["label"] in row["choices"] else int(row["label"])
    _write_jsonl(tmp_path / "mc.jsonl", rows)
    _write_jsonl(tmp_path / "lambada.jsonl", [{"text": passage} for passage in _lambada_passages(tokenizer, twin)])
    text = (TEXT * 2).strip()
    _write_jsonl(tmp_path / "text.jsonl", [{"text": text}])
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "readme_task.yaml").write_text(_readme_task_yaml())
    (tmp_path / "tasks" / "lambada.yaml").write_text(LAMBADA_YAML)
    (tmp_path / "tasks" / "text.yaml").write_text(TEXT_YAML)
    task = yaml.safe_load(_readme_task_yaml())["task"]
    run = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf",
         "--model_args", f"pretrained={model_dir},trust_remote_code=True", "--tasks", f"{task},pg_lambada,pg_text",
         "--include_path", "tasks", "--device", "cpu", "--batch_size", "8", "--output_path", "out", "--log_samples"],
        cwd=tmp_path, env={**ENV, "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    [results_file] = (tmp_path / "out").rglob("results_*.json")
    theirs = json.loads(results_file.read_text())["results"]

    mc = _evaluate(model_dir, "multiple_choice", tmp_path, data_file=str(tmp_path / "mc.jsonl"))
    assert mc["accuracy"] == pytest.approx(theirs[task]["acc,none"])
    assert mc["accuracy_norm"] == pytest.approx(theirs[task]["acc_norm,none"])
    [samples_file] = (tmp_path / "out").rglob(f"samples_{task}_*.jsonl")
    their_logprobs = [
        float(resp[0]) for line in samples_file.read_text().splitlines() for resp in json.loads(line)["filtered_resps"]
    ]
    model = PgGPT2ForCausalLM.from_pretrained(model_dir).eval()
    requests = [
        (context + continuation, len(continuation))
        for row in rows
        for context, continuation in (
            encode_pair(tokenizer, row["context"], " " + c, tokenizer.eos_token_id) for c in row["choices"]
        )
    ]
    assert score_requests(model, requests).logprobs == pytest.approx(their_logprobs, rel=1e-4, abs=1e-4)

    lambada = _evaluate(model_dir, "lambada", tmp_path, data_file=str(tmp_path / "lambada.jsonl"))
    assert lambada["accuracy"] == pytest.approx(theirs["pg_lambada"]["acc,none"])
    assert lambada["perplexity"] == pytest.approx(theirs["pg_lambada"]["perplexity,none"], rel=1e-4)

    # stride = the whole window: lm-evaluation-harness' rolling windows
    rolling = _evaluate(model_dir, "perplexity", tmp_path, data_file=str(tmp_path / "text.txt"), stride=CONTEXT)
    assert rolling["word_perplexity"] == pytest.approx(theirs["pg_text"]["word_perplexity,none"], rel=1e-4)
    assert rolling["bits_per_byte"] == pytest.approx(theirs["pg_text"]["bits_per_byte,none"], rel=1e-4)


# --------------------------------------------------------------------------------------------------
# run_clm.py --eval_tasks


def test_training_sample_is_reproducible_and_leaves_the_random_state(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = PgGPT2ForCausalLM.from_pretrained(model_dir).eval()
    callback = EvalTasksCallback(None, seed=3, sample_tokens=12)
    torch.manual_seed(123)
    expected_next = torch.rand(4)
    torch.manual_seed(123)
    first, second = callback.sample(model, tokenizer), callback.sample(model, tokenizer)
    assert torch.equal(torch.rand(4), expected_next)  # training's random stream is not disturbed
    assert first == second and first
    assert EvalTasksCallback(None, seed=4, sample_tokens=12).sample(model, tokenizer) != first


@pytest.mark.slow
def test_run_clm_scores_eval_tasks_at_every_evaluation(model_dir, tmp_path):
    """Accuracies beside the loss at each evaluation, equal to evaluate_lm.py's on the saved model; in
    metrics.json, trainer_state.json, the plot and the model card's model-index; a sample in the log."""
    from conftest import write_corpus  # the play-like corpus of the run_clm.py tests

    corpus = write_corpus(tmp_path / "corpus", documents=10, speeches=20)
    rows = [
        {"context": "ROMEO:", "choices": ["The sweet love of my lady.", "xq zzv qqq"], "label": 0},
        {"context": "JULIET: Thy", "choices": ["1234 5678", "lord hath death"], "label": 1},
        {"context": "KING: The", "choices": ["moon", "@@@ ###"], "label": "moon"},
    ]
    tasks = _write_jsonl(tmp_path / "Play-Names.jsonl", rows)
    out = tmp_path / "out"
    flags = [
        "--train_file", corpus, "--validation_split_percentage", "10", "--tokenizer_name", model_dir,
        "--config_name", "tiny", "--config_overrides", "n_layer=2,n_embd=32,n_head=2,n_positions=32",
        "--block_size", "32", "--per_device_train_batch_size", "8", "--max_steps", "20", "--eval_steps", "10",
        "--save_steps", "10", "--logging_steps", "5", "--learning_rate", "3e-3", "--seed", "0",
        "--disable_tqdm", "true", "--report_to", "none", "--auto_recipe", "false",
        "--output_dir", out, "--eval_tasks", tasks,
    ]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "run_clm.py", *map(str, flags)], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Sample at step 10:" in run.stderr and "Sample at step 20:" in run.stderr
    assert "play_names_accuracy_norm" in run.stderr

    evaluations = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "eval_loss" in e]
    assert [e["step"] for e in evaluations] == [10, 20]
    assert all({"eval_play_names_accuracy", "eval_play_names_accuracy_norm"} <= set(e) for e in evaluations)
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(isinstance(value, (int, float)) for value in metrics.values())  # the sample is not a metric
    ours = _evaluate(out, "multiple_choice", tmp_path, data_file=str(tasks), batch_size=2)
    assert metrics["eval_play_names_accuracy"] == pytest.approx(ours["accuracy"])
    assert metrics["eval_play_names_accuracy_norm"] == pytest.approx(ours["accuracy_norm"])

    assert (out / "eval_tasks.png").stat().st_size > 1000
    card = ModelCard.load(out / "README.md")
    [raw, norm] = [r for r in card.data.eval_results if r.task_type == "multiple-choice"]
    assert (raw.dataset_name, raw.metric_type, norm.metric_type) == ("play_names", "accuracy", "acc_norm")
    assert raw.metric_value == pytest.approx(round(ours["accuracy"], 4))
    assert "![Zero-shot multiple choice](eval_tasks.png)" in card.text

    bad = subprocess.run(
        [sys.executable, "run_clm.py", *map(str, flags[:-4]), "--output_dir", str(tmp_path / "bad"),
         "--eval_tasks", str(corpus / "missing.jsonl")],
        cwd=ROOT, env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --eval_tasks")
    assert not (tmp_path / "bad").exists()
