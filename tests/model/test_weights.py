"""The weights: GPT-2's names and shapes, the tied head, `BatchedMatvecLinear`, GPT-2's initialisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_pg_gpt2 import PgGPT2Config, PgGPT2ForCausalLM, batched_matvec
from modeling_pg_gpt2.batched_matvec import BatchedMatvecLinear


def test_gpt2_names_linear_layers_and_tied_head(tiny_model):
    names = set(tiny_model.state_dict())
    for name in ("wte", "wpe", "ln_f"):
        assert f"transformer.{name}.weight" in names
    for name in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
        assert f"transformer.h.1.{name}.weight" in names
    assert isinstance(tiny_model.transformer.h[0].attn.c_attn, torch.nn.Linear)
    assert tiny_model.lm_head.weight is tiny_model.transformer.wte.weight


class _RecordCalls(torch.overrides.TorchFunctionMode):
    """Records which torch functions run (observes, changes nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.called: set = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.called.add(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    ("in_features", "out_features", "bias", "rows", "batched"),
    [
        (16, 48, True, 1, True),  # one row: the batched product
        (16, 51, False, 1, True),  # odd out_features: the last row on its own
        (16, 48, True, 8, False),  # a few rows through a block's layer: nn.Linear's path
        (16, 211, False, 8, True),  # ... through a vocabulary head: batched
        (16, 211, False, 9, False),  # more rows: nn.Linear's path
    ],
)
def test_batched_matvec_linear_equals_nn_linear_on_every_path(
    monkeypatch, in_features, out_features, bias, rows, batched
):
    """The batched decoding path computes F.linear exactly where it is meant to run, gradients included.

    The path is taken where a measurement finds it faster (this project's machine); here it is on whatever the CPU."""
    monkeypatch.setattr(batched_matvec, "batched_is_faster", lambda x, weight, bias: True)
    torch.manual_seed(0)
    layer = BatchedMatvecLinear(in_features, out_features, bias=bias)
    x = torch.randn(rows, 1, in_features, requires_grad=True)
    with _RecordCalls() as record:
        y = layer(x)
    assert (torch.bmm in record.called) == batched
    expected = F.linear(x, layer.weight, layer.bias)
    assert y.shape == expected.shape == (rows, 1, out_features)
    assert (y - expected).abs().max().item() <= 1e-5
    grads = torch.autograd.grad(y.square().sum(), [x, layer.weight])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, layer.weight])
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert (grad - expected_grad).abs().max().item() <= 1e-4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == F.linear(x, layer.weight, layer.bias).dtype == torch.bfloat16
    with pytest.raises(RuntimeError, match="cannot be multiplied"):  # a wrong width gets nn.Linear's own error
        layer(torch.randn(1, in_features + 1))


def test_batched_matvec_linear_is_nn_linear_where_the_batched_path_is_slower(monkeypatch):
    monkeypatch.setattr(batched_matvec, "batched_is_faster", lambda x, weight, bias: False)
    layer = BatchedMatvecLinear(16, 48)
    with _RecordCalls() as record:
        y = layer(torch.randn(1, 16))
    assert torch.bmm not in record.called and F.linear in record.called and y.shape == (1, 48)


def test_batched_matvec_linear_measures_each_product_once_and_draws_no_random_numbers(monkeypatch):
    """The choice is a one-off measurement per shape and row count, cached, which leaves sampling reproducible."""
    monkeypatch.setattr(batched_matvec, "_FASTER", {})
    products = []
    batched_product = batched_matvec._batched_product
    monkeypatch.setattr(batched_matvec, "_batched_product", lambda *a: products.append(1) or batched_product(*a))
    torch.manual_seed(0)
    layer = BatchedMatvecLinear(64, 1024, bias=False)  # a vocabulary head's shape: 1 to 8 rows are candidates
    x = torch.randn(1, 64)
    rng = torch.get_rng_state()
    first = layer(x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert list(batched_matvec._FASTER) == [(1024, 64, 1, torch.float32, None, False, torch.get_num_threads())]
    measured = len(products)
    assert measured >= 6  # warm-up and five rounds
    for _ in range(3):
        assert (layer(x) - F.linear(x, layer.weight)).abs().max().item() <= 1e-5
    assert len(products) - measured in (0, 3)  # no new measurement: the cached choice, every call the same
    assert (first - F.linear(x, layer.weight)).abs().max().item() <= 1e-5
    layer(torch.randn(4, 64))
    layer(torch.randn(9, 64))  # beyond 8 rows: never measured
    assert sorted(key[2] for key in batched_matvec._FASTER) == [1, 4]


def test_initialisation_follows_gpt2():
    torch.manual_seed(0)
    n_layer = 6
    model = PgGPT2ForCausalLM(PgGPT2Config(vocab_size=4096, n_positions=512, n_embd=256, n_layer=n_layer, n_head=4))
    residual_std = 0.02 / math.sqrt(2 * n_layer)
    for name, tensor in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert tensor.std().item() == pytest.approx(residual_std, rel=0.05), name
            assert tensor.mean().abs().item() < residual_std / 10, name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert tensor.std().item() == pytest.approx(0.02, rel=0.05), name
            assert tensor.mean().abs().item() < 0.002, name
        elif name.endswith("bias"):
            assert torch.count_nonzero(tensor) == 0, name
        else:
            assert ".ln_" in name and torch.all(tensor == 1), name
