"""reports/run_record.py: training_info.json as one typed record, which run_clm.py writes and the model card reads."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
from helpers import ROOT

from modeling_pg_gpt2.data.corpus import CorpusArguments
from modeling_pg_gpt2.reports.model_card import build_model_card
from modeling_pg_gpt2.reports.run_record import RunInfo

# The keys of training_info.json, in order: other code and users read the file, so they stay as they are.
KEYS = [
    "model_source", "tokenizer", "corpus", "block_size", "streaming", "train_blocks", "validation_blocks",
    "streaming_validation_documents", "world_size", "per_device_train_batch_size", "gradient_accumulation_steps",
    "tokens_per_step", "global_step", "tokens_seen", "best_global_step", "learning_rate", "lr_scheduler_type",
    "warmup_steps", "weight_decay", "adam_betas", "max_grad_norm", "optim", "muon_learning_rate",
    "document_masking", "max_steps", "num_train_epochs", "max_train_minutes", "plateau_patience", "seed", "bf16",
    "fp16", "torch_compile", "reuse_freed_memory", "attn_implementation", "device", "versions", "recipe", "finished",
]  # fmt: skip
# A training_info.json written before streaming, Muon, document masking and `finished` were recorded.
OLD = {
    "model_source": "from scratch (gpt2)", "tokenizer": "tok", "block_size": 64, "train_blocks": 120,
    "validation_blocks": 7, "world_size": 1, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
    "tokens_per_step": 512, "global_step": 30, "tokens_seen": 15360, "best_global_step": 30,
    "learning_rate": 0.0006, "lr_scheduler_type": "cosine", "warmup_steps": 3, "weight_decay": 0.1,
    "adam_betas": [0.9, 0.95], "max_grad_norm": 1.0, "optim": "adamw_torch", "max_steps": 30,
    "num_train_epochs": 3.0, "seed": 42, "bf16": False, "fp16": False, "device": "cpu",
    "corpus": {"train_file": "corpus/", "text_column": "text", "validation_split_percentage": 10.0, "split_seed": 42},
    "a_key_since_dropped": 1,
}  # fmt: skip


def full_record(**changes) -> RunInfo:
    """A record with every field set to a value of its own."""
    values = {name: f"<{name}>" for name in KEYS}
    values.update(
        corpus=CorpusArguments(dataset_name="sgoel9/paul_graham_essays", validation_split_percentage=7.0),
        adam_betas=[0.9, 0.95],
        versions={"torch": "2.13.0"},
        streaming=False,
        recipe={
            "vocab_size": {"value": 512, "reason": "corpus 0.30 MB"},
            "max_steps": {"value": 90, "reason": "given"},
        },
    )
    return RunInfo(**{**values, **changes})


def test_training_info_json_keeps_its_keys_and_round_trips():
    record = full_record()
    written = json.loads(record.to_json())
    assert list(written) == KEYS == [f.name for f in dataclasses.fields(RunInfo)]
    assert written["corpus"] == {
        "dataset_name": "sgoel9/paul_graham_essays",
        "text_column": "text",
        "validation_split_percentage": 7.0,
        "split_seed": 42,
    }  # fmt: skip  (options that are set, without preprocessing_num_workers)
    assert RunInfo.from_json(record.to_json()) == record


def test_a_stream_records_no_held_out_percentage():
    written = json.loads(full_record(streaming=True).to_json())
    assert "validation_split_percentage" not in written["corpus"] and "split_seed" not in written["corpus"]


def test_an_old_training_info_json_still_loads_and_makes_a_card(tmp_path: Path):
    (tmp_path / "training_info.json").write_text(json.dumps(OLD))
    record = RunInfo.read(tmp_path)
    assert record.global_step == 30 and record.corpus.train_file == "corpus/"
    assert record.finished is None and record.streaming is None and record.muon_learning_rate is None
    card = str(build_model_card(tmp_path))
    assert "| Optimizer steps | 30 |" in card and "| Peak learning rate | 0.0006 |" in card
    assert "10% of the documents are held out" in card and "local text: `corpus`" in card
    assert "Muon" not in card  # a field the old file lacks is no row


def test_no_record_is_no_row(tmp_path: Path):
    assert RunInfo.read(tmp_path) is None
    (tmp_path / "training_info.json").write_text("[1, 2]")
    assert RunInfo.read(tmp_path) is None
    card = str(build_model_card(tmp_path))
    assert "Optimizer steps" not in card and "?% of the documents are held out" in card


def test_the_card_reads_only_fields_of_the_record():
    """Every `run.X` and corpus attribute the card reads is a field: a renamed field cannot drop a row unseen."""
    tree = ast.parse((ROOT / "modeling_pg_gpt2" / "reports" / "model_card.py").read_text(encoding="utf-8"))
    run_fields = {f.name for f in dataclasses.fields(RunInfo)}
    corpus_fields = {f.name for f in dataclasses.fields(CorpusArguments)}
    read_off_run, read_off_corpus = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "run":
                read_off_run.add(node.attr)
            elif node.value.id == "corpus":
                read_off_corpus.add(node.attr)
    assert len(read_off_run) > 20 and len(read_off_corpus) >= 4  # the card's rows are found
    assert read_off_run <= run_fields, f"the card reads {read_off_run - run_fields}, which RunInfo does not have"
    assert read_off_corpus <= corpus_fields, f"the card reads {read_off_corpus - corpus_fields} off the corpus"


@pytest.mark.parametrize("streaming", [False, True])
def test_every_row_of_the_card_shows_the_record(tmp_path: Path, streaming: bool):
    record = full_record(streaming=streaming, streaming_validation_documents=3, document_masking=True)
    card = str(build_model_card(tmp_path, run=record, model_name="essays", license="apache-2.0"))
    for name in ("model_source", "optim", "learning_rate", "seed", "device", "global_step", "tokens_per_step"):
        assert f"<{name}>" in card, name
    assert "license: apache-2.0" in card and "| Document masking | yes |" in card
    assert "| `vocab_size` | 512 (corpus 0.30 MB) |" in card and "| `max_steps` | 90 (given) |" in card
    held_out = "the first 3 documents of the stream validate" if streaming else "7% of the documents are held out"
    assert held_out in card


def test_the_training_arguments_recorded_as_they_are_are_fields_of_the_record():
    from modeling_pg_gpt2.training.arguments import CLMTrainingArguments
    from modeling_pg_gpt2.training.run_info import RECORDED_ARGUMENTS

    assert set(RECORDED_ARGUMENTS) <= set(KEYS)
    missing = [name for name in RECORDED_ARGUMENTS if not hasattr(CLMTrainingArguments, name)]
    assert not missing, f"CLMTrainingArguments has no {missing}"
