"""callbacks.py: the time budget (`--max_train_minutes`), driven with the Trainer's own state objects.

Time is a clock the tests advance by hand (`FakeClock`): what they check holds at any machine speed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import FakeClock
from transformers import TrainerControl, TrainerState, TrainingArguments

from modeling_pg_gpt2.training import callbacks
from modeling_pg_gpt2.training.callbacks import ScheduleCallback


@pytest.fixture(autouse=True)
def clock(monkeypatch) -> FakeClock:
    """The callbacks' clock, advanced by the tests instead of sleeping."""
    fake = FakeClock()
    monkeypatch.setattr(callbacks.time, "monotonic", fake)
    return fake


def args(tmp_path: Path, **kwargs) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kwargs)


def test_the_budget_stops_training_with_a_last_evaluation_and_checkpoint(tmp_path: Path, clock) -> None:
    training_args = args(tmp_path, eval_strategy="steps", save_strategy="steps")
    state, control = TrainerState(global_step=7), TrainerControl()
    callback = ScheduleCallback(minutes=0.001)  # 60 ms
    callback.on_train_begin(training_args, state, control)
    callback.on_step_end(training_args, state, control)
    assert not control.should_training_stop and not callback.used_up  # within the budget
    clock.now += 0.1
    callback.on_step_end(training_args, state, control)
    assert callback.used_up
    assert control.should_training_stop and control.should_evaluate and control.should_save


@pytest.mark.parametrize(("eval_strategy", "save_strategy"), [("no", "no"), ("steps", "no"), ("no", "steps")])
def test_no_evaluation_or_checkpoint_that_the_run_does_not_make(tmp_path: Path, eval_strategy, save_strategy):
    training_args = args(tmp_path, eval_strategy=eval_strategy, save_strategy=save_strategy)
    control = TrainerControl()
    callback = ScheduleCallback(minutes=0)
    callback.on_train_begin(training_args, TrainerState(), control)
    callback.on_step_end(training_args, TrainerState(), control)
    assert control.should_training_stop
    assert control.should_evaluate is (eval_strategy != "no") and control.should_save is (save_strategy != "no")


def test_nothing_happens_before_training_begins_or_after_another_stop(tmp_path: Path) -> None:
    training_args, callback = args(tmp_path), ScheduleCallback(minutes=0)
    control = TrainerControl()
    callback.on_step_end(training_args, TrainerState(), control)  # no on_train_begin: the clock never started
    assert not control.should_training_stop and not callback.used_up
    callback.on_train_begin(training_args, TrainerState(), control)
    control.should_training_stop = True  # e.g. early stopping in the same step
    callback.on_step_end(training_args, TrainerState(), control)
    assert not callback.used_up  # the run does not count as stopped by the budget


def test_evaluations_and_checkpoints_are_not_training_time(tmp_path: Path, clock) -> None:
    training_args, state, control = args(tmp_path), TrainerState(), TrainerControl()
    callback = ScheduleCallback(minutes=1)
    callback.on_train_begin(training_args, state, control)
    clock.now += 0.05  # a step
    callback.on_step_end(training_args, state, control)
    callback.on_evaluate(training_args, state, control)
    clock.now += 0.2  # an evaluation and a checkpoint after it
    callback.on_evaluate(training_args, state, control)
    callback.on_save(training_args, state, control)
    clock.now += 0.05  # the next step
    callback.on_step_end(training_args, state, control)
    assert callback.trained == pytest.approx(0.1)
    logs = {"loss": 1.0}
    state.log_history.append({**logs, "step": 0})  # the Trainer keeps a copy of what it logs
    callback.on_log(training_args, state, control, logs=logs)
    assert logs["train_minutes"] == state.log_history[-1]["train_minutes"] == round(callback.trained / 60, 4)


def _cosine(tmp_path: Path, max_steps: int):
    """A tiny optimizer and the Trainer's own cosine schedule with warm-up, as `Trainer.create_scheduler` builds it."""
    import torch
    from transformers import get_scheduler

    training_args = args(tmp_path, learning_rate=1.0, warmup_steps=10, lr_scheduler_type="cosine")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=training_args.learning_rate)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=10, num_training_steps=max_steps)
    reference = get_scheduler("cosine", torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 10, max_steps)
    return training_args, optimizer, scheduler, reference.lr_lambdas[0]


