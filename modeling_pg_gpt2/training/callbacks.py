"""The Trainer callbacks of a run: plots at each evaluation, a time budget, and the guards that stop it cleanly.

[`PlotCallback`] redraws the curves, [`ScheduleCallback`] ends training after `--max_train_minutes` or on a
validation plateau (`--plateau_patience`), the learning rate decayed to its end either way,
[`DivergenceCallback`] stops at the first non-finite gradient norm or loss before it reaches the weights,
[`InterruptCallback`] turns Ctrl-C or SIGTERM into a saved checkpoint. Every rank takes the same decision.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..common.errors import SIGNAL_NAMES

logger = logging.getLogger(__name__)


class PlotCallback(TrainerCallback):
    """Redraws the loss and perplexity plots in the output folder after every evaluation."""

    def on_evaluate(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from ..reports.plots import write_plots

            write_plots(args.output_dir, state.log_history)


class ScheduleCallback(TrainerCallback, ExportableState):
    """Ends training on a time budget or a validation plateau, with the learning-rate schedule run to its end.

    Time budget (`minutes`): training stops after `minutes` of training, with a last evaluation and
    checkpoint. The clock counts training only: evaluations (with their samples and plots) and checkpoints
    are left out, so a budget buys the same training whatever the evaluation settings. Each log entry gets
    the minutes so far as `train_minutes` (for curves of loss against time). With `anneal` (the default)
    the schedule runs its course by the end of the budget even when `max_steps` would come later: after
    warm-up the scheduler is asked for the step the run would have reached at the pace that ends exactly
    with the budget, `max(step, first + (max_steps - first) * used / budget)`, so a slow or busy machine
    still decays the learning rate to its end value instead of stopping at a high rate mid-schedule. The
    time used is the slowest rank's, read once per step, so every rank sets the same rate.

    Plateau (`plateau_patience`): after that many evaluations without a lower eval loss, the schedule jumps
    to the start of its decay (warmup_stable_decay: where the stable phase ends; other schedules: where they
    stand) and decays to its end over the next `decay_fraction` of the steps trained so far; then training
    stops with a last evaluation and checkpoint. Minutes of a run that has stopped improving go to the
    decay, which lowers the loss, instead of to more steps at a high rate, which raise it; the best model
    is kept as always. The plateau's state is saved with each checkpoint, so a resumed run keeps it.
    """

    def __init__(
        self,
        minutes: float | None = None,
        plateau_patience: int | None = None,
        decay_fraction: float = 0.2,
        anneal: bool = True,
    ) -> None:
        self.minutes, self.plateau_patience, self.decay_fraction, self.anneal = (
            minutes,
            plateau_patience,
            decay_fraction,
            anneal,
        )
        self.used_up = False  # the time budget ended training
        self.trained = 0.0  # seconds of training so far
        self.fraction: float | None = None  # of the budget used, as of the last finished step
        self._mark: float | None = None  # when the clock last read; moved past evaluations and checkpoints
        self.best_loss: float | None = None
        self.evaluations_without_improvement = 0
        self.decay: list[float] | None = None  # [first step, schedule step it starts at, steps] once on a plateau
        self.plateaued = False  # the plateau's decay ended training
        self._virtual_step: Callable[[int], float] = float  # the schedule's step for a step (on_train_begin)
        self._decay_start = 0  # the schedule step where warmup_stable_decay's decay begins

    @property
    def seconds(self) -> float:
        return math.inf if self.minutes is None else self.minutes * 60

    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "minutes": self.minutes,
                "plateau_patience": self.plateau_patience,
                "decay_fraction": self.decay_fraction,
                "anneal": self.anneal,
            },
            "attributes": {
                "best_loss": self.best_loss,
                "evaluations_without_improvement": self.evaluations_without_improvement,
                "decay": self.decay,
            },
        }

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self.trained, self.fraction, self._mark = 0.0, None, time.monotonic()
        self._decay_start = state.max_steps - _decay_steps(args)
        if self.anneal and isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
            first, last = state.global_step, state.max_steps
            warmup = args.get_warmup_steps(last)

            def virtual_step(step: int) -> float:
                virtual = float(step)
                if self.fraction is not None and step >= warmup:  # the pace that ends with the budget
                    virtual = max(virtual, first + (last - first) * min(self.fraction, 1.0))
                if self.decay is not None:  # on a plateau: from the decay's start to the end in `length` steps
                    start, begin, length = self.decay
                    virtual = max(virtual, begin + (last - begin) * min(1.0, (step - start) / length))
                return virtual

            self._virtual_step = virtual_step

            def rescheduled(schedule):  # plain functions: LambdaLR's state_dict leaves them out
                return lambda step: schedule(virtual_step(step))

            lr_scheduler.lr_lambdas = [rescheduled(schedule) for schedule in lr_scheduler.lr_lambdas]

    def on_step_end(self, args, state, control, **kwargs):
        if self._mark is None or control.should_training_stop:
            return control
        now = time.monotonic()
        self.trained, self._mark = self.trained + now - self._mark, now
        used = _largest_on_any_rank(self.trained, args.device)
        self.fraction = used / self.seconds if self.seconds > 0 else math.inf
        if self.fraction >= 1:  # every rank reads the same value: every rank stops together
            self.used_up = True
            logger.warning("Time budget of %g minutes used up at step %d: stopping.", self.minutes, state.global_step)
        elif self.decay is not None and state.global_step >= self.decay[0] + self.decay[2]:
            self.plateaued = True
            logger.warning("The learning rate has decayed to its end at step %d: stopping.", state.global_step)
        else:
            return control
        control.should_training_stop = True
        control.should_evaluate = args.eval_strategy != "no"
        control.should_save = args.save_strategy != "no"
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._mark = time.monotonic()
        loss = (metrics or {}).get("eval_loss")
        if not self.plateau_patience or loss is None or self.decay is not None:
            return
        if self.best_loss is None or loss < self.best_loss:
            self.best_loss, self.evaluations_without_improvement = loss, 0
            return
        self.evaluations_without_improvement += 1
        if self.evaluations_without_improvement >= self.plateau_patience and state.global_step < state.max_steps:
            step = state.global_step
            length = max(1, round(self.decay_fraction * step))
            begin = max(self._virtual_step(step), self._decay_start)
            self.decay = [step, begin, length]
            logger.warning(
                "No better eval loss in %d evaluations (best %.4f): decaying the learning rate to its end over the "
                "next %d steps, then stopping.",
                self.evaluations_without_improvement,
                self.best_loss,
                length,
            )

    def on_save(self, args, state, control, **kwargs):
        self._mark = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Into the logs the loggers receive and into the copy the Trainer keeps in state.log_history.
        for entry in filter(None, [logs, state.log_history[-1] if state.log_history else None]):
            entry["train_minutes"] = round(self.trained / 60, 4)


def _decay_steps(args: Any) -> int:
    """The length of warmup_stable_decay's decay (its `num_decay_steps`); 0 for schedules without a stable phase."""
    kind = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    if kind != "warmup_stable_decay":
        return 0
    return int((args.lr_scheduler_kwargs or {}).get("num_decay_steps", 0))


