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
            from .plots import write_plots

            write_plots(args.output_dir, state.log_history)


class TimeLimitCallback(TrainerCallback):
    """Ends training once `minutes` of wall-clock time have passed, with a last evaluation and checkpoint."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60
        self.start: float | None = None
        self.used_up = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.start is None or control.should_training_stop:
            return control
        if _on_any_rank(time.monotonic() - self.start >= self.seconds, args.device):  # every rank stops together
            self.used_up = True
            logger.warning(
                "Time budget of %g minutes used up at step %d: stopping.", self.seconds / 60, state.global_step
            )
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = args.save_strategy != "no"
        return control


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