def _run_steps(clock, callback, training_args, state, optimizer, scheduler, steps: int, seconds_per_step: float):
    for _ in range(steps):
        clock.now += seconds_per_step
        optimizer.step()
        scheduler.step()
        state.global_step += 1
        callback.on_step_end(training_args, state, TrainerControl())


def test_a_slow_run_anneals_the_schedule_by_the_end_of_the_budget(tmp_path: Path, clock) -> None:
    training_args, optimizer, scheduler, cosine = _cosine(tmp_path, max_steps=1000)
    state = TrainerState(global_step=0, max_steps=1000)
    callback = ScheduleCallback(minutes=1 / 60)  # 1 s: 1000 steps would need 1 ms each
    callback.on_train_begin(training_args, state, TrainerControl(), lr_scheduler=scheduler)
    _run_steps(clock, callback, training_args, state, optimizer, scheduler, steps=8, seconds_per_step=0.02)
    assert optimizer.param_groups[0]["lr"] == cosine(8)  # warm-up (10 steps) goes by steps
    _run_steps(clock, callback, training_args, state, optimizer, scheduler, steps=17, seconds_per_step=0.02)
    # Half the budget used after 25 steps: the schedule stands where a run ending on time would be, near 500.
    virtual = 1000 * callback.fraction
    assert 0.45 < callback.fraction < 0.9
    assert abs(optimizer.param_groups[0]["lr"] - cosine(virtual)) < 0.05
    assert optimizer.param_groups[0]["lr"] < 0.9 * cosine(25)
    _run_steps(clock, callback, training_args, state, optimizer, scheduler, steps=30, seconds_per_step=0.02)
    assert callback.used_up and optimizer.param_groups[0]["lr"] == cosine(1000) == 0.0


def test_a_run_on_pace_keeps_its_schedule(tmp_path: Path, clock) -> None:
    training_args, optimizer, scheduler, cosine = _cosine(tmp_path, max_steps=50)
    state = TrainerState(global_step=0, max_steps=50)
    callback = ScheduleCallback(minutes=10)
    callback.on_train_begin(training_args, state, TrainerControl(), lr_scheduler=scheduler)
    _run_steps(clock, callback, training_args, state, optimizer, scheduler, steps=30, seconds_per_step=0)
    assert optimizer.param_groups[0]["lr"] == cosine(30)
    assert "lr_lambdas" not in scheduler.state_dict() or all(not d for d in scheduler.state_dict()["lr_lambdas"])


def test_a_resumed_run_spreads_the_rest_of_the_schedule_over_its_budget(tmp_path: Path, clock) -> None:
    training_args, optimizer, scheduler, cosine = _cosine(tmp_path, max_steps=1000)
    for _ in range(600):  # the run so far, as the resumed scheduler state has it
        optimizer.step()
        scheduler.step()
    state = TrainerState(global_step=600, max_steps=1000)
    callback = ScheduleCallback(minutes=1 / 60)  # this process's budget: 1 s for the 400 steps left
    callback.on_train_begin(training_args, state, TrainerControl(), lr_scheduler=scheduler)
    _run_steps(clock, callback, training_args, state, optimizer, scheduler, steps=25, seconds_per_step=0.02)
    expected = 600 + 400 * callback.fraction  # half the budget: about step 800, not 625
    assert 0.45 < callback.fraction < 0.9
    assert abs(optimizer.param_groups[0]["lr"] - cosine(expected)) < 0.05
    assert optimizer.param_groups[0]["lr"] < 0.9 * cosine(625)


def _wsd(tmp_path: Path, max_steps: int, decay: int):
    """warmup_stable_decay as the automatic recipe sets it: 10 warm-up steps, a stable 1.0, decay to 0."""
    import torch
    from transformers import get_scheduler

    kwargs = {"num_decay_steps": decay, "min_lr_ratio": 0.0}
    training_args = args(
        tmp_path,
        learning_rate=1.0,
        warmup_steps=10,
        lr_scheduler_type="warmup_stable_decay",
        lr_scheduler_kwargs=kwargs,
        eval_strategy="steps",
    )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(
        "warmup_stable_decay",
        optimizer,
        num_warmup_steps=10,
        num_training_steps=max_steps,
        scheduler_specific_kwargs=kwargs,
    )
    return training_args, optimizer, scheduler


