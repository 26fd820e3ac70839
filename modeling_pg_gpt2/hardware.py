"""What the machine offers a training run: native bf16 matrix products, and malloc tuned for step-sized tensors.

`CLMTrainingArguments(auto_bf16=True)` asks [`native_bf16`]; `train` calls [`reuse_freed_memory`] on a CPU
(`--reuse_freed_memory`). Measured gains are in bench/RESULTS.md.
"""

from __future__ import annotations

import ctypes
import platform

import torch


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


__all__ = [
    "native_bf16",
    "reuse_freed_memory",
]
