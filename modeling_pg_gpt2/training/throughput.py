"""Speed you can see: tokens per second and model FLOPs utilisation (MFU) at every logging step of a run.

MFU = [`flops_per_token`] x tokens/s / (the peak FLOP/s of one device x the number of processes).
The peak is the datasheet's dense (no 2:4 sparsity) tensor-core figure for known NVIDIA GPUs
([`GPU_PEAK_TFLOPS`], in the precision the matrix products actually run in: bf16/fp16, tf32 or fp32),
and on a CPU a measured one ([`matmul_peak`]: the best square matrix product in the training
precision and thread count, measured once per process and cached). Elsewhere (an unknown GPU, MPS)
only tokens/s is reported.

[`ThroughputCallback`] adds `tokens_per_second` and `mfu` (a fraction of the peak) to every training
log entry (so the progress bar, TensorBoard/W&B and `trainer_state.json` get them), and its
[`~ThroughputCallback.summary`] gives the whole run's `train_tokens_per_second` and `train_mfu` for
`metrics.json`. Its clock runs only while training runs: evaluations and checkpoint saves are left out.
The benchmarks (`bench/bench_train.py`) use the same FLOP count and CPU peak.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import torch
from transformers import PreTrainedConfig, TrainerCallback

logger = logging.getLogger(__name__)

# Dense peak TFLOP/s of one GPU, by a substring of `torch.cuda.get_device_name()` (the longest matching key
# wins, so "H100 PCIe" before "H100" and "A100" before "A10"): (bf16/fp16 tensor cores with fp32
# accumulation, tf32 tensor cores, fp32 without tensor cores). NVIDIA datasheet figures, halved where the
# datasheet quotes 2:4 sparsity; the GeForce cards' half-precision rate is the one with fp32 accumulation.
# "H100" is the SXM part (its name is "NVIDIA H100 80GB HBM3"); the A10G has no datasheet of its own and
# shares the A10's entry (its clocks may be lower, so its MFU may read low).
GPU_PEAK_TFLOPS: dict[str, tuple[float, float, float]] = {
    "B200": (2250, 1100, 80),
    "H200 NVL": (835, 418, 60),
    "H200": (989, 495, 67),
    "GH200": (989, 495, 67),
    "H100 NVL": (835, 418, 60),
    "H100 PCIe": (756, 378, 51),
    "H100": (989, 495, 67),
    "A100": (312, 156, 19.5),
    "A40": (150, 74.8, 37.4),
    "A10": (125, 62.5, 31.2),
    "L40S": (362, 183, 91.6),
    "L40": (181, 90.5, 90.5),
    "L4": (121, 60, 30.3),
    "RTX 4090": (165, 82.6, 82.6),
    "RTX 3090": (71, 35.6, 35.6),
}
_PRECISIONS = ("half", "tf32", "fp32")  # the columns of GPU_PEAK_TFLOPS


def flops_per_token(config: PreTrainedConfig, context: int) -> float:
    """Training FLOPs per token of a GPT-2-shaped model: 6 per matrix weight plus attention (PaLM, appendix B).

    Each weight of a matrix product costs 2 FLOPs per token forward and 4 backward. The weights counted
    are those of the matrix products: the four projections of each layer and the language-model head
    (with tied embeddings `wte` is that head and counts once; the token and position embeddings are
    lookups). Biases and LayerNorms are left out, so N is 0.1% below nanoGPT's `estimate_mfu` count
    (all parameters but `wpe`) for GPT-2 124M. Attention adds 12 * n_layer * n_embd * context: q k^T and
    the weighted sum of v, 2 * context * n_embd FLOPs each per token forward, x3 with backward, without
    discounting the causal half (as nanoGPT and PaLM count). GPT-2 124M at context 1024: 0.854 GFLOP.
    """
    n_embd, n_layer = config.n_embd, config.n_layer
    n_inner = config.n_inner or 4 * n_embd
    per_layer = 3 * n_embd**2 + n_embd**2 + 2 * n_embd * n_inner  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    head = config.vocab_size * n_embd
    return 6 * (n_layer * per_layer + head) + 12 * n_layer * n_embd * context


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """The fastest of `repeats` timed calls of `fn` after one warm-up call, waiting for the device each time."""
    fn()
    _synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(device: torch.device, dtype: torch.dtype, quick: bool = False) -> float:
    """FLOP/s of the best square matmul this machine does in `dtype` with the current thread count.

    Several sizes are tried and the best time of several repeats kept, so the figure is what the hardware
    and the BLAS library reach when nothing else runs, not a datasheet number. `quick` (two sizes, three
    repeats: about a second on a 2-core CPU) is what a training run measures.
    """
    sizes = (1024, 2048, 3072) if device.type == "cpu" else (4096, 8192)
    best = 0.0
    for n in sizes[:2] if quick else sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        seconds = best_seconds(lambda a=a, b=b: torch.mm(a, b), device, repeats=3 if quick else 8)
        best = max(best, 2 * n**3 / seconds)
    return best


@functools.cache
def _measured_cpu_peak(dtype: torch.dtype, threads: int) -> float:
    """`matmul_peak` on the CPU, measured once per process for each precision and thread count."""
    return matmul_peak(torch.device("cpu"), dtype, quick=True)


def gpu_peak_flops(name: str, precision: str) -> float | None:
    """Datasheet dense peak FLOP/s of the GPU named `name` in `precision` ("half", "tf32" or "fp32"), else None."""
    matches = [key for key in GPU_PEAK_TFLOPS if key.lower() in name.lower()]
    if not matches:
        return None
    return GPU_PEAK_TFLOPS[max(matches, key=len)][_PRECISIONS.index(precision)] * 1e12


def _tf32_matmuls() -> bool:
    """Whether fp32 matrix products on CUDA run on tf32 tensor cores (`--tf32`, torch's precision settings)."""
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)  # torch >= 2.9
    if precision is None:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    if precision == "none":  # inherits the global setting
        precision = torch.backends.fp32_precision
    return precision == "tf32"


