"""What the machine offers a training run: native bf16 matrix products, malloc tuned for step-sized tensors,
the threads the other processes leave free, and which sharding engines it can run.

`CLMTrainingArguments` asks [`native_bf16`] (`--auto_bf16`) and refuses any [`sharding_engine`] on a machine
without GPUs; `train` calls [`setup_cpu_training`] (`--reuse_freed_memory`, `--cpu_threads`). Measured gains
are in bench/RESULTS.md.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import platform
import time
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import TrainingArguments

logger = logging.getLogger(__name__)

# The variables `accelerate launch` sets for a config with distributed_type FSDP or DEEPSPEED.
SHARDING_ENGINES = {"FSDP": "ACCELERATE_USE_FSDP", "DeepSpeed": "ACCELERATE_USE_DEEPSPEED"}


def native_bf16(device_type: str) -> bool:
    """Whether `device_type` ("cpu", "cuda", ...) multiplies bf16 matrices natively, i.e. faster than fp32.

    On a CPU that takes AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake) or AMX (Intel Sapphire Rapids
    and later): oneDNN then runs bf16 matrix products at about twice fp32's speed (2.2x on a 2-core
    Zen 4, bench/RESULTS.md). Without them bf16 is emulated and slower than fp32.
    """
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's own CPU feature probes
        return any(getattr(torch.cpu, check, lambda: False)() for check in checks)
    return False


def reuse_freed_memory() -> bool:
    """Have glibc's malloc keep large freed blocks for reuse; False where the C library is not glibc.

    A training step allocates and frees the same large tensors every time (activations, and under
    transformers' loss the logits and their gradient). Blocks above malloc's mmap threshold (32 MB at most
    by default) are fresh mappings returned to the system when freed, and each of their pages faults in
    again on first touch: about a million page faults per step for the tiny demo model. With the threshold
    at 1 GB, and no trimming of the heap's top, they come from the heap and are reused: 10-20% faster CPU
    training steps for 13-19% more resident memory (bench/RESULTS.md, "Recipe"). Affects this process only.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def busy_cores(seconds: float = 0.5) -> float | None:
    """How many cores other processes keep busy, averaged over `seconds` (Linux; None elsewhere).

    The CPU time of every other process over the interval, from /proc/<pid>/stat. Niced processes count
    only under autogroup scheduling (the default of desktop Linux), where a niced process in another
    terminal still takes its share of a core; without autogroup they yield to this process.
    """
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled", encoding="ascii") as autogroup:
            count_niced = autogroup.read().strip() != "0"
    except OSError:
        count_niced = True
    start = time.monotonic()
    before = _cpu_ticks_of_others(count_niced)
    if before is None:
        return None
    time.sleep(seconds)
    after = _cpu_ticks_of_others(count_niced) or {}
    elapsed = time.monotonic() - start
    ticks = sum(used - before.get(pid, 0) for pid, used in after.items())  # a process born since: all its time
    return max(0.0, ticks / os.sysconf("SC_CLK_TCK") / elapsed)


def _cpu_ticks_of_others(count_niced: bool) -> dict[int, int] | None:
    """utime + stime of every process but this one (and niced ones unless `count_niced`), by pid."""
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    ticks, own = {}, os.getpid()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except OSError:  # gone since listdir
            continue
        utime, stime, nice = int(fields[11]), int(fields[12]), int(fields[16])
        if pid != own and (count_niced or nice <= 0):
            ticks[pid] = utime + stime
    return ticks


def threads_for_load(busy: float, cores: int) -> int:
    """Threads for a CPU run when other processes keep `busy` of the machine's `cores` busy: the free ones.

    Every parallel kernel waits for all its threads; a thread that shares its core with a busy neighbour
    is descheduled for whole time slices, so on a 2-core machine with one core taken two threads train
    slower than one (bench/RESULTS.md, "Time to quality"). A core counts as taken when at least half
    of it is busy.
    """
    return max(1, cores - math.floor(busy + 0.5))


def set_cpu_threads(requested: int | None) -> None:
    """Use `requested` threads, or as many as the cores other processes leave free (see [`threads_for_load`])."""
    if requested is None and "OMP_NUM_THREADS" in os.environ:
        return  # the user's or the launcher's choice (torch already follows it)
    cores = torch.get_num_threads()
    if requested is None:
        busy = busy_cores()
        if busy is None:
            return
        requested = threads_for_load(busy, cores)
        reason = f"other processes keep {busy:.1f} of {cores} cores busy; --cpu_threads N to choose"
    else:
        reason = "--cpu_threads"
    torch.set_num_threads(requested)
    logger.info("CPU threads: %d (%s).", requested, reason)


def setup_cpu_training(args: TrainingArguments) -> None:
    """Before a run trains on a CPU: malloc for step-sized tensors, and the thread count.

    `args` is a `CLMTrainingArguments` (its `reuse_freed_memory` and `cpu_threads`). Does nothing for a run on
    an accelerator or one that only evaluates.
    """
    if args.device.type != "cpu" or not args.do_train:
        return
    if args.reuse_freed_memory and reuse_freed_memory():
        logger.info("malloc keeps freed blocks for reuse (--reuse_freed_memory false to turn off).")
    set_cpu_threads(args.cpu_threads)


def sharding_engine() -> str | None:
    """The sharding engine ("FSDP", "DeepSpeed") an `accelerate launch` config asked for, or None."""
    for name, variable in SHARDING_ENGINES.items():
        if os.environ.get(variable, "false").lower() in ("1", "true", "yes"):
            return name
    return None


__all__ = [
    "SHARDING_ENGINES",
    "busy_cores",
    "native_bf16",
    "reuse_freed_memory",
    "set_cpu_threads",
    "setup_cpu_training",
    "sharding_engine",
    "threads_for_load",
]
