"""Start an OpenAI-compatible server (`pg-gpt2-serve`, vLLM) for a test, and always stop it.

`running_server(command, port, log)` starts `command` (which must listen on `port`, from `helpers.free_port()`),
waits until `GET /health` answers 200 (the server process alive, within a deadline generous enough for a loaded
machine), yields the API's base URL, and stops the server on the way out, also when the test failed: SIGTERM, then
SIGKILL to its whole process group if it or a process it started has not exited in time. `stop_server` is
that stop, for a test that checks how the server ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil


def wait_until_healthy(process: subprocess.Popen, port: int, log: Path, deadline_s: float) -> None:
    """Poll `GET /health` until it answers 200; fail (with the log's end) if the server exits or the deadline
    passes first."""
    deadline = time.monotonic() + deadline_s
    while True:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the server was not up after {deadline_s:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


def stop_server(process: subprocess.Popen, timeout_s: float = 60) -> tuple[int | None, list[psutil.Process]]:
    """SIGTERM the server and wait for it and the processes it started to exit (uvicorn shuts down, then exits by
    the same signal: -SIGTERM); SIGKILL its process group if anything is left after `timeout_s`. Returns the
    server's exit status (None if it had to be killed) and the processes it started that had to be killed."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    status = process.poll()
    if status is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            status = process.wait(timeout_s)
    _, left = psutil.wait_procs(children, timeout=timeout_s if status is not None else 0)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the server if still there, and what it started
    process.wait()
    return status, left


@contextlib.contextmanager
def running_server(
    command: Sequence[str],
    port: int,
    log: Path,
    env: dict[str, str] | None = None,
    deadline_s: float = 300,
    cwd: Path | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `command` (a server listening on 127.0.0.1:`port`, output to `log`) for the `with` block; yields the
    OpenAI API's base URL and the process."""
    with log.open("w") as out:
        process = subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
    try:
        wait_until_healthy(process, port, log, deadline_s)
        yield f"http://127.0.0.1:{port}/v1", process
    finally:
        stop_server(process)
