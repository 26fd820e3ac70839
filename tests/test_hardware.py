"""hardware.py: malloc settings for step-sized tensors (the bf16 probe is tested end to end in test_run_clm.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


_PAGE_FAULTS = """
import resource, torch
from modeling_pg_gpt2.hardware import reuse_freed_memory

def page_faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(16 * 2**20)  # 64 MB written, then freed, as a training step does with its logits
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

page_faults()
default = page_faults()
assert reuse_freed_memory()
page_faults()
print(default, page_faults())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_reuse_freed_memory_keeps_large_blocks_mapped():
    """After reuse_freed_memory(), a 64 MB block freed and allocated again no longer faults in page by page."""
    done = subprocess.run(
        [sys.executable, "-c", _PAGE_FAULTS], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    default, reused = (int(n) for n in done.stdout.split())
    pages = 5 * 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert default >= 0.9 * pages  # every block's pages fault in again
    assert reused <= 0.1 * pages
