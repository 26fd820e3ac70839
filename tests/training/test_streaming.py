"""run_clm.py --streaming: the corpus read as a stream, every output written, resume at the exact data position.

The streamed path trains on the same tiny corpus and model as tests/training/test_run_clm.py. What a user relies on:
a run that never holds the corpus writes what a map-style run writes; a run killed with SIGKILL and started
again ends with the weights of an uninterrupted run, bit for bit; the validation documents never reach
training; several ranks split the stream instead of training on copies of it.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import (
    ENV,
    MODEL,
    ROOT,
    assert_same_weights,
    folder_digest,
    kill_at_first_checkpoint,
    run_clm,
    write_corpus,
)

from modeling_pg_gpt2.data.blocks import DataTrainingArguments, streaming_datasets
from modeling_pg_gpt2.data.corpus import CorpusArguments
from modeling_pg_gpt2.reports.plots import PLOTS
from modeling_pg_gpt2.training.checkpoints import checkpoint_problem
from modeling_pg_gpt2.training.model_init import ModelArguments, run_tokenizer
from modeling_pg_gpt2.training.streaming import STREAM_STATE_FILE

pytestmark = pytest.mark.slow


def streamed_flags(corpus: Path, tokenizer_dir: Path) -> list[str]:
    """30 steps of a 2-layer model on the stream (~270 blocks of 64 tokens: one pass is not used up)."""
    return [
        "--streaming", "--train_file", str(corpus), "--streaming_validation_documents", "3",
        "--tokenizer_name", str(tokenizer_dir), "--config_name", "tiny", "--config_overrides", MODEL,
        "--block_size", "64", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
        "--max_steps", "30", "--eval_steps", "10", "--save_steps", "10", "--logging_steps", "5",
        "--learning_rate", "3e-3", "--warmup_steps", "3", "--lr_scheduler_type", "cosine",
        "--seed", "0", "--disable_tqdm", "true", "--auto_recipe", "false",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def streamed(workspace, corpus, tokenizer_dir) -> Path:
    """One uninterrupted streamed run: the outputs under test and the reference of the resume test."""
    out = workspace / "uninterrupted"
    result = run_clm(*streamed_flags(corpus, tokenizer_dir), "--output_dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_a_streamed_run_writes_every_output_a_map_style_run_writes(streamed):
    expected = {
        "model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "metrics.json",
        "training_info.json", "trainer_state.json", "README.md", *PLOTS,
    }  # fmt: skip
    assert expected <= {p.name for p in streamed.iterdir()}
    metrics = json.loads((streamed / "metrics.json").read_text())
    assert 0 < metrics["eval_loss"] < 6 and metrics["train_tokens_per_second"] > 0
    info = json.loads((streamed / "training_info.json").read_text())
    assert info["streaming"] is True and info["train_blocks"] is None and info["validation_blocks"] > 0
    assert info["global_step"] == 30 and info["tokens_seen"] == 30 * 8 * 64 and info["finished"] == "max_steps"
    state = json.loads((streamed / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [10, 20, 30]
    card = (streamed / "README.md").read_text()
    assert "the corpus is streamed and the first 3 documents of the stream validate" in card
    assert "streamed training and" in card and "Tokens seen | 15,360" in card
    assert (streamed / "checkpoint-30" / STREAM_STATE_FILE.format(rank=0)).is_file()


def test_sigkill_then_rerun_resumes_the_stream_and_gives_the_same_weights(streamed, workspace, corpus, tokenizer_dir):
    out = workspace / "killed"
    command = [sys.executable, "run_clm.py", *streamed_flags(corpus, tokenizer_dir), "--output_dir", str(out)]
    kill_at_first_checkpoint(command, out)
    complete = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if checkpoint_problem(p) is None)
    assert complete < 30, "killed too late to test resuming"

    resumed = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {out / f'checkpoint-{complete}'}" in resumed.stderr
    # A resume that restarted the stream (or skipped a wrong number of blocks) trains on other blocks.
    assert_same_weights(streamed, out)
    logs = [json.loads((d / "trainer_state.json").read_text())["log_history"] for d in (streamed, out)]
    assert [e["loss"] for e in logs[0] if "loss" in e] == [e["loss"] for e in logs[1] if "loss" in e]


def test_a_streamed_run_resumed_without_streaming_is_one_line(streamed, corpus, tokenizer_dir, tmp_path):
    """Map-style training would go on from the checkpoint at the start of the corpus, without a word."""
    out = shutil.copytree(streamed, tmp_path / "run")
    before = folder_digest(out)
    flags = streamed_flags(corpus, tokenizer_dir)
    flags.remove("--streaming")
    flags[flags.index("--max_steps") + 1] = "40"  # asks the finished run for more
    result = run_clm(*flags, "--validation_split_percentage", "10", "--output_dir", out)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {out / 'checkpoint-30'} was saved by a --streaming run, whose position in the stream it holds: "
        "resume it with --streaming (and the same corpus), or pass --overwrite_output_dir to start over"
    )
    assert folder_digest(out) == before


def test_streaming_without_max_steps_is_one_line(corpus, tokenizer_dir, tmp_path):
    flags = streamed_flags(corpus, tokenizer_dir)
    del flags[flags.index("--max_steps") : flags.index("--max_steps") + 2]
    result = run_clm(*flags, "--output_dir", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --streaming needs --max_steps N: a stream has no length to count epochs in."
    ]
    assert not (tmp_path / "out").exists()


def _documents(folder: Path) -> list[str]:
    return [path.read_text(encoding="utf-8") for path in sorted(folder.iterdir())]


def _stream_text(dataset, tokenizer, blocks: int) -> str:
    """The decoded text of the first `blocks` blocks of a stream: consecutive blocks decode to the documents."""
    ids = [token for row in itertools.islice(dataset, blocks) for token in row["input_ids"]]
    return tokenizer.decode(ids)


def _args(rank: int = 0, world_size: int = 1) -> SimpleNamespace:
    # The fields of TrainingArguments that streaming_datasets reads; a real one cannot claim a rank.
    return SimpleNamespace(do_train=True, do_eval=True, max_steps=10, process_index=rank, world_size=world_size)


def test_validation_documents_are_never_in_the_training_stream(workspace, tokenizer_dir):
    """The first 2 of 6 documents validate; the last is a copy of the first and is not trained on either."""
    folder = write_corpus(workspace / "small", documents=5, speeches=6, seed=1)
    names = ["alpha", "bravo", "charlie", "delta", "echo"]
    for name, path in zip(names, sorted(folder.iterdir()), strict=True):
        path.write_text(f"Document {name}.\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "act05.txt").write_text((folder / "act00.txt").read_text(encoding="utf-8"), encoding="utf-8")
    tokenizer = run_tokenizer(ModelArguments(tokenizer_name=str(tokenizer_dir)))
    data_args = DataTrainingArguments(streaming=True, streaming_validation_documents=2)
    datasets = streaming_datasets(CorpusArguments(train_file=str(folder)), data_args, _args(), tokenizer, 16)

    validation = _stream_text(datasets["validation"], tokenizer, len(datasets["validation"]))
    assert "Document alpha." in validation and "Document bravo." in validation
    tokens = sum(len(tokenizer(text)["input_ids"]) + 1 for text in _documents(folder))
    trained = _stream_text(datasets["train"], tokenizer, 3 * tokens // 16)  # the stream repeats: three passes
    assert "Document alpha." not in trained and "Document bravo." not in trained
    for name in names[2:]:
        assert trained.count(f"Document {name}.") >= 3
    assert trained.startswith("Document charlie.")  # the stream goes on where validation ended


def test_two_ranks_split_the_stream_without_sharing_a_document(corpus, tokenizer_dir):
    tokenizer = run_tokenizer(ModelArguments(tokenizer_name=str(tokenizer_dir)))
    corpus_args = CorpusArguments(train_file=str(corpus))
    data_args = DataTrainingArguments(streaming=True, streaming_validation_documents=3)
    documents = _documents(corpus)
    tokens = sum(len(tokenizer(text)["input_ids"]) + 1 for text in documents)
    seen = []
    for rank in (0, 1):
        stream = streaming_datasets(corpus_args, data_args, _args(rank, 2), tokenizer, 64)["train"]
        text = _stream_text(stream, tokenizer, tokens // 64)  # about two passes over a rank's half
        seen.append({number for number, document in enumerate(documents) if document[:300] in text})
    assert not seen[0] & seen[1]  # no document trained on twice
    assert seen[0] | seen[1] == set(range(3, 30))  # every one trained on, the held-out three excepted
    assert 10 <= len(seen[0]) <= 17


def test_the_bundled_corpus_streams_the_plays_map_style_loading_reads():
    from modeling_pg_gpt2.data.corpus import load_shakespeare, stream_corpus

    train, validation = stream_corpus(CorpusArguments(dataset_name="shakespeare"))
    assert validation is None and train.n_shards == 38  # one play per shard: ranks get whole plays
    assert [row["text"] for row in train] == load_shakespeare()["text"]
