"""The model in transformers' integrations: the attention interface, flex and flash attention, PEFT LoRA."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    gpt2_twin,
    left_padded,
    random_ids,
    tiny_config,
)
from transformers import (
    AutoModelForCausalLM,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
from transformers.utils import is_flash_attn_2_available

from modeling_pg_gpt2 import PgGPT2ForCausalLM


def test_set_attn_implementation_dispatches_through_the_attention_interface(tiny_model):
    """transformers' `set_attn_implementation` reaches every layer, custom kernels registered by name too."""
    calls = []

    def counting_sdpa(module, *args, **kwargs):
        calls.append(module.layer_idx)
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, *args, **kwargs)

    AttentionInterface.register("counting_sdpa", counting_sdpa)
    ids = random_ids()
    reference = gpt2_twin(tiny_model)(ids).logits
    tiny_model.set_attn_implementation("counting_sdpa")
    assert tiny_model.config._attn_implementation == "counting_sdpa"
    assert (tiny_model(ids).logits - reference).abs().max().item() <= 1e-5
    assert calls == list(range(tiny_model.config.n_layer))
    tiny_model.set_attn_implementation("eager")
    assert (tiny_model(ids).logits - reference).abs().max().item() <= 1e-5
    assert len(calls) == tiny_model.config.n_layer


@pytest.mark.slow
def test_flex_attention_equals_gpt2_with_left_padding(tiny_model):
    twin = gpt2_twin(tiny_model)
    ids, mask = left_padded(random_ids(), [5, 0, 2])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    tiny_model.set_attn_implementation("flex_attention")
    assert tiny_model.config._attn_implementation == "flex_attention"
    with torch.no_grad():  # torch's flex attention has no backward on CPU (tests/model/test_cuda.py trains with it)
        ours = tiny_model(ids, attention_mask=mask).logits
    theirs = twin(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max().item() <= 1e-5


@pytest.mark.skipif(not is_flash_attn_2_available(), reason="flash-attn is not installed (needs a CUDA GPU)")
def test_flash_attention_2_matches_sdpa():
    torch.manual_seed(0)
    model = PgGPT2ForCausalLM(tiny_config()).eval().cuda().to(torch.bfloat16)
    ids = random_ids().cuda()
    reference = model(ids).logits.float()
    model.config._attn_implementation = "flash_attention_2"
    assert (model(ids).logits.float() - reference).abs().max().item() < 5e-2


def test_lora_trains_merges_and_reloads(tmp_path, tiny_model):
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(
        tiny_model.train(),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], lora_dropout=0.0),
    )
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(".mlp.c_fc." in n for n in trainable) and any(".attn.c_attn." in n for n in trainable)
    ids = random_ids(batch=2, length=16)
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = lora(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    lora.eval()
    adapted = lora(input_ids=ids).logits
    merged = lora.merge_and_unload()
    assert type(merged) is PgGPT2ForCausalLM
    assert (merged(ids).logits - adapted).abs().max().item() <= 1e-5
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert (reloaded(ids).logits - adapted).abs().max().item() <= 1e-5
