"""The forward pass against transformers' own GPT2LMHeadModel with the same weights (the oracle)."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    IMPLEMENTATIONS,
    gpt2_twin,
    left_padded,
    loss_and_grads,
    random_ids,
    tiny_config,
    worst_relative,
)
from transformers import (
    StaticCache,
)

from modeling_pg_gpt2 import PgGPT2ForCausalLM


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_logits_and_loss_equal_gpt2(tiny_model, implementation):
    tiny_model.config._attn_implementation = implementation
    twin = gpt2_twin(tiny_model, implementation)
    ids = random_ids()
    labels = ids.clone()
    labels[0, :4] = -100
    ours, theirs = tiny_model(ids, labels=labels), twin(ids, labels=labels)
    assert (ours.logits - theirs.logits).abs().max().item() <= 1e-5
    assert ours.loss.item() == pytest.approx(theirs.loss.item(), abs=1e-6)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_left_padded_logits_equal_gpt2(tiny_model, implementation):
    tiny_model.config._attn_implementation = implementation
    twin = gpt2_twin(tiny_model, implementation)
    ids, mask = left_padded(random_ids(), [5, 0, 2])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ours = tiny_model(ids, attention_mask=mask).logits  # positions derived from the mask
    theirs = twin(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max().item() <= 1e-5


def test_left_padded_row_equals_the_prompt_alone(tiny_model):
    ids, mask = left_padded(random_ids(), [6, 0, 3])
    batch = tiny_model(ids, attention_mask=mask).logits
    for row, pad in enumerate([6, 0, 3]):
        alone = tiny_model(ids[row : row + 1, pad:]).logits[0]
        assert (batch[row, pad:] - alone).abs().max().item() <= 1e-5


def test_hidden_states_and_attentions_equal_gpt2(tiny_model):
    tiny_model.config._attn_implementation = "sdpa"  # asking for attentions falls back to eager math
    twin = gpt2_twin(tiny_model, "eager")
    ids = random_ids(batch=2, length=9)
    ours = tiny_model(ids, output_hidden_states=True, output_attentions=True)
    theirs = twin(ids, output_hidden_states=True, output_attentions=True)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == tiny_model.config.n_layer + 1
    for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        assert (a - b).abs().max().item() <= 1e-5
    assert len(ours.attentions) == tiny_model.config.n_layer
    for a, b in zip(ours.attentions, theirs.attentions, strict=True):
        assert a.shape == (2, 4, 9, 9) and (a - b).abs().max().item() <= 1e-6


def test_inputs_embeds_and_logits_to_keep(tiny_model):
    ids = random_ids(batch=2, length=12)
    full = tiny_model(ids).logits
    from_embeds = tiny_model(inputs_embeds=tiny_model.transformer.wte(ids)).logits
    assert torch.allclose(full, from_embeds, atol=1e-6)
    last = tiny_model(ids, logits_to_keep=1).logits
    assert last.shape == (2, 1, tiny_model.config.vocab_size)
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-6)
    chosen = tiny_model(ids, logits_to_keep=torch.tensor([0, 5])).logits
    assert torch.allclose(chosen, full[:, [0, 5]], atol=1e-6)


def test_return_dict_false_gives_a_tuple(tiny_model):
    ids = random_ids(batch=1, length=5)
    loss, logits = tiny_model(ids, labels=ids, use_cache=False, return_dict=False)[:2]
    assert torch.allclose(logits, tiny_model(ids).logits) and loss.ndim == 0


def test_kv_cache_matches_full_forward(tiny_model):
    ids = random_ids(batch=2, length=12)
    full = tiny_model(ids).logits
    first = tiny_model(ids[:, :8], use_cache=True)
    cache = first.cache if hasattr(first, "cache") else first.past_key_values
    assert cache.get_seq_length() == 8
    rest = tiny_model(ids[:, 8:], cache=cache, use_cache=True).logits
    assert (torch.cat([first.logits, rest], dim=1) - full).abs().max().item() <= 1e-5


def test_no_cache_is_built_in_training(tiny_model):
    tiny_model.train()
    out = tiny_model(random_ids(batch=1, length=6), use_cache=True)
    assert getattr(out, "cache", None) is None and getattr(out, "past_key_values", None) is None


@pytest.mark.slow
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_compiled_training_step_is_one_graph_and_two_with_the_logits(implementation):
    """Compiled, a training step is one graph, the fused loss traced in as a single chunk (a loop over
    chunks would pin B * T), so new batch shapes stop compiling once the graph is dynamic. Asked for
    logits too, it is two graphs, the model and its loss, split on purpose (one graph makes AOTAutograd feed
    the backward a zero gradient for the logits whenever only the loss is used), and a loss that also uses
    the logits still gets their gradient. aot_eager runs AOTAutograd without compiling kernels
    (tests/model/test_cuda.py does that)."""
    config = tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = PgGPT2ForCausalLM._from_config(config, attn_implementation=implementation).train()
    ids = random_ids()
    for skip_logits, graphs in [(None, 1), (False, 2)]:
        explained = torch._dynamo.explain(model)(ids, labels=ids, skip_logits=skip_logits)
        assert explained.graph_count == graphs, [reason.reason for reason in explained.break_reasons]

    fused, fused_grads = loss_and_grads(model, ids, ids)
    torch._dynamo.reset()
    compiled_model = torch.compile(model, backend="aot_eager")
    compiled, compiled_grads = loss_and_grads(compiled_model, ids, ids)
    assert compiled.loss.item() == pytest.approx(fused.loss.item(), abs=1e-6)
    assert worst_relative(compiled_grads, fused_grads) <= 1e-6
    graphs = []
    for length in (9, 11, 13, 15):
        loss_and_grads(compiled_model, ids[:, :length], ids[:, :length])
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[2] == graphs[3], graphs  # once dynamic, new lengths compile nothing more

    def logits_loss_and_grads(module):
        model.zero_grad(set_to_none=True)
        out = module(ids, labels=ids, skip_logits=False)
        (out.loss + 0.1 * out.logits.square().mean()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return out.loss.item(), grads

    loss, grads = logits_loss_and_grads(model)
    compiled_loss, compiled_grads = logits_loss_and_grads(torch.compile(model, backend="aot_eager"))
    assert compiled_loss == pytest.approx(loss, abs=1e-6)
    for name, grad in grads.items():
        assert (compiled_grads[name] - grad).abs().max().item() <= 1e-6 * max(1.0, grad.abs().max().item()), name


@pytest.mark.slow
def test_static_cache_decoding_step_compiles_to_one_graph(tiny_model):
    """generate() compiles the decoding step when the cache is static; a graph break there costs every token."""
    twin = gpt2_twin(tiny_model)
    prompt, mask = random_ids(batch=2, length=8), torch.ones(2, 9, dtype=torch.long)
    logits = []
    for model in (tiny_model, twin):
        cache = StaticCache(config=model.config, max_cache_len=32)
        step = torch.compile(model, fullgraph=True, backend="eager") if model is tiny_model else model
        with torch.no_grad():
            model(prompt, attention_mask=mask[:, :8], past_key_values=cache)
            logits.append(step(prompt[:, -1:], attention_mask=mask, past_key_values=cache).logits)
    assert (logits[0] - logits[1]).abs().max().item() <= 1e-5
