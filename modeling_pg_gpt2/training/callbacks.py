"""The Trainer callbacks of a run: plots at each evaluation, a time budget, and the guards that stop it cleanly.

[`PlotCallback`] redraws the curves, [`TimeLimitCallback`] ends training after `--max_train_minutes`,
[`DivergenceCallback`] stops at the first non-finite gradient norm or loss before it reaches the weights,
[`InterruptCallback`] turns Ctrl-C into a saved checkpoint. Every rank takes the same decision.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from typing import Any

import torch
from transformers import (
    TrainerCallback,
)

logger = logging.getLogger(__name__)


class PlotCallback(TrainerCallback):
    """Redraws the loss and perplexity plots in the output folder after every evaluation."""

    def on_evaluate(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from ..reports.plots import write_plots

            write_plots(args.output_dir, state.log_history)


class TimeLimitCallback(TrainerCallback):
    """Ends training after `minutes` of training, with a last evaluation and checkpoint.

    The clock counts training only: evaluations (with their samples and plots) and checkpoints are left
    out, so a budget buys the same training whatever the evaluation settings. Each log entry gets the
    minutes so far as `train_minutes` (for curves of loss against time).

    With `anneal` (the default) the learning-rate schedule runs its course by the end of the budget even
    when `max_steps` would come later: after warm-up the scheduler is asked for the step the run would
    have reached at the pace that ends exactly with the budget, `max(step, first + (max_steps - first) *
    used / budget)`, so a slow or busy machine still decays the learning rate to its end value instead of
    stopping at a high rate mid-schedule. On a machine fast enough to reach `max_steps` in time nothing
    changes. The time used is the slowest rank's, read once per step, so every rank sets the same rate.
    """

    def __init__(self, minutes: float, anneal: bool = True) -> None:
        self.seconds = minutes * 60
        self.anneal = anneal
        self.used_up = False
        self.trained = 0.0  # seconds of training so far
        self.fraction: float | None = None  # of the budget used, as of the last finished step
        self._mark: float | None = None  # when the clock last read; moved past evaluations and checkpoints

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self.trained, self.fraction, self._mark = 0.0, None, time.monotonic()
        if self.anneal and isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
            first, last = state.global_step, state.max_steps
            warmup = args.get_warmup_steps(last)

            def virtual_step(step: int) -> float:
                if self.fraction is None or step < warmup:
                    return step
                return max(step, first + (last - first) * min(self.fraction, 1.0))

            def rescheduled(schedule):  # plain functions: LambdaLR's state_dict leaves them out
                return lambda step: schedule(virtual_step(step))

            lr_scheduler.lr_lambdas = [rescheduled(schedule) for schedule in lr_scheduler.lr_lambdas]

    def on_step_end(self, args, state, control, **kwargs):
        if self._mark is None or control.should_training_stop:
            return control
        now = time.monotonic()
        self.trained, self._mark = self.trained + now - self._mark, now
        used = _slowest_rank(self.trained, args.device)
        self.fraction = used / self.seconds if self.seconds > 0 else math.inf
        if self.fraction >= 1:  # every rank reads the same value: every rank stops together
            self.used_up = True
            logger.warning(
                "Time budget of %g minutes used up at step %d: stopping.", self.seconds / 60, state.global_step
            )
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = args.save_strategy != "no"
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        self._mark = time.monotonic()

    on_save = on_evaluate

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Into the logs the loggers receive and into the copy the Trainer keeps in state.log_history.
        for entry in filter(None, [logs, state.log_history[-1] if state.log_history else None]):
            entry["train_minutes"] = round(self.trained / 60, 4)


def _slowest_rank(seconds: float, device: torch.device) -> float:
    """The largest of `seconds` over all processes (itself outside distributed training)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return seconds
    value = torch.tensor([seconds], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return float(value.item())


def _on_any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is true on any process, so that every rank takes the same decision."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


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
        if _on_any_rank(not bool(torch.isfinite(norm)), args.device):
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
    """Ctrl-C (SIGINT) during training: finish the step, save a checkpoint and stop; a second Ctrl-C stops at once.

    `stopped_at` is then the step whose checkpoint was saved. The handler is in place from the first to
    the last step only: elsewhere Ctrl-C raises `KeyboardInterrupt` as usual.
    """

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None
        self._previous: Any = None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the second Ctrl-C interrupts at once

    def on_train_begin(self, args, state, control, **kwargs):
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # e.g. a background job of a script
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_at is None and _on_any_rank(self.requested, args.device):
            message = "Ctrl-C: saving a checkpoint of step %d, then stopping (Ctrl-C again stops at once)."
            logger.warning(message, state.global_step)
            self.stopped_at = state.global_step
            control.should_training_stop = True
            control.should_evaluate = False
            control.should_save = args.save_strategy != "no"
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


__all__ = [
    "DivergenceCallback",
    "InterruptCallback",
    "PlotCallback",
    "TimeLimitCallback",
]
