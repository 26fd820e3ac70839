"""throughput.py: the FLOP count against independent counts, the peak table, and the callback's clock.

The end-to-end check (a real run's log history and metrics.json) is in test_run_clm.py, on its trained run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import FakeClock
from transformers import GPT2Config, GPT2LMHeadModel, TrainerControl, TrainerState, TrainingArguments

from modeling_pg_gpt2 import PgGPT2Config
from modeling_pg_gpt2.training import throughput
from modeling_pg_gpt2.training.throughput import ThroughputCallback, device_peak_flops, flops_per_token, gpu_peak_flops


def matmul_weights(config: GPT2Config) -> int:
    """Weights of transformers' GPT2LMHeadModel that take part in a matrix product (no lookups, biases, norms)."""
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    lookups = ["transformer.wpe.weight"] + ([] if config.tie_word_embeddings else ["transformer.wte.weight"])
    # named_parameters() lists a tied tensor once, under the token embedding's name.
    return sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and name not in lookups)


@pytest.mark.parametrize(
    "shape",
    [
        dict(),  # GPT-2 124M
        dict(vocab_size=211, n_embd=32, n_layer=3, n_head=4, n_inner=80, tie_word_embeddings=False),
    ],
)
def test_flop_count_is_six_per_matmul_weight_of_gpt2_plus_attention(shape):
    config = GPT2Config(**shape)
    context = 512
    expected = 6 * matmul_weights(config) + 12 * config.n_layer * config.n_embd * context
    names = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "tie_word_embeddings")
    pg_config = PgGPT2Config(**{name: getattr(config, name) for name in names})
    assert flops_per_token(pg_config, context) == expected


def test_gpt2_124m_at_context_1024_by_hand_and_against_nanogpts_estimate():
    config = PgGPT2Config.from_preset("gpt2")
    # Per layer 12 C^2 (q, k, v, output, and the MLP's two 4C-wide products); the head V x C.
    weights = 12 * 12 * 768**2 + 50257 * 768
    assert weights == 123_532_032
    assert flops_per_token(config, 1024) == 6 * weights + 12 * 12 * 768 * 1024 == 854_438_400
    # nanoGPT's estimate_mfu counts every parameter but the position table: 124,439,808 - 1024 x 768.
    nanogpt = 6 * (124_439_808 - 1024 * 768) + 12 * 12 * 768 * 1024
    assert flops_per_token(config, 1024) == pytest.approx(nanogpt, rel=1e-3)


@pytest.mark.parametrize(
    ("name", "precision", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "half", 989),  # the SXM part
        ("NVIDIA H100 PCIe", "half", 756),  # not the SXM figure, though "H100" matches too
        ("NVIDIA H200", "tf32", 495),
        ("NVIDIA A100-SXM4-80GB", "half", 312),  # not the A10
        ("NVIDIA A10G", "half", 125),
        ("NVIDIA L4", "fp32", 30.3),
        ("NVIDIA L40S", "half", 362),  # not the L4 or the L40
        ("NVIDIA GeForce RTX 4090", "half", 165),
    ],
)
def test_gpu_peaks_are_found_by_the_longest_matching_name(name, precision, tflops):
    assert gpu_peak_flops(name, precision) == pytest.approx(tflops * 1e12)


def test_an_unknown_gpu_has_no_peak():
    assert gpu_peak_flops("Tesla T4", "half") is None


def test_the_cpu_peak_is_measured_once_in_the_training_precision():
    fp32 = device_peak_flops(torch.device("cpu"), None)
    assert 1e9 < fp32 < 1e14  # a CPU does a few GFLOP/s per core at the least, and no CPU does 100 TFLOP/s
    assert device_peak_flops(torch.device("cpu"), None) == fp32  # cached: the same figure, not a new measurement
    assert throughput._measured_cpu_peak.cache_info().currsize >= 1


def test_the_clock_runs_during_training_steps_only(tmp_path: Path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(throughput.time, "perf_counter", clock)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    state, control = TrainerState(global_step=4), TrainerControl()  # a resumed run: counting starts at step 4
    callback = ThroughputCallback(tokens_per_step=1000, flops_per_token=2e6)
    callback.on_train_begin(args, state, control)
    callback.peak = 1e10  # instead of the measured one: an exact expectation

    def steps(count: int, seconds: float) -> None:
        for _ in range(count):
            clock.now += seconds
            state.global_step += 1
            callback.on_step_end(args, state, control)

    def log() -> dict[str, float]:
        clock.now += 0.5  # waiting for the device at the Trainer's loss read-out: training time
        logs = {"loss": 1.0}
        state.log_history.append({**logs, "step": state.global_step})
        callback.on_log(args, state, control, logs=logs)
        assert state.log_history[-1] == {**logs, "step": state.global_step}  # the history has them too
        return logs

    steps(3, 1.0)
    first = log()
    assert first["tokens_per_second"] == pytest.approx(3000 / 3.5)
    assert first["mfu"] == pytest.approx(2e6 * 3000 / 3.5 / 1e10)
    clock.now += 60  # an evaluation and a checkpoint save: not training
    callback.on_evaluate(args, state, control)
    clock.now += 30
    callback.on_save(args, state, control)
    steps(2, 1.0)
    eval_logs = {"eval_loss": 2.0}
    callback.on_log(args, state, control, logs=eval_logs)
    assert eval_logs == {"eval_loss": 2.0}  # evaluation entries get no speed
    clock.now += 20
    callback.on_evaluate(args, state, control)
    steps(1, 1.0)
    second = log()
    assert second["tokens_per_second"] == pytest.approx(3000 / 3.5)
    steps(2, 2.0)  # after the last log entry, still in the run's figure
    summary = callback.summary()
    assert summary["train_tokens_per_second"] == pytest.approx(8000 / 11)
    assert summary["train_mfu"] == pytest.approx(2e6 * 8000 / 11 / 1e10)


def test_no_mfu_where_the_peak_is_unknown(tmp_path: Path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    callback = ThroughputCallback(tokens_per_step=64, flops_per_token=1e3)
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    callback.peak = None
    state.global_step = 1
    callback.on_step_end(args, state, control)
    logs = {"loss": 1.0}
    callback.on_log(args, state, control, logs=logs)
    assert logs["tokens_per_second"] > 0 and "mfu" not in logs
    assert set(callback.summary()) == {"train_tokens_per_second"}
