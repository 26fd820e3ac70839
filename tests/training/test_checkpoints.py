"""checkpoints.py: which checkpoint a re-run resumes from, and when a finished run trains on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modeling_pg_gpt2.cli.arguments import make_parser, parse_arguments
from modeling_pg_gpt2.data.blocks import DataTrainingArguments
from modeling_pg_gpt2.data.corpus import CorpusArguments
from modeling_pg_gpt2.reports.run_record import RunInfo
from modeling_pg_gpt2.training.arguments import CLMTrainingArguments
from modeling_pg_gpt2.training.checkpoints import asks_for_more, checkpoint_problem, find_resumable_checkpoint
from modeling_pg_gpt2.training.model_init import ModelArguments

DATACLASSES = (ModelArguments, CorpusArguments, DataTrainingArguments, CLMTrainingArguments)


def write_checkpoint(folder: Path, step: int = 8, weights: bool = True, state: bool = True) -> Path:
    """A checkpoint folder as the Trainer leaves it: weights, optimizer state, trainer_state.json (written last)."""
    folder.mkdir(parents=True)
    if weights:
        save_file({"wte.weight": torch.ones(4, 2)}, folder / "model.safetensors")
        torch.save({"step": torch.tensor(step)}, folder / "optimizer.pt")
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_a_complete_checkpoint_has_no_problem(tmp_path: Path) -> None:
    assert checkpoint_problem(write_checkpoint(tmp_path / "checkpoint-8")) is None


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda c: (c / "trainer_state.json").unlink(), "no readable trainer_state.json"),
        (lambda c: (c / "trainer_state.json").write_text('{"global_st'), "no readable trainer_state.json"),
        (lambda c: (c / "trainer_state.json").write_text("{}"), "no readable trainer_state.json"),
        (lambda c: (c / "model.safetensors").unlink(), "no model weights"),
        (lambda c: _truncate(c / "model.safetensors"), "model.safetensors is truncated or corrupt"),
        (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt is truncated or corrupt"),
    ],
)
def test_a_damaged_checkpoint_names_its_problem(tmp_path: Path, damage, problem: str) -> None:
    checkpoint = write_checkpoint(tmp_path / "checkpoint-8")
    damage(checkpoint)
    assert checkpoint_problem(checkpoint) == problem


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_the_newest_complete_checkpoint_is_resumed_by_step_not_by_name(tmp_path: Path) -> None:
    for step in (2, 9, 10):
        write_checkpoint(tmp_path / f"checkpoint-{step}", step)
    write_checkpoint(tmp_path / "checkpoint-12", 12, state=False)  # cut off while being written
    write_checkpoint(tmp_path / "checkpoint-final", 99)  # not a checkpoint-N name
    assert find_resumable_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # 10 > 9, though "10" < "9"


def test_no_resumable_checkpoint(tmp_path: Path) -> None:
    assert find_resumable_checkpoint(tmp_path / "missing") is None
    write_checkpoint(tmp_path / "checkpoint-4", 4, weights=False)
    assert find_resumable_checkpoint(tmp_path) is None


BUDGET = {"finished": "time budget", "max_steps": 800, "global_step": 500, "max_train_minutes": 9.5}
EPOCHS = {"finished": "max_steps", "max_steps": -1, "num_train_epochs": 3.0, "global_step": 90}


@pytest.mark.parametrize(
    ("info", "flags", "more"),
    [
        ({"finished": "max_steps", "max_steps": 30, "global_step": 30}, ["--max_steps", "30"], False),
        ({"finished": "max_steps", "max_steps": 30, "global_step": 30}, ["--max_steps", "20"], False),
        ({"finished": "max_steps", "max_steps": 30, "global_step": 30}, ["--max_steps", "40"], True),
        (BUDGET, ["--max_steps", "800", "--max_train_minutes", "9.5"], False),
        (BUDGET, ["--max_steps", "800", "--max_train_minutes", "20"], True),
        (BUDGET, ["--max_steps", "800"], True),  # no time budget any more
        (BUDGET, ["--max_steps", "1000", "--max_train_minutes", "9.5"], True),
        ({"finished": "early stopping", "max_steps": 800, "global_step": 300}, ["--max_steps", "800"], False),
        (EPOCHS, ["--num_train_epochs", "3"], False),
        (EPOCHS, ["--num_train_epochs", "4"], True),
    ],
)
def test_a_finished_run_trains_on_only_when_asked_for_more(info, flags, more):
    *_, args = parse_arguments(make_parser(DATACLASSES), ["--dataset_name", "x", "--output_dir", "x", *flags])
    assert asks_for_more(RunInfo.from_dict(info), args) is more
