"""One command from text to model: `run_clm.py --train_file X --output_dir OUT`, with no tokenizer and no recipe.

Real runs of run_clm.py on the play-like corpus: the tokenizer is trained on the training split and saved in
the output folder, every choice is logged, recorded and given way to by the user's flags, a killed run
resumes to the weights of an uninterrupted one, a validation plateau ends the run with its schedule decayed,
and a corpus too small for the run is said in one line. `--max_steps` keeps them deterministic: with a time
budget the recipe also depends on the speed measured at start (tests/training/test_recipe.py covers that).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, kill_at_first_checkpoint, run_clm, weights, write_corpus
from transformers import AutoTokenizer

from modeling_pg_gpt2.training.recipe import MUON_MAX_COST

pytestmark = pytest.mark.slow

SMALL = ("--config_overrides", "n_layer=2,n_embd=64,n_head=2")  # a given shape: fast, and it must win


def one_command(train_file: Path | str, out: Path, *extra: str) -> list[str]:
    return ["--train_file", str(train_file), "--max_steps", "30", *SMALL, "--output_dir", str(out), *extra]


@pytest.fixture(scope="module")
def uninterrupted(workspace, corpus) -> tuple[Path, str]:
    out = workspace / "one-command"
    result = run_clm(*one_command(corpus, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stderr


def test_the_tokenizer_is_trained_on_the_training_split_and_saved_with_the_run(uninterrupted):
    out, log = uninterrupted
    recipe = json.loads((out / "recipe.json").read_text())
    vocab = recipe["values"]["vocab_size"]
    assert (out / "tokenizer" / "tokenizer.json").is_file() and "training a" in log
    trained, saved = AutoTokenizer.from_pretrained(out / "tokenizer"), AutoTokenizer.from_pretrained(out)
    assert len(trained) == len(saved) == vocab == json.loads((out / "config.json").read_text())["vocab_size"]
    assert "the corpus allowed" in recipe["reasons"]["vocab_size"]  # a 90 KB corpus has fewer merges to make
    assert trained.get_vocab() == saved.get_vocab()


def test_every_choice_is_logged_and_recorded_with_its_reason_and_given_values_win(uninterrupted):
    out, log = uninterrupted
    recipe = json.loads((out / "recipe.json").read_text())
    info = json.loads((out / "training_info.json").read_text())
    assert info["recipe"] == {
        name: {"value": recipe["values"][name], "reason": recipe["reasons"][name]} for name in recipe["values"]
    }
    for name, value in recipe["values"].items():
        assert f"Automatic recipe: {name} {value} ({recipe['reasons'][name]})" in log, name
    config = json.loads((out / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["n_head"]) == (2, 64, 2)  # --config_overrides given
    assert recipe["reasons"]["n_layer"] == recipe["reasons"]["max_steps"] == "given"
    assert config["n_positions"] == recipe["values"]["n_positions"] and recipe["reasons"]["n_positions"] != "given"
    assert info["learning_rate"] == recipe["values"]["learning_rate"]
    assert info["lr_scheduler_type"] == recipe["values"]["lr_scheduler_type"]
    assert "recipe" in (out / "README.md").read_text().lower()


def test_a_flag_wins_over_the_recipe(workspace, corpus):
    out = workspace / "flag"
    result = run_clm(*one_command(corpus, out), "--learning_rate", "0.0007", "--max_steps", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["values"]["learning_rate"] == 0.0007 and recipe["reasons"]["learning_rate"] == "given"
    assert json.loads((out / "training_info.json").read_text())["learning_rate"] == 0.0007


def test_a_time_budget_times_the_machine_and_trains_with_the_optimizer_the_timing_chose(workspace, corpus):
    """With `--max_train_minutes` the recipe times eager and sdpa attention and AdamW and Muon steps here, and
    picks by their cost (a CPU with bf16 instructions gets Muon, one without keeps AdamW): the run trains with
    what the recipe recorded."""
    out = workspace / "budget"
    # max_steps out of reach: the clock ends the run on a machine of any speed (the recipe's own max_steps, a
    # number of passes on this small corpus, could come first on a fast one)
    budget = ("--max_train_minutes", "0.05", "--max_steps", "1000000")
    result = run_clm("--train_file", corpus, *budget, *SMALL, "--output_dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Automatic recipe: timed 6 steps of two shapes" in result.stderr
    cost = float(result.stderr.split("the larger shape's step takes ")[1].split("x")[0])
    recipe = json.loads((out / "recipe.json").read_text())
    optim = recipe["values"]["optim"]
    assert optim == ("muon" if cost <= MUON_MAX_COST else "adamw_torch_fused"), recipe["reasons"]["optim"]
    info = json.loads((out / "training_info.json").read_text())
    assert info["optim"] == optim and info["finished"] == "time budget"
    attention = recipe["values"]["attn_implementation"]
    assert attention in ("eager", "sdpa") and f"{attention} attention" in result.stderr
    assert info["attn_implementation"] == attention


@pytest.mark.parametrize("form", ["file", "glob"])
def test_a_file_and_a_glob_work_as_a_folder_does(workspace, corpus, form):
    if form == "file":
        source = workspace / "corpus.txt"
        source.write_text("\n\n".join(p.read_text() for p in sorted(corpus.glob("*.txt"))), encoding="utf-8")
    else:
        source = f"{corpus}/act0*.txt"
    out = workspace / f"from-a-{form}"
    result = run_clm(*one_command(source, out), "--max_steps", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "tokenizer" / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()


def test_killed_and_run_again_it_ends_with_the_weights_of_an_uninterrupted_run(uninterrupted, workspace, corpus):
    reference, _ = uninterrupted
    out = workspace / "killed"
    command = [sys.executable, "run_clm.py", *one_command(corpus, out)]
    kill_at_first_checkpoint(command, out)  # held at checkpoint-10 (the recipe evaluates and saves every 10)
    tokenizer = (out / "tokenizer" / "tokenizer.json").read_bytes()
    resumed = run_clm(*command[2:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {out / 'checkpoint-10'}" in resumed.stderr
    assert "the one chosen when this run started" in resumed.stderr and "training a" not in resumed.stderr
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == tokenizer
    expected, result = weights(reference), weights(out)
    assert expected.keys() == result.keys()
    for name in expected:
        assert torch.equal(expected[name], result[name]), name


def test_a_plateau_ends_the_run_annealed_and_keeps_the_best_model(workspace, corpus):
    """A 3 KB corpus trained for 400 steps overfits early: the run decays its rate and stops long before."""
    small = workspace / "small-corpus"
    small.mkdir()
    for path in sorted(corpus.glob("*.txt"))[:2]:
        shutil.copy(path, small / path.name)
    out = workspace / "plateau"
    result = run_clm(
        "--train_file", small, "--validation_split_percentage", "50", "--max_steps", "400", "--eval_steps", "10",
        "--plateau_patience", "2", *SMALL, "--output_dir", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((out / "training_info.json").read_text())
    assert info["finished"] == "plateau" and info["global_step"] < 400
    assert "decaying the learning rate to its end over the next" in result.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [entry["eval_loss"] for entry in state["log_history"] if "eval_loss" in entry]
    assert json.loads((out / "metrics.json").read_text())["eval_loss"] == min(losses)  # the best model is kept


def test_a_corpus_too_small_for_the_run_trains_with_one_line_that_says_so(workspace):
    tiny = write_corpus(workspace / "tiny", documents=3, speeches=8)  # ~3 KB in three files
    out = workspace / "tiny-run"
    result = run_clm("--train_file", tiny, "--max_steps", "3", *SMALL, "--output_dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "mostly memorise" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0]


def test_a_plain_recipe_turns_the_automatic_one_off(workspace, corpus, tokenizer_dir):
    out = workspace / "plain"
    result = run_clm(
        "--train_file", corpus, "--tokenizer_name", tokenizer_dir, "--config_name", "tiny", *SMALL, "--max_steps",
        "2", "--auto_recipe", "false", "--output_dir", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "recipe.json").exists() and "Automatic recipe" not in result.stderr
    assert json.loads((out / "training_info.json").read_text())["recipe"] is None


def test_the_cpu_recipe_file_is_a_plain_recipe():
    recipe = (ROOT / "configs" / "shakespeare-cpu.yaml").read_text()
    assert "auto_recipe: false" in recipe
