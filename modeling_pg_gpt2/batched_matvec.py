"""`BatchedMatvecLinear`: `nn.Linear` whose decoding products run as a batched matrix product where that is faster.

Decoding multiplies every weight matrix by one row per sequence. Some BLAS builds run that through a
slow single-threaded matrix-vector kernel (MKL on AMD CPUs: 7-12 GB/s on this machine); the same
product written as a batch of two half-height matrices, `bmm(W.view(2, out/2, in), x)`, goes through
the batched matrix-product kernel instead, 2-3x faster there, while on other machines (MKL on a
16-core Xeon) it is 2x slower. The CPU's name does not decide it, the BLAS kernel and the core count
do, so the layer measures it: the first time a shape meets a given number of rows it times both
forms on that very product, with the weight read from memory as decoding reads it, and keeps the
faster for the rest of the process. Numbers and the benchmark: bench/RESULTS.md ("Generation"),
`bench/bench_generate.py --matvec` and `--paths`.

Part of the remote code: `modeling_pg_gpt2.py` imports it relatively, so `save_pretrained` copies it
next to the model. The state dict is `nn.Linear`'s.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

# Decoding has one row per sequence. Where the batched form pays off at all, bench/RESULTS.md found it for one
# row, and for up to 8 rows only through a vocabulary head (out >= 8 x in); larger products (prefill, training)
# are always F.linear.
MAX_ROWS = 8
# The batched form is kept only if it is clearly faster: a noisy tie must not swap a kernel for a slower one.
MARGIN = 0.9
# Decoding reads every weight once per token, with all the others read in between, so a weight comes from
# memory (or a shared last-level cache), never from the core's own cache. The measurement cycles through copies
# of the weight totalling this much, beyond the per-core caches and the L3 of one core complex: timed on one
# cache-hot weight, MKL's matrix-vector kernel wins on small matrices where it loses 1.4-2.6x in decoding.
MEASURE_BYTES = 64 * 2**20
# ...but never more copies than this: a model's weights of a few KB each (a test-sized model) would need tens of
# thousands of calls, seconds of measurement alone and minutes beside other processes. 256 covers every weight of
# the `tiny` preset (256 x 256) and of GPT-2 124M, so their measurement is the one bench/RESULTS.md describes.
MAX_COPIES = 256

# (out, in, rows, dtype, autocast dtype, bias, threads) -> whether the batched form was the faster here.
_FASTER: dict[tuple, bool] = {}


def _batched_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for x (rows, in), computed as a batched product of the weight's two halves."""
    rows, in_features = x.shape
    out_features = weight.shape[0]
    even = out_features - out_features % 2  # GPT-2's 50257-token head leaves one row over
    halves = weight[:even].view(2, even // 2, in_features)  # (2, out/2, in)
    columns = x.reshape(1, rows, in_features).mT.expand(2, -1, -1)  # (2, in, rows), column-major as BLAS wants
    y = torch.bmm(halves, columns).view(even, rows).t()  # (2, out/2, rows) -> (rows, out)
    if even < out_features:
        y = torch.cat([y, x @ weight[even:].t()], dim=1)
    if bias is not None:
        y = y + bias.to(y.dtype)  # under autocast the product is bf16, as F.linear's would be
    return y


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def batched_is_faster(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `_batched_product` beats `F.linear` for this product here: measured once per shape, then cached.

    Both forms run on the real inputs (no random numbers drawn, so sampling stays reproducible) over copies of
    the weight that do not fit in the caches (MEASURE_BYTES, at most MAX_COPIES of them), interleaved over five
    rounds; the best round of each is compared, which is what other processes' load distorts least. It takes a
    few tens of milliseconds per shape, once per process.
    """
    rows = x.shape[0]
    autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    key = (*weight.shape, rows, weight.dtype, autocast, bias is not None, torch.get_num_threads())
    if key not in _FASTER:
        x = x.detach()
        copies = min(-(-MEASURE_BYTES // (weight.numel() * weight.element_size())), MAX_COPIES)  # at least 1
        with torch.no_grad():
            weights = [weight.detach(), *(weight.detach().clone() for _ in range(copies - 1))]
            forms = (
                lambda: [F.linear(x, w, bias) for w in weights],
                lambda: [_batched_product(x, w, bias) for w in weights],
            )
            best = [float("inf"), float("inf")]
            for form in forms:  # warm-up: first calls allocate and load code
                form()
            for _ in range(5):
                for i, form in enumerate(forms):
                    best[i] = min(best[i], _seconds(form))
        _FASTER[key] = best[1] < MARGIN * best[0]
    return _FASTER[key]


class BatchedMatvecLinear(nn.Linear):
    """`nn.Linear` (same weights, same state dict) that takes the batched form for decoding's products on a CPU
    when a one-off measurement found it faster; everywhere else (GPUs, training, prefill) it is `F.linear`."""

    def _candidate_rows(self, x: torch.Tensor) -> int:
        """How many rows x has if the batched form may pay for them (see MAX_ROWS), else 0."""
        if x.device.type != "cpu" or x.shape[-1] != self.in_features:  # first, and cheap: most calls stop here
            return 0
        rows = x.numel() // self.in_features
        head = self.out_features >= 8 * self.in_features
        return rows if rows == 1 or (head and 0 < rows <= MAX_ROWS) else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._candidate_rows(x)
        # A measurement cannot run inside a compiled graph; a view of a transposed weight cannot be halved.
        if not rows or torch.compiler.is_compiling() or not self.weight.is_contiguous():
            return F.linear(x, self.weight, self.bias)
        x2d = x.reshape(rows, self.in_features)
        if not batched_is_faster(x2d, self.weight, self.bias):
            return F.linear(x, self.weight, self.bias)
        return _batched_product(x2d, self.weight, self.bias).reshape(*x.shape[:-1], self.out_features)
