"""Packed documents (position ids that restart at 0), token_type_ids, and the checks of malformed inputs.

The oracle is transformers' GPT2LMHeadModel with the same weights (`gpt2_twin`), and each document alone.
"""

from __future__ import annotations

import pytest
import torch
from helpers import gpt2_twin, tiny_config
from transformers import DataCollatorForLanguageModeling, DataCollatorWithFlattening, PreTrainedTokenizerFast

from modeling_pg_gpt2 import PgGPT2ForCausalLM

IMPLEMENTATIONS = ["eager", "sdpa", pytest.param("flex_attention", marks=pytest.mark.slow)]  # flex compiles


def _documents(lengths: list[int], seed: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 200, (n,), generator=generator) for n in lengths]  # 210 pads


def _packed(documents: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One row holding the documents back to back, with positions that restart at 0 for each."""
    ids = torch.cat(documents)[None]
    positions = torch.cat([torch.arange(len(d)) for d in documents])[None]
    return ids, positions


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_packed_documents_do_not_attend_to_each_other(tiny_model, implementation):
    documents = _documents([5, 4, 7])
    ids, positions = _packed(documents)
    tiny_model.set_attn_implementation(implementation)
    with torch.no_grad():
        packed = tiny_model(ids, position_ids=positions, use_cache=False).logits[0]
        cached = tiny_model(ids, position_ids=positions).logits[0]  # an empty cache changes nothing
        start = 0
        for document in documents:
            alone = tiny_model(document[None]).logits[0]
            assert (packed[start : start + len(document)] - alone).abs().max().item() <= 1e-5
            assert (cached[start : start + len(document)] - alone).abs().max().item() <= 1e-5
            start += len(document)


def test_packed_documents_equal_gpt2_and_contiguous_positions_stay_plain_causal(tiny_model):
    ids, positions = _packed(_documents([6, 3, 8]))
    twin = gpt2_twin(tiny_model, "sdpa")
    tiny_model.set_attn_implementation("sdpa")
    with torch.no_grad():
        ours = tiny_model(ids, position_ids=positions, use_cache=False).logits
        theirs = twin(ids, position_ids=positions, use_cache=False).logits
        assert (ours - theirs).abs().max().item() <= 1e-5
        # Positions that only count up are one document: the same logits as without position ids.
        counting = torch.arange(ids.shape[1])[None]
        assert torch.equal(tiny_model(ids, position_ids=counting).logits, tiny_model(ids).logits)


def test_a_packed_row_longer_than_the_context_is_accepted_when_its_positions_fit(tiny_model):
    documents = _documents([40, 40])  # 80 tokens in a row, n_positions=64
    ids, positions = _packed(documents)
    with torch.no_grad():
        packed = tiny_model(ids, position_ids=positions, use_cache=False).logits[0]
        alone = tiny_model(documents[1][None]).logits[0]
    assert (packed[40:] - alone).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match=r"Position id 79 is outside the model's context \[0, n_positions=64\)"):
        tiny_model(ids, position_ids=torch.arange(80)[None])


def test_flattened_batch_loss_equals_the_padded_batch_as_in_gpt2():
    """DataCollatorWithFlattening (padding-free training) against the padded batch, in training mode (fused loss)."""
    torch.manual_seed(0)
    model = PgGPT2ForCausalLM(tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).train()
    twin = gpt2_twin(model, "sdpa")
    features = [{"input_ids": d.tolist()} for d in _documents([9, 5, 12])]
    flat = DataCollatorWithFlattening()(features, return_tensors="pt")
    assert set(flat) >= {"input_ids", "labels", "position_ids"} and "attention_mask" not in flat
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_word_level(), pad_token="[PAD]")
    padded = DataCollatorForLanguageModeling(tokenizer, mlm=False)(features)
    flat_loss = model(**flat).loss
    padded_loss = model(**padded).loss
    assert model(**flat).logits is None  # the fused loss ran
    assert abs(flat_loss.item() - padded_loss.item()) <= 1e-5
    # GPT-2 looks for packed documents only without a cache, and builds one even in training unless told not to.
    assert abs(flat_loss.item() - twin(**flat, use_cache=False).loss.item()) <= 1e-5
    assert abs(padded_loss.item() - twin(**padded).loss.item()) <= 1e-5


def _word_level():
    """A tokenizer object whose pad id (210) is inside the tiny vocabulary; only its padding is used."""
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({f"t{i}": i for i in range(210)} | {"[PAD]": 210}, unk_token="[PAD]"))


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_token_type_ids_are_embedded_through_wte_as_in_gpt2(tiny_model, implementation):
    ids = torch.randint(0, 211, (2, 9), generator=torch.Generator().manual_seed(4))
    token_types = torch.tensor([[0] * 4 + [1] * 5, [1] * 9])
    twin = gpt2_twin(tiny_model, implementation)
    tiny_model.set_attn_implementation(implementation)
    with torch.no_grad():
        ours = tiny_model(ids, token_type_ids=token_types, labels=ids)
        theirs = twin(ids, token_type_ids=token_types, labels=ids)
        plain = tiny_model(ids).logits
    assert (ours.logits - theirs.logits).abs().max().item() <= 1e-5
    assert abs(ours.loss.item() - theirs.loss.item()) <= 1e-5
    assert (ours.logits - plain).abs().max().item() > 1e-3  # they are not ignored


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (dict(input_ids=torch.arange(5)), r"2-D \(batch, tokens\) tensor of integer token ids .* shape \(5,\)"),
        (dict(input_ids=torch.ones(1, 5)), r"integer token ids \(torch.long\), got shape \(1, 5\) and torch.float32"),
        (dict(input_ids=torch.ones(1, 0, dtype=torch.long)), r"input is empty \(shape \(1, 0\)\)"),
        (
            dict(inputs_embeds=torch.ones(1, 5, 7)),
            r"inputs_embeds has shape \(1, 5, 7\) but must be \(batch, tokens, 32\)",
        ),
        (
            dict(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.zeros(2, 1, 5, 4)),
            r"4-D attention_mask has shape \(2, 1, 5, 4\) but the input needs \(2, 1, 5, 5\)",
        ),
        (
            dict(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.zeros(3, 1, 5, 5)),
            r"4-D attention_mask has shape \(3, 1, 5, 5\)",
        ),
        (
            dict(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 1, 5)),
            r"attention_mask has shape \(2, 1, 5\); pass \(2, 5\)",
        ),
        (
            dict(input_ids=torch.ones(2, 5, dtype=torch.long), token_type_ids=torch.ones(2, 4, dtype=torch.long)),
            r"token_type_ids has shape \(2, 4\) but the input needs \(2, 5\)",
        ),
        (
            dict(input_ids=torch.ones(1, 5, dtype=torch.long), token_type_ids=torch.full((1, 5), 300)),
            r"Token id 300 is outside the vocabulary",
        ),
    ],
)
def test_malformed_inputs_are_one_clear_error(tiny_model, inputs, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(**inputs)


def test_a_4d_mask_of_the_right_shape_is_used_as_given(tiny_model):
    ids = torch.randint(0, 211, (2, 6), generator=torch.Generator().manual_seed(5))
    causal = torch.ones(6, 6, dtype=torch.bool).tril()[None, None].expand(2, 1, 6, 6)
    with torch.no_grad():
        assert (tiny_model(ids, attention_mask=causal).logits - tiny_model(ids).logits).abs().max().item() <= 1e-5
