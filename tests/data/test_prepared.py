"""prepare_data.py: the corpus tokenized and packed once, then trained on from the folder (by 1 process or 2 nodes).

What a user relies on: the folder holds exactly the blocks run_clm.py would cut from the corpus (documents
separated by <|endoftext|>), a run from the folder trains the same weights as a run from the corpus, and
2 nodes x 1 process training from the folder equal 1 process at the same global batch. The refusals of a
folder that does not fit the run are rows of tests/cli/test_faults.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ENV, MODEL, ROOT, base_flags, free_port, run_clm, weights
from transformers import AutoTokenizer, TrainingArguments

from modeling_pg_gpt2.cli.commands import prepare
from modeling_pg_gpt2.data.blocks import DataTrainingArguments, prepare_datasets
from modeling_pg_gpt2.data.corpus import CorpusArguments
from modeling_pg_gpt2.data.prepared import PREPARED_FILE, load_prepared, tokenizer_fingerprint

BLOCK = 64


def corpus_flags(corpus: Path) -> list[str]:
    return ["--train_file", str(corpus), "--validation_split_percentage", "10"]


@pytest.fixture(scope="module")
def prepared(workspace, corpus, tokenizer_dir) -> Path:
    """The corpus prepared by 2 worker processes, through the command-line entry point."""
    out = workspace / "prepared"
    prepare(
        [*corpus_flags(corpus), "--tokenizer_name", str(tokenizer_dir), "--block_size", str(BLOCK),
         "--preprocessing_num_workers", "2", "--output_dir", str(out)]
    )  # fmt: skip
    return out


@pytest.mark.parametrize("num_proc", [None, 2])
def test_prepared_blocks_equal_the_map_style_blocks(prepared, workspace, corpus, tokenizer_dir, num_proc):
    """The same blocks as data.prepare_datasets (with the same number of workers), labels included."""
    folder = prepared
    if num_proc is None:
        folder = workspace / "prepared-1"
        prepare([*corpus_flags(corpus), "--tokenizer_name", str(tokenizer_dir), "--block_size", str(BLOCK),
                 "--output_dir", str(folder)])  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data_args = DataTrainingArguments(block_size=BLOCK)
    # A copy of the corpus per num_proc: datasets reuses a cached map made with another num_proc (even with
    # overwrite_cache), and the blocks depend on it (each worker's shard drops its tail shorter than a block).
    copy = shutil.copytree(corpus, workspace / f"corpus-{num_proc}")
    training_args = TrainingArguments(output_dir=str(workspace / "unused"), use_cpu=True, report_to="none")
    corpus_args = CorpusArguments(
        train_file=str(copy), validation_split_percentage=10, preprocessing_num_workers=num_proc
    )
    expected = prepare_datasets(corpus_args, data_args, training_args, tokenizer, BLOCK)
    result = load_prepared(folder, tokenizer, BLOCK, data_args, training_args)
    for split in ("train", "validation"):
        assert len(result[split]) == len(expected[split]) > 0
        rows = result[split][:]
        assert rows["input_ids"] == expected[split]["input_ids"]
        assert rows["labels"] == expected[split]["labels"]
        assert all(len(block) == BLOCK for block in rows["input_ids"])
    # document boundaries are kept: one <|endoftext|> per packed document, where the map-style path has them
    eos = sum(block.count(tokenizer.eos_token_id) for block in result["train"][:]["input_ids"])
    assert eos == sum(block.count(tokenizer.eos_token_id) for block in expected["train"]["input_ids"]) > 0

    info = json.loads((folder / PREPARED_FILE).read_text())
    assert info["block_size"] == BLOCK and info["token_dtype"] == "uint16"
    assert info["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert info["tokenizer_fingerprint"] == tokenizer_fingerprint(AutoTokenizer.from_pretrained(folder / "tokenizer"))
    assert info["blocks"] == {split: len(expected[split]) for split in ("train", "validation")}
    assert info["tokens"]["train"] == len(expected["train"]) * BLOCK
    assert info["documents"] == {"train": 27, "validation": 3}
    assert sorted(p.name for p in folder.iterdir()) == [PREPARED_FILE, "tokenizer", "train", "validation"]
    for split in ("train", "validation"):  # each worker's blocks written once, where they stay, and nothing else
        assert sorted(p.name for p in (folder / split).iterdir()) == sorted(Path(f).name for f in info["files"][split])
    shards = ["blocks.arrow"] if num_proc is None else [f"blocks_{rank:05d}_of_00002.arrow" for rank in range(2)]
    assert [Path(f).name for f in info["files"]["train"]] == shards


def test_a_folder_without_validation_serves_a_run_without_evaluation(workspace, corpus, tokenizer_dir):
    """--validation_split_percentage 0: every document trains, and the empty validation split loads as such."""
    folder = workspace / "prepared-no-validation"
    prepare(["--train_file", str(corpus), "--validation_split_percentage", "0", "--tokenizer_name",
             str(tokenizer_dir), "--block_size", str(BLOCK), "--output_dir", str(folder)])  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data_args = DataTrainingArguments(block_size=BLOCK)
    training_args = TrainingArguments(output_dir=str(workspace / "unused"), use_cpu=True, report_to="none")
    copy = shutil.copytree(corpus, workspace / "corpus-no-validation")
    corpus_args = CorpusArguments(train_file=str(copy), validation_split_percentage=0)
    expected = prepare_datasets(corpus_args, data_args, training_args, tokenizer, BLOCK)
    result = load_prepared(folder, tokenizer, BLOCK, data_args, training_args)
    assert len(result["validation"]) == len(expected["validation"]) == 0
    assert result["train"][:]["input_ids"] == expected["train"]["input_ids"]
    assert json.loads((folder / PREPARED_FILE).read_text())["documents"] == {"train": 30, "validation": 0}


def short_run(corpus: Path, tokenizer_dir: Path) -> list[str]:
    """SGD without dropout (see test_run_clm.test_two_processes_match_one_process): 8 steps, evaluated at 4.

    With 2 preprocessing workers, as the `prepared` folder was made: the blocks depend on their number.
    """
    flags = base_flags(corpus, tokenizer_dir)[4:] + ["--preprocessing_num_workers", "2"]  # without the corpus
    flags[flags.index(MODEL)] = MODEL + ",resid_pdrop=0,embd_pdrop=0,attn_pdrop=0"
    return flags + ["--optim", "sgd", "--learning_rate", "0.5", "--max_steps", "8", "--eval_steps", "4",
                    "--save_steps", "4"]  # fmt: skip


@pytest.fixture(scope="module")
def from_corpus(workspace, corpus, tokenizer_dir) -> Path:
    out = workspace / "from-corpus"
    result = run_clm(*corpus_flags(corpus), *short_run(corpus, tokenizer_dir), "--output_dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_training_from_the_folder_equals_training_from_the_corpus(from_corpus, prepared, workspace, corpus,
                                                                   tokenizer_dir):  # fmt: skip
    """The same run from the folder trains bit-identical weights, without tokenizing anything."""
    out = workspace / "from-prepared"
    flags = short_run(corpus, tokenizer_dir)
    flags.remove("--block_size")
    flags.remove(str(BLOCK))  # the folder's block size is the default
    result = run_clm(*flags, "--prepared_data", prepared, "--output_dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Tokenizing" not in result.stderr
    reference, trained = weights(from_corpus), weights(out)
    for name in reference:
        assert torch.equal(reference[name], trained[name]), name
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (from_corpus, out)]
    assert metrics[1]["eval_loss"] == metrics[0]["eval_loss"]
    info = json.loads((out / "training_info.json").read_text())
    assert info["corpus"]["train_file"] == str(corpus) and info["block_size"] == BLOCK


@pytest.mark.slow
def test_two_nodes_from_the_folder_match_one_process(from_corpus, prepared, workspace, corpus, tokenizer_dir):
    """torchrun --nnodes 2 (one process each, rendezvous on 127.0.0.1, gloo) from the prepared folder = 1 process.

    Each node gets half of the global batch of 8 blocks; the reference is the 1-process run from the corpus.
    """
    flags = short_run(corpus, tokenizer_dir)
    flags[flags.index("--per_device_train_batch_size") + 1] = "4"
    out = workspace / "two-nodes"
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(rank),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                port,
                "run_clm.py",
                *flags,
                "--prepared_data",
                str(prepared),
                "--output_dir",
                str(out),
            ],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    logs = []
    try:
        for node in nodes:
            logs.append(node.communicate(timeout=600)[0])
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)

    info = json.loads((out / "training_info.json").read_text())
    assert info["world_size"] == 2 and info["global_step"] == 8 and info["tokens_per_step"] == 8 * BLOCK
    reference, result = weights(from_corpus), weights(out)
    for name in reference:
        torch.testing.assert_close(result[name], reference[name], rtol=1e-5, atol=1e-6)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (from_corpus, out)]
    assert metrics[1]["eval_loss"] == pytest.approx(metrics[0]["eval_loss"], rel=1e-6)
    assert metrics[1]["eval_num_tokens"] == metrics[0]["eval_num_tokens"]
