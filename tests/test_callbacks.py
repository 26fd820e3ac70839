"""callbacks.py: the time budget (`--max_train_minutes`), driven with the Trainer's own state objects."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from modeling_pg_gpt2.callbacks import TimeLimitCallback


def args(tmp_path: Path, **kwargs) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kwargs)


def test_the_budget_stops_training_with_a_last_evaluation_and_checkpoint(tmp_path: Path) -> None:
    training_args = args(tmp_path, eval_strategy="steps", save_strategy="steps")
    state, control = TrainerState(global_step=7), TrainerControl()
    callback = TimeLimitCallback(minutes=0.001)  # 60 ms
    callback.on_train_begin(training_args, state, control)
    callback.on_step_end(training_args, state, control)
    assert not control.should_training_stop and not callback.used_up  # within the budget
    time.sleep(0.1)
    callback.on_step_end(training_args, state, control)
    assert callback.used_up
    assert control.should_training_stop and control.should_evaluate and control.should_save


@pytest.mark.parametrize(("eval_strategy", "save_strategy"), [("no", "no"), ("steps", "no"), ("no", "steps")])
def test_no_evaluation_or_checkpoint_that_the_run_does_not_make(tmp_path: Path, eval_strategy, save_strategy):
    training_args = args(tmp_path, eval_strategy=eval_strategy, save_strategy=save_strategy)
    control = TrainerControl()
    callback = TimeLimitCallback(minutes=0)
    callback.on_train_begin(training_args, TrainerState(), control)
    callback.on_step_end(training_args, TrainerState(), control)
    assert control.should_training_stop
    assert control.should_evaluate is (eval_strategy != "no") and control.should_save is (save_strategy != "no")


def test_nothing_happens_before_training_begins_or_after_another_stop(tmp_path: Path) -> None:
    training_args, callback = args(tmp_path), TimeLimitCallback(minutes=0)
    control = TrainerControl()
    callback.on_step_end(training_args, TrainerState(), control)  # no on_train_begin: the clock never started
    assert not control.should_training_stop and not callback.used_up
    callback.on_train_begin(training_args, TrainerState(), control)
    control.should_training_stop = True  # e.g. early stopping in the same step
    callback.on_step_end(training_args, TrainerState(), control)
    assert not callback.used_up  # the run does not count as stopped by the budget
