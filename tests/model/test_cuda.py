"""The GPU paths: bf16 autocast on the flash kernel behind sdpa, flex attention, torch.compile, generation.

Every test needs a CUDA GPU and is skipped without one (CI has none). On a GPU machine:
`python -m pytest tests/model/test_cuda.py`. The oracle is again transformers' GPT2LMHeadModel with the same
weights; kernels differ between the two (Conv1D's addmm against Linear), so bf16 results are compared
with bf16 tolerances, fp32 ones with TF32 switched off.
"""

from __future__ import annotations

import pytest
import torch
from helpers import gpt2_twin, tiny_config
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import GPT2LMHeadModel

from modeling_pg_gpt2 import PgGPT2ForCausalLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 comparisons in full precision: TF32 matmuls would differ between kernels by ~1e-3."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _model(attn: str = "sdpa") -> PgGPT2ForCausalLM:
    """Big enough for the GPU kernels' constraints (head size 32), no dropout so two runs are comparable."""
    torch.manual_seed(0)
    config = tiny_config(
        vocab_size=1000, n_positions=256, n_embd=128, n_layer=3, n_head=4, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    return PgGPT2ForCausalLM._from_config(config, attn_implementation=attn).cuda()


def _ids(batch: int = 4, length: int = 128, vocab: int = 1000, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed)).cuda()


def _loss_and_grads(model, ids, autocast: bool = False, **kwargs) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss of one training forward and the gradients it gives, by parameter name, in pg_gpt2's (Linear) layout."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = model(ids, labels=ids, **kwargs).loss
    loss.backward()
    conv1d = isinstance(model, GPT2LMHeadModel)  # the twin stores these weights (in, out)
    grads = {}
    for name, parameter in model.named_parameters():
        grad = parameter.grad.float()
        grads[name.removeprefix("_orig_mod.")] = grad.t() if conv1d and name.endswith(_CONV1D) else grad
    return loss.item(), grads


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_bf16_training_runs_on_the_flash_kernel_and_equals_gpt2():
    model = _model().train()
    twin = gpt2_twin(model, "sdpa").cuda()
    ids = _ids()
    # Only the flash kernel allowed: it takes no mask, so this fails unless training uses sdpa's is_causal path.
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        loss, grads = _loss_and_grads(model, ids, autocast=True)
    twin_loss, twin_grads = _loss_and_grads(twin, ids, autocast=True)
    assert loss == pytest.approx(twin_loss, rel=1e-2)
    assert grads.keys() == twin_grads.keys()
    for name, grad in grads.items():
        assert _relative(grad, twin_grads[name]) < 5e-2, name


def test_compiled_training_step_equals_eager():
    """Inductor's kernels for the training graph, the fused loss traced in (tests/test_modeling.py counts graphs)."""
    model = _model().train()
    ids = _ids()
    loss, grads = _loss_and_grads(model, ids)
    compiled = torch.compile(model)
    compiled_loss, compiled_grads = _loss_and_grads(compiled, ids)
    assert compiled_loss == pytest.approx(loss, rel=1e-5)
    for name, grad in grads.items():
        assert _relative(compiled_grads[name], grad) < 1e-4, name


def test_flex_attention_trains_on_left_padded_batches_like_sdpa():
    model = _model().train()
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, :20] = mask[2, :7] = 0
    ids = ids.masked_fill(mask == 0, 0)
    loss, grads = _loss_and_grads(model, ids, attention_mask=mask)
    model.set_attn_implementation("flex_attention")
    assert model.config._attn_implementation == "flex_attention"
    flex_loss, flex_grads = _loss_and_grads(model, ids, attention_mask=mask)
    assert flex_loss == pytest.approx(loss, rel=1e-4)
    for name, grad in grads.items():
        assert _relative(flex_grads[name], grad) < 1e-3, name


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_left_padded_generation_on_cuda_equals_gpt2(cache_implementation):
    model = _model().eval()
    twin = gpt2_twin(model).cuda().eval()
    ids = _ids(batch=3, length=12)
    mask = torch.ones_like(ids)
    mask[0, :5] = mask[2, :2] = 0
    ids = ids.masked_fill(mask == 0, 0)
    settings = dict(attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=0, eos_token_id=None)
    ours = model.generate(ids, cache_implementation=cache_implementation, **settings)
    theirs = twin.generate(ids, **settings)
    assert torch.equal(ours, theirs)