def device_peak_flops(device: torch.device, half: torch.dtype | None) -> float | None:
    """Peak FLOP/s of one `device` for products in `half` (bf16/fp16 autocast) or, when None, in fp32.

    A CUDA GPU: its datasheet figure ([`GPU_PEAK_TFLOPS`]; tf32 when fp32 products use it). A CPU: measured
    ([`matmul_peak`], once per process). None where the peak is unknown.
    """
    if device.type == "cuda":
        precision = "half" if half is not None else "tf32" if _tf32_matmuls() else "fp32"
        return gpu_peak_flops(torch.cuda.get_device_name(device), precision)
    if device.type == "cpu":
        return _measured_cpu_peak(half or torch.float32, torch.get_num_threads())
    return None


class ThroughputCallback(TrainerCallback):
    """Adds `tokens_per_second` and `mfu` to every training log entry; `summary()` gives the whole run's.

    `tokens_per_step` is what one optimizer step consumes across all processes and accumulation steps
    (per-device batch x accumulation x processes x block size; packed blocks hold no padding).
    `flops_per_token` is [`flops_per_token`] of the model at the training context. The clock stops for
    evaluations and checkpoint saves. On a GPU the time of a logging interval is read after the Trainer's
    own synchronisation for the logged loss, so queued kernels are counted; the first interval includes
    warm-up (and `torch.compile`'s compilation).

    Must run before the loggers: `train` inserts it first in the Trainer's callback list.
    """

    def __init__(self, tokens_per_step: int, flops_per_token: float) -> None:
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak: float | None = None  # of all processes together
        self._mark = 0.0  # when training (re)started after the last interval, evaluation or save
        self._seconds = 0.0  # training time of the current logging interval
        self._step = 0  # global step at the start of the current interval
        self._last_step = 0  # global step at the last step end
        self._total_seconds = 0.0
        self._total_steps = 0

    def on_train_begin(self, args, state, control, **kwargs):
        half = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
        peak = device_peak_flops(args.device, half)
        self.peak = peak * args.world_size if peak is not None else None
        if self.peak is None:
            logger.info("No known peak FLOP/s for %s: logging tokens/s without MFU.", args.device)
        self._step = self._last_step = state.global_step
        self._mark = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or state.global_step <= self._step:  # evaluations, the final summary
            return
        now = time.perf_counter()
        seconds = self._seconds + now - self._mark
        steps = state.global_step - self._step
        self._total_seconds += seconds
        self._total_steps += steps
        self._seconds, self._step, self._mark = 0.0, state.global_step, now
        figures = self._figures(steps, seconds)
        logs.update(figures)
        # The Trainer put a copy of the log into its history before the callbacks ran: complete that copy.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(figures)

    def on_evaluate(self, args, state, control, **kwargs):
        self._mark = time.perf_counter()  # the evaluation's time is not training time

    on_save = on_evaluate

    def on_step_end(self, args, state, control, **kwargs):
        # Banked at each step's end: an evaluation or save that follows restarts the clock without losing it.
        now = time.perf_counter()
        self._seconds += now - self._mark
        self._mark, self._last_step = now, state.global_step

    def _figures(self, steps: int, seconds: float) -> dict[str, float]:
        tokens_per_second = steps * self.tokens_per_step / seconds if seconds > 0 else 0.0
        figures = {"tokens_per_second": tokens_per_second}
        if self.peak:
            figures["mfu"] = self.flops_per_token * tokens_per_second / self.peak
        return figures

    def summary(self) -> dict[str, float]:
        """`train_tokens_per_second` and `train_mfu` over all training steps of this run (for metrics.json)."""
        steps = self._total_steps + self._last_step - self._step  # with the steps after the last log entry
        if not steps:
            return {}
        figures = self._figures(steps, self._total_seconds + self._seconds)
        return {f"train_{key}": value for key, value in figures.items()}


__all__ = [
    "GPU_PEAK_TFLOPS",
    "ThroughputCallback",
    "best_seconds",
    "device_peak_flops",
    "flops_per_token",
    "gpu_peak_flops",
    "matmul_peak",
]
