"""run_clm.py end to end on a tiny model and a tiny corpus written here.

What a user relies on: every output file, metrics that agree with an independent computation, a
model that loads in a fresh process, resume after SIGKILL with bit-identical weights, a real
2-process DDP run equal to 1 process, and one-line errors that leave existing outputs untouched.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    ENV,
    MODEL,
    ROOT,
    assert_same_weights,
    base_flags,
    folder_digest,
    free_port,
    kill_at_first_checkpoint,
    run_clm,
    weights,
    write_corpus,
)

from modeling_pg_gpt2 import PgGPT2ForCausalLM
from modeling_pg_gpt2.cli.arguments import make_parser, parse_arguments
from modeling_pg_gpt2.common.errors import UserError
from modeling_pg_gpt2.data.blocks import DataTrainingArguments
from modeling_pg_gpt2.data.corpus import CorpusArguments, load_corpus
from modeling_pg_gpt2.data.tokenizer import TokenizerArguments, train_tokenizer
from modeling_pg_gpt2.reports.plots import PLOTS
from modeling_pg_gpt2.reports.plots import main as plots_main
from modeling_pg_gpt2.training.arguments import CLMTrainingArguments
from modeling_pg_gpt2.training.checkpoints import checkpoint_problem
from modeling_pg_gpt2.training.model_init import ModelArguments, build_model, run_tokenizer
from modeling_pg_gpt2.training.run import train

DATACLASSES = (ModelArguments, CorpusArguments, DataTrainingArguments, CLMTrainingArguments)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recipe(workspace, corpus, tokenizer_dir) -> Path:
    """The base run as a YAML recipe (the form configs/ ships), so the tests cover recipe parsing too."""
    flags = base_flags(corpus, tokenizer_dir)
    values = dict(zip((f.lstrip("-") for f in flags[::2]), flags[1::2], strict=True))
    path = workspace / "recipe.yaml"
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(workspace, recipe) -> Path:
    """One uninterrupted run: the outputs under test and the reference of the resume test."""
    out = workspace / "uninterrupted"
    result = run_clm(recipe, "--output_dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_run_writes_every_output(trained):
    from transformers import AutoTokenizer

    expected = {
        "model.safetensors", "config.json", "configuration_pg_gpt2.py", "modeling_pg_gpt2.py",
        "batched_matvec.py", "fused_loss.py", "model_inputs.py", "task_heads.py",
        "tokenizer.json", "tokenizer_config.json", "generation_config.json", "metrics.json",
        "training_info.json", "trainer_state.json", "README.md", *PLOTS,
    }  # fmt: skip
    assert expected <= {p.name for p in trained.iterdir()}
    for plot in PLOTS:
        assert (trained / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    config = json.loads((trained / "config.json").read_text())
    assert config["model_type"] == "pg_gpt2" and "AutoModelForCausalLM" in config["auto_map"]
    tokenizer = AutoTokenizer.from_pretrained(trained)
    assert config["vocab_size"] == len(tokenizer)  # vocab follows the tokenizer
    assert tokenizer.model_max_length == config["n_positions"] == 64  # the context, for pipelines and servers
    generation = json.loads((trained / "generation_config.json").read_text())
    assert generation["pad_token_id"] == generation["eos_token_id"] == config["eos_token_id"]

    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("eval_loss", "eval_perplexity", "eval_accuracy", "eval_bits_per_byte", "train_loss"):
        assert math.isfinite(metrics[key]), key
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-12)
    assert 0 < metrics["eval_accuracy"] < 1 and 0 < metrics["eval_bits_per_byte"] < 8

    # The best checkpoint (lowest eval loss) is what the folder holds, and its metrics are metrics.json's.
    state = json.loads((trained / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [10, 20, 30]
    best = min(evaluations, key=lambda entry: entry["eval_loss"])
    assert metrics["eval_loss"] == best["eval_loss"] and state["best_global_step"] == best["step"]
    assert weights(trained).keys() == weights(trained / f"checkpoint-{best['step']}").keys()
    for name, tensor in weights(trained / f"checkpoint-{best['step']}").items():
        assert torch.equal(tensor, weights(trained)[name]), name
    checkpoints = sorted(p.name for p in trained.glob("checkpoint-*"))
    assert "checkpoint-30" in checkpoints and len(checkpoints) <= 3  # save_total_limit 2, plus the best

    info = json.loads((trained / "training_info.json").read_text())
    assert info["world_size"] == 1 and info["global_step"] == 30 and info["block_size"] == 64

    from huggingface_hub import ModelCard

    card = ModelCard.load(trained / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"custom_code", "pg_gpt2", "gpt2"} <= set(card.data.tags) and card.data.license
    perplexity = [r.metric_value for r in card.data.eval_results if r.metric_type == "perplexity"]
    assert perplexity == [round(metrics["eval_perplexity"], 4)]
    for plot in PLOTS:
        assert f"]({plot})" in card.text


def test_tokens_per_second_and_mfu_at_every_logging_step_and_in_metrics_json(trained):
    state = json.loads((trained / "trainer_state.json").read_text())
    training_logs = [entry for entry in state["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in training_logs] == [5, 10, 15, 20, 25, 30]
    for entry in training_logs:
        assert entry["tokens_per_second"] > 0 and 0 < entry["mfu"] < 1, entry
    assert not any("mfu" in entry for entry in state["log_history"] if "eval_loss" in entry)
    # One peak (the CPU's, measured once) behind every figure: MFU / tokens/s is FLOPs per token / peak.
    metrics = json.loads((trained / "metrics.json").read_text())
    ratio = metrics["train_mfu"] / metrics["train_tokens_per_second"]
    for entry in training_logs:
        assert entry["mfu"] / entry["tokens_per_second"] == pytest.approx(ratio, rel=1e-9)
    # Counted over training time only, so at least the Trainer's rate over the whole run (evaluations included).
    assert metrics["train_tokens_per_second"] >= metrics["train_samples_per_second"] * 64
    assert 0 < metrics["train_mfu"] < 1


def test_metrics_match_an_independent_computation(trained, corpus):
    """Loss, accuracy and bits per byte recomputed by hand: documents + <|endoftext|>, packed, scored."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained)
    model = PgGPT2ForCausalLM.from_pretrained(trained).eval()
    documents = load_corpus(CorpusArguments(train_file=str(corpus), validation_split_percentage=10))["validation"]
    stream = []
    for text in documents["text"]:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = torch.tensor(stream[: len(stream) // 64 * 64]).view(-1, 64)
    with torch.no_grad():
        logits = model(blocks).logits[:, :-1]
    targets = blocks[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")
    accuracy = (logits.argmax(-1) == targets).sum().item() / targets.numel()
    # Bytes of the scored text: decode the targets; each <|endoftext|> separator counts as one byte.
    separators = int((targets == tokenizer.eos_token_id).sum())
    text_bytes = sum(len(tokenizer.decode(row, skip_special_tokens=True).encode()) for row in targets.tolist())
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["eval_num_tokens"] == targets.numel()
    assert metrics["eval_loss"] == pytest.approx(nll.item() / targets.numel(), rel=1e-5)
    assert metrics["eval_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    bits_per_byte = nll.item() / (math.log(2) * (text_bytes + separators))
    assert metrics["eval_bits_per_byte"] == pytest.approx(bits_per_byte, rel=1e-5)


def test_model_card_snippet_runs_in_a_fresh_process_and_generate_py_works(trained, tmp_path):
    card = (trained / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.DOTALL).group(1)
    fresh = subprocess.run(  # -I: no project on sys.path; the model code comes from the folder
        [sys.executable, "-I", "-c", snippet], cwd=tmp_path, env=ENV, capture_output=True, text=True
    )
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert fresh.stdout.startswith("The") and len(fresh.stdout.split()) > 5

    generated = subprocess.run(
        [sys.executable, "generate.py", str(trained), "ROMEO:", "--max_new_tokens", "20", "--seed", "0"],
        cwd=ROOT, env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert generated.stdout.startswith("ROMEO:") and len(generated.stdout) > len("ROMEO:") + 10


def test_sigkill_then_rerun_gives_the_same_weights(trained, recipe, workspace):
    out = workspace / "killed"
    command = [sys.executable, "run_clm.py", str(recipe), "--output_dir", str(out)]
    kill_at_first_checkpoint(command, out)
    assert all((out / plot).is_file() for plot in PLOTS)  # drawn at the first evaluation, before the end
    # A checkpoint a crash left half-written: truncated weights, no trainer_state.json. It must be skipped.
    complete = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if checkpoint_problem(p) is None)
    torn = out / f"checkpoint-{complete + 10}"
    shutil.rmtree(torn, ignore_errors=True)
    shutil.copytree(out / f"checkpoint-{complete}", torn)
    (torn / "trainer_state.json").unlink()
    data = (torn / "model.safetensors").read_bytes()
    (torn / "model.safetensors").write_bytes(data[: len(data) // 2])

    resumed = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Skipping {torn}" in resumed.stderr
    assert f"Resuming from {out / f'checkpoint-{complete}'}" in resumed.stderr
    assert_same_weights(trained, out)
    logs = [json.loads((d / "trainer_state.json").read_text())["log_history"] for d in (trained, out)]
    assert [e["eval_loss"] for e in logs[0] if "eval_loss" in e] == [
        e["eval_loss"] for e in logs[1] if "eval_loss" in e
    ]


def test_two_processes_match_one_process(trained, workspace, corpus, tokenizer_dir):
    """accelerate launch with 2 ranks (DDP over gloo) = 1 process with the same global batch.

    SGD without dropout: its update is linear in the gradient, so the only difference left is float
    summation order. (Adam divides by sqrt(v), which turns ulp-level differences on near-zero gradients
    into whole learning-rate steps, so it is no test of equality.)
    """
    flags = base_flags(corpus, tokenizer_dir)
    flags[flags.index(MODEL)] = MODEL + ",resid_pdrop=0,embd_pdrop=0,attn_pdrop=0"
    flags += [
        "--optim",
        "sgd",
        "--learning_rate",
        "0.5",
        "--max_steps",
        "12",
        "--eval_steps",
        "6",
        "--save_steps",
        "6",
    ]
    one = workspace / "one-process"
    shutil.copytree(trained, one)  # a finished run: --overwrite_output_dir must start over, not resume it
    single = run_clm(*flags, "--output_dir", one, "--overwrite_output_dir")
    assert single.returncode == 0, single.stderr[-3000:]
    assert not (one / "checkpoint-30").exists()

    two = workspace / "two-processes"
    launcher = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "run_clm.py",
    ]  # fmt: skip
    per_device = flags.index("--per_device_train_batch_size") + 1
    flags[per_device] = "4"
    double = subprocess.run(
        [*launcher, *flags, "--output_dir", str(two)], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert double.returncode == 0, double.stderr[-3000:]

    infos = [json.loads((d / "training_info.json").read_text()) for d in (one, two)]
    assert [info["world_size"] for info in infos] == [1, 2]
    assert infos[0]["tokens_per_step"] == infos[1]["tokens_per_step"] == 8 * 64
    assert [info["global_step"] for info in infos] == [12, 12]
    reference, result = weights(one), weights(two)
    for name in reference:
        torch.testing.assert_close(result[name], reference[name], rtol=1e-5, atol=1e-6)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (one, two)]
    assert metrics[1]["eval_loss"] == pytest.approx(metrics[0]["eval_loss"], rel=1e-6)
    assert metrics[1]["eval_num_tokens"] == metrics[0]["eval_num_tokens"]  # no sample evaluated twice


# -- bad inputs: one line, raised before anything is written --------------------------------------------------


@pytest.fixture(scope="module")
def existing_run(trained, workspace) -> Path:
    """A copy of a finished run (with checkpoints) that bad commands are pointed at."""
    return Path(shutil.copytree(trained, workspace / "existing"))


@pytest.fixture(scope="module")
def small_corpus(workspace) -> Path:
    return write_corpus(workspace / "small-corpus", documents=3, speeches=1)


@pytest.fixture(scope="module")
def other_tokenizer(workspace, corpus) -> Path:
    out = workspace / "other-tokenizer"
    train_tokenizer(CorpusArguments(train_file=str(corpus)), TokenizerArguments(output_dir=str(out), vocab_size=300))
    return out


BAD_INPUTS = {
    "block larger than context": (["--block_size", "128"], "larger than the model's context n_positions=64"),
    "block too big, overwrite": (["--block_size", "128", "--overwrite_output_dir"], "larger than the model's context"),
    "unknown config name": (["--config_name", "gpt5"], "unknown --config_name 'gpt5'"),
    "override without value": (["--config_overrides", "n_layer"], "'n_layer' is not key=value"),
    "override of unknown field": (["--config_overrides", "n_layers=2"], "unknown config field 'n_layers'"),
    "override breaking the config": (["--config_overrides", "n_embd=30,n_head=4"], "must be divisible by n_head"),
    "corpus smaller than a block": (["--train_file", "{small_corpus}"], "fewer than one block of 64"),
    "vocab mismatch with checkpoint": (
        [
            "--config_name",
            "",
            "--config_overrides",
            "",
            "--model_name_or_path",
            "{trained}",
            "--tokenizer_name",
            "{other_tokenizer}",
        ],
        "has vocab_size",
    ),  # fmt: skip
    "shape override on checkpoint": (
        ["--config_name", "", "--model_name_or_path", "{trained}", "--config_overrides", "n_layer=3"],
        "cannot change n_layer",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_leaves_outputs_untouched(
    case, existing_run, corpus, tokenizer_dir, small_corpus, trained, other_tokenizer
):
    extra, message = BAD_INPUTS[case]
    paths = {"small_corpus": small_corpus, "trained": trained, "other_tokenizer": other_tokenizer}
    extra = [arg.format(**paths) for arg in extra]
    before = folder_digest(existing_run)
    with pytest.raises(UserError, match=re.escape(message)) as error:
        train(
            *parse_arguments(
                make_parser(DATACLASSES),
                [*base_flags(corpus, tokenizer_dir), *extra, "--output_dir", str(existing_run)],
            )
        )
    assert "\n" not in str(error.value)
    assert folder_digest(existing_run) == before


def test_non_empty_output_folder_without_checkpoint_is_refused(corpus, tokenizer_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty .*notes.txt.* --overwrite_output_dir"):
        train(
            *parse_arguments(
                make_parser(DATACLASSES), [*base_flags(corpus, tokenizer_dir), "--output_dir", str(tmp_path)]
            )
        )
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_recipe_with_unknown_field_is_refused(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("dataset_name: shakespeare\nlearning_rat: 0.001\n")
    with pytest.raises(UserError, match="unknown field.*learning_rat"):
        parse_arguments(make_parser(DATACLASSES), [str(recipe)])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_steps: 2.5\n", "line 1: max_steps must be an integer, got 2.5"),
        ("dataset_name: shakespeare\nconfig_overrides: {n_layer: 2}\n", "line 2: config_overrides must be a string"),
        ("per_device_train_batch_size: [4]\n", "line 1: per_device_train_batch_size must be an integer, got [4]"),
        ("learning_rate: fast\n", "line 1: learning_rate must be a number"),
        ("bf16: maybe\n", "line 1: bf16 must be true or false"),
        ("lr_scheduler_type: cosin\n", "line 1: lr_scheduler_type must be one of linear, cosine"),
        ("max_steps: 10\n  seed: 1\n", "line 2, column 7: not valid YAML/JSON: mapping values are not allowed here"),
        ('{"max_steps": 10,\n "seed": 1,,}', "line 2, column 12: not valid YAML/JSON"),
    ],
)
def test_recipe_value_of_the_wrong_type_names_the_field(tmp_path, text, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(UserError, match=re.escape(f"recipe {recipe}, {message}")):
        parse_arguments(make_parser(DATACLASSES), [str(recipe)])


def test_a_recipe_string_for_a_list_flag_is_a_list_of_one(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("dataset_name: shakespeare\neval_tasks: mc.jsonl\n")  # not ["m", "c", ".", ...]
    *_, args = parse_arguments(make_parser(DATACLASSES), [str(recipe), "--output_dir", str(tmp_path)])
    assert args.eval_tasks == ["mc.jsonl"]


def test_recipe_values_of_the_right_type_are_kept(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "max_steps: 7\nlearning_rate: 3e-3\nlogging_steps: 5\nlr_scheduler_kwargs: {min_lr_rate: 0.1}\n"
        "report_to: [none]\nlr_scheduler_type: cosine_with_min_lr\nwarmup_steps: 0.5\n"
    )
    *_, args = parse_arguments(make_parser(DATACLASSES), [str(recipe), "--output_dir", str(tmp_path)])
    assert (args.max_steps, args.learning_rate, args.logging_steps) == (7, 3e-3, 5)
    assert args.lr_scheduler_kwargs == {"min_lr_rate": 0.1} and args.report_to == []  # "none"
    assert args.warmup_steps == 0.5


@pytest.mark.parametrize("steps", ["0", "-2"])
def test_max_steps_that_train_nothing_are_refused(steps):
    # transformers takes any max_steps <= 0 as "train --num_train_epochs epochs"
    with pytest.raises(
        UserError,
        match=re.escape("--max_steps must be an integer >= 1, or -1 (-1: train") + ".*" + re.escape(f"got {steps}."),
    ):
        parse_arguments(make_parser(DATACLASSES), ["--dataset_name", "x", "--max_steps", steps])
    *_, args = parse_arguments(make_parser(DATACLASSES), ["--dataset_name", "x", "--max_steps", "-1"])
    assert args.max_steps == -1


@pytest.mark.parametrize("recipe", ["configs/shakespeare-cpu.yaml", "configs/pg-essays-gpu.yaml"])
def test_a_corpus_flag_replaces_the_recipes_corpus(recipe, corpus):
    parser_args = [str(ROOT / recipe), "--bf16", "false"]
    _, corpus_args, *_ = parse_arguments(make_parser(DATACLASSES), [*parser_args, "--train_file", str(corpus)])
    assert (corpus_args.dataset_name, corpus_args.train_file) == (None, str(corpus))
    assert load_corpus(corpus_args)["train"].num_rows > 0  # no "pass either --dataset_name or --train_file"

    _, corpus_args, *_ = parse_arguments(make_parser(DATACLASSES), [*parser_args, "--dataset_name=shakespeare"])
    assert (corpus_args.dataset_name, corpus_args.train_file) == ("shakespeare", None)
    model_args, *_ = parse_arguments(make_parser(DATACLASSES), [*parser_args, "--model_name_or_path", "gpt2"])
    assert (model_args.model_name_or_path, model_args.config_name) == ("gpt2", None)


def test_error_reaches_the_terminal_as_one_line(corpus, tokenizer_dir, tmp_path):
    result = run_clm(*base_flags(corpus, tokenizer_dir), "--config_name", "gpt5", "--output_dir", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown --config_name 'gpt5'")
    assert not (tmp_path / "out").exists()


# -- model sources ----------------------------------------------------------------------------------------------


def test_continues_from_gpt2_weights_through_the_converter(tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2))
    gpt2.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    args = ModelArguments(model_name_or_path=str(tmp_path / "gpt2"))
    model, source = build_model(args, run_tokenizer(args))
    assert isinstance(model, PgGPT2ForCausalLM) and "converted" in source
    ids = torch.randint(0, len(tokenizer), (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, gpt2.eval()(ids).logits, rtol=1e-5, atol=1e-5)


def test_continues_from_a_pg_gpt2_checkpoint(trained):
    args = ModelArguments(model_name_or_path=str(trained), config_overrides="resid_pdrop=0.0")
    model, _ = build_model(args, run_tokenizer(args))
    assert model.config.resid_pdrop == 0.0
    state = model.state_dict()
    for name, tensor in weights(trained).items():
        assert torch.equal(state[name], tensor), name


def test_plots_command_redraws_a_run(trained, tmp_path):
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    for plot in PLOTS:
        (run / plot).unlink()
    (run / "trainer_state.json").unlink()  # falls back to the newest checkpoint's log
    written = plots_main([str(run)])
    assert sorted(p.name for p in written) == sorted(PLOTS)
    assert all((run / plot).stat().st_size > 1000 for plot in PLOTS)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"])
def test_a_checkpoint_with_a_truncated_file_is_not_resumable(trained, tmp_path, name):
    checkpoint = Path(shutil.copytree(trained / "checkpoint-30", tmp_path / "checkpoint-30"))
    assert checkpoint_problem(checkpoint) is None
    data = (checkpoint / name).read_bytes()
    (checkpoint / name).write_bytes(data[: len(data) * 2 // 3])
    assert checkpoint_problem(checkpoint) is not None


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags, read independently of torch's probes."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[1].split()))
    return False


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists() or torch.accelerator.is_available(), reason="Linux CPU only")
def test_auto_bf16_trains_in_bf16_exactly_where_the_cpu_has_bf16_instructions(trained, recipe, workspace):
    native = cpu_has_native_bf16()
    parsed = parse_arguments(make_parser(DATACLASSES), [str(recipe), "--output_dir", "x", "--auto_bf16", "true"])[-1]
    assert parsed.bf16 is native and parsed.use_cpu is native  # transformers allows CPU bf16 only with use_cpu

    out = workspace / "auto-bf16"
    result = run_clm(recipe, "--output_dir", out, "--auto_bf16", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "training_info.json").read_text())["bf16"] is native
    assert ("| Precision | bf16 |" in (out / "README.md").read_text()) is native
    fp32 = weights(trained)
    changed = [name for name, tensor in weights(out).items() if not torch.equal(tensor, fp32[name])]
    if native:  # the same run from the same seed, with bf16 products: other weights, as good a model
        assert changed
        losses = [json.loads((folder / "metrics.json").read_text())["eval_loss"] for folder in (out, trained)]
        assert losses[0] == pytest.approx(losses[1], rel=0.05)
    else:  # nothing changes where bf16 would be emulated
        assert not changed


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_recipe_parses(recipe):
    model_args, corpus_args, data_args, training_args = parse_arguments(
        make_parser(DATACLASSES), [str(ROOT / "configs" / recipe), "--bf16", "false"]
    )
    assert training_args.output_dir and (corpus_args.dataset_name or corpus_args.train_file)
