"""SIGTERM ends a command as Ctrl-C does: cleanup runs, one line, exit 143 (the shell's 128 + 15)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time

import pytest

from modeling_pg_gpt2.common.errors import Interrupted, Terminated, run_cli, sigterm_raises


def test_sigterm_in_a_command_runs_its_cleanup_and_exits_143():
    cleaned = []

    def main() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler right after this call
            time.sleep(30)  # never reached: the handler raises first
        finally:
            cleaned.append(True)  # a lock released, a staging folder removed

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        run_cli(main)
    assert exit_.value.code == 143 and cleaned == [True]
    assert err.getvalue().splitlines() == ["error: interrupted (SIGTERM)"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the command's alone


def test_sigterm_raises_terminated_which_is_handled_like_ctrl_c():
    with sigterm_raises(), pytest.raises(KeyboardInterrupt) as raised:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    assert isinstance(raised.value, Terminated)


def test_a_forked_worker_keeps_the_default_action():
    """A pool worker stuck in C code never runs a Python handler: its pool's terminate() would wait forever
    (it did, for datasets' pools after the tokenizer had trained in the same process)."""
    with sigterm_raises():
        pid = os.fork()
        if pid == 0:  # the child
            os._exit(0 if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else 1)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_interrupted_exits_with_the_signal_status():
    assert Interrupted("x").exit_code == 130
    assert Interrupted("x", signal.SIGTERM).exit_code == 143
