"""Run a pg-gpt2 script with a gate after a checkpoint, so a test acts on a run at a known step, at any speed.

    python tests/gated_run.py GATE_DIR STEP run_clm.py ARGS...

The script runs as `python run_clm.py ARGS...` would, with one more Trainer callback: once the checkpoint of
step STEP (or the first one after it) is saved, the run writes GATE_DIR/reached (the step) and waits until
GATE_DIR/open exists. A test sends its signal (Ctrl-C, SIGTERM, SIGKILL) while the run is held there, then
opens the gate: the run can neither finish before the signal arrives on a fast machine, nor be caught
before its checkpoint on a slow one. Nothing else about the run changes.
"""

from __future__ import annotations

import runpy
import signal
import sys
import time
from pathlib import Path

from transformers import Trainer, TrainerCallback

ROOT = Path(__file__).resolve().parents[1]


class Gate(TrainerCallback):
    def __init__(self, folder: Path, step: int) -> None:
        self.folder, self.step, self.passed = folder, step, False

    def on_save(self, args, state, control, **kwargs):
        if self.passed or state.global_step < self.step:
            return
        self.passed = True
        (self.folder / "reached").write_text(str(state.global_step))
        while not (self.folder / "open").exists():
            time.sleep(0.01)  # signals are handled meanwhile: Python runs their handlers between sleeps


def main() -> None:
    # As in a terminal, whatever the test runner inherited: a suite started in the background (`make test &`)
    # ignores SIGINT, and Python keeps an ignored SIGINT ignored, so the run would never see the Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    folder, step, script, *argv = sys.argv[1:]
    gate = Gate(Path(folder), int(step))
    init = Trainer.__init__

    def gated_init(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        self.add_callback(gate)

    Trainer.__init__ = gated_init
    sys.argv = [script, *argv]
    sys.path.insert(0, str(ROOT))
    runpy.run_path(str(ROOT / script), run_name="__main__")


if __name__ == "__main__":
    main()