def _largest_on_any_rank(number: float, device: torch.device) -> float:
    """The largest of `number` over all processes (itself outside distributed training), so that every rank
    takes the same decision."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return number
    value = torch.tensor([number], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return float(value.item())


class DivergenceCallback(TrainerCallback):
    """Stops training at the first non-finite gradient norm or training loss, before it reaches the weights.

    Every optimizer step, the gradient norm is checked after the backward pass (one device sync per step);
    a non-finite one drops the gradients, so the optimizer step leaves every weight as it was, and ends
    training without a checkpoint. Under fp16 the loss scaler skips overflowing steps by design, so only
    the logged loss is checked there. `diverged` then describes what was seen.
    """

    def __init__(self) -> None:
        self.diverged: str | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if args.fp16 or model is None:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if _largest_on_any_rank(float(not bool(torch.isfinite(norm))), args.device):
            for parameter in model.parameters():
                parameter.grad = None  # the optimizer skips parameters without a gradient
            self._stop(control, f"the gradient norm is {norm.item():g} at step {state.global_step + 1}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss) and self.diverged is None:
            self._stop(control, f"the training loss is {loss:g} at step {state.global_step}")
        self._suppress(control)

    def on_step_end(self, args, state, control, **kwargs):
        self._suppress(control)

    on_epoch_end = on_step_end

    def _stop(self, control, what: str) -> None:
        self.diverged = what
        control.should_training_stop = True
        self._suppress(control)

    def _suppress(self, control) -> None:
        if self.diverged is not None:  # nothing of a diverged step is evaluated or saved
            control.should_save = control.should_evaluate = False


class InterruptCallback(TrainerCallback):
    """Ctrl-C (SIGINT) or SIGTERM during training: finish the step, save a checkpoint and stop; a second
    signal stops at once.

    SIGTERM is what Slurm, Kubernetes and `kill` send before they kill a job (after a grace period: 30 s by
    default on both), so a preempted run leaves a checkpoint of the step it was at, which the same command
    resumes from. `stopped_at` is then the step whose checkpoint was saved, `signum` the signal. The handlers
    are in place from the first to the last step only: elsewhere the signals interrupt as usual
    (`common.errors.run_cli`).
    """

    def __init__(self) -> None:
        self.requested = 0  # the signal received, 0 for none
        self.stopped_at: int | None = None
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.requested = signum
        self._restore()  # the second signal interrupts at once

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def on_train_begin(self, args, state, control, **kwargs):
        for signum in SIGNAL_NAMES:
            if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. Ctrl-C in a background job of a script
                self._previous[signum] = signal.signal(signum, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        signum = int(_largest_on_any_rank(self.requested, args.device)) if self.stopped_at is None else 0
        if signum:
            name = SIGNAL_NAMES[signum]
            message = "%s: saving a checkpoint of step %d, then stopping (%s again stops at once)."
            logger.warning(message, name, state.global_step, name)
            self.stopped_at, self.signum = state.global_step, signum
            control.should_training_stop = True
            control.should_evaluate = False
            control.should_save = args.save_strategy != "no"
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()


__all__ = [
    "DivergenceCallback",
    "InterruptCallback",
    "PlotCallback",
    "ScheduleCallback",
]