def _evaluate(callback, training_args, state, loss: float) -> None:
    callback.on_evaluate(training_args, state, TrainerControl(), metrics={"eval_loss": loss})


def test_a_plateau_decays_the_learning_rate_to_its_end_then_stops(tmp_path: Path, clock) -> None:
    training_args, optimizer, scheduler = _wsd(tmp_path, max_steps=1000, decay=400)
    state = TrainerState(global_step=0, max_steps=1000)
    callback = ScheduleCallback(plateau_patience=2, decay_fraction=0.25)
    callback.on_train_begin(training_args, state, TrainerControl(), lr_scheduler=scheduler)
    for loss in (3.0, 2.5, 2.4):  # improving every 100 steps: the stable phase goes on
        _run_steps(clock, callback, training_args, state, optimizer, scheduler, steps=100, seconds_per_step=0.1)
        _evaluate(callback, training_args, state, loss)
    assert callback.decay is None and optimizer.param_groups[0]["lr"] == 1.0
    for loss in (2.45, 2.41):  # two evaluations without a better loss, at steps 400 and 500
        _run_steps(clock, callback, training_args, state, optimizer, scheduler, steps=100, seconds_per_step=0.1)
        _evaluate(callback, training_args, state, loss)
    assert callback.decay == [500, 600, 125]  # from the decay's start (step 600 of 1000), over 25% of 500 steps
    lrs = []
    for _ in range(125):
        control = TrainerControl()
        clock.now += 0.1
        optimizer.step()
        scheduler.step()
        state.global_step += 1
        callback.on_step_end(training_args, state, control)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 1.0 and lrs[-1] == 0.0  # the whole decay, in order
    assert control.should_training_stop and control.should_evaluate and control.should_save
    assert callback.plateaued and not callback.used_up


def test_without_patience_a_plateau_changes_nothing(tmp_path: Path, clock) -> None:
    training_args, optimizer, scheduler = _wsd(tmp_path, max_steps=100, decay=40)
    state = TrainerState(global_step=0, max_steps=100)
    callback = ScheduleCallback(minutes=10)
    callback.on_train_begin(training_args, state, TrainerControl(), lr_scheduler=scheduler)
    for loss in (3.0, 3.1, 3.2, 3.3):
        _run_steps(clock, callback, training_args, state, optimizer, scheduler, steps=10, seconds_per_step=0.1)
        _evaluate(callback, training_args, state, loss)
    assert callback.decay is None and optimizer.param_groups[0]["lr"] == 1.0


def test_the_plateau_state_survives_a_resume(tmp_path: Path, clock) -> None:
    """What a checkpoint stores (`state()`) rebuilds a callback that goes on where the first one stood."""
    training_args, optimizer, scheduler = _wsd(tmp_path, max_steps=1000, decay=400)
    state = TrainerState(global_step=0, max_steps=1000)
    callback = ScheduleCallback(plateau_patience=1, decay_fraction=0.5)
    callback.on_train_begin(training_args, state, TrainerControl(), lr_scheduler=scheduler)
    for loss in (3.0, 3.2):
        _run_steps(clock, callback, training_args, state, optimizer, scheduler, steps=100, seconds_per_step=0.1)
        _evaluate(callback, training_args, state, loss)
    saved = callback.state()
    restored = ScheduleCallback(**saved["args"])  # as transformers restores an ExportableState callback
    for name, value in saved["attributes"].items():
        setattr(restored, name, value)
    assert restored.decay == callback.decay == [200, 600, 100] and restored.best_loss == 3.0
    restored.on_train_begin(training_args, state, TrainerControl(), lr_scheduler=scheduler)
    _run_steps(clock, restored, training_args, state, optimizer, scheduler, steps=100, seconds_per_step=0.1)
    assert restored.plateaued and optimizer.param_groups[0]["lr"] == 0.0
