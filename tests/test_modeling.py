"""pg_gpt2 against transformers' own GPT2LMHeadModel with the same weights (the oracle)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import _CONV1D_WEIGHTS, gpt2_twin, tiny_config
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    StaticCache,
    Trainer,
    TrainingArguments,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
from transformers.utils import ModelOutput, is_flash_attn_2_available

from modeling_pg_gpt2 import PRESETS, PgGPT2Config, PgGPT2ForCausalLM, PgGPT2Model, batched_matvec
from modeling_pg_gpt2 import modeling_pg_gpt2 as pg_modeling
from modeling_pg_gpt2.batched_matvec import BatchedMatvecLinear

IMPLEMENTATIONS = ["eager", "sdpa"]


def _ids(batch: int = 3, length: int = 17, vocab: int = 211, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _left_padded(ids: torch.Tensor, pads: list[int], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = ids.clone(), torch.ones_like(ids)
    for row, n in enumerate(pads):
        ids[row, :n], mask[row, :n] = pad_id, 0
    return ids, mask


def _loss_and_grads(model, ids, labels, **kwargs) -> tuple[ModelOutput, dict[str, torch.Tensor]]:
    """One forward and backward; the output and every parameter's gradient, GPT-2's Conv1D ones transposed."""
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=labels, **kwargs)
    out.loss.backward()
    model = getattr(model, "_orig_mod", model)  # a compiled model's parameters are the original's
    conv1d = isinstance(model, GPT2LMHeadModel)
    grads = {n: p.grad.t() if conv1d and n.endswith(_CONV1D_WEIGHTS) else p.grad for n, p in model.named_parameters()}
    return out, grads


def _worst_relative(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    return max(((ours[n] - theirs[n]).abs().max() / theirs[n].abs().max()).item() for n in theirs)


# --- configuration ------------------------------------------------------------------------------------------


def test_config_defaults_are_gpt2_124m_and_aliases_work():
    config, reference = PgGPT2Config(), GPT2Config()
    for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function"):
        assert getattr(config, name) == getattr(reference, name), name
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range"):
        assert getattr(config, name) == getattr(reference, name), name
    assert (config.bos_token_id, config.eos_token_id) == (reference.bos_token_id, reference.eos_token_id)
    assert config.tie_word_embeddings and config.use_cache
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (768, 12, 12)
    assert config.max_position_embeddings == 1024


def test_config_loads_a_gpt2_config_dict_and_round_trips(tmp_path):
    gpt2 = GPT2Config(n_layer=3, n_embd=96, n_head=6, vocab_size=1000, n_positions=128)
    config = PgGPT2Config.from_dict(gpt2.to_dict())
    assert (config.n_layer, config.n_embd, config.n_head, config.vocab_size) == (3, 96, 6, 1000)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, PgGPT2Config) and loaded.to_diff_dict() == config.to_diff_dict()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_match_gpt2_parameter_counts(preset):
    """The four OpenAI sizes have the parameter counts of transformers' GPT-2 with the same shape."""
    config = PgGPT2Config.from_preset(preset)
    with torch.device("meta"):
        ours = PgGPT2ForCausalLM(config)
        reference = GPT2LMHeadModel(GPT2Config(**{k: getattr(config, k) for k in PRESETS[preset]}))
    assert ours.num_parameters() == reference.num_parameters()
    if preset == "gpt2":
        assert ours.num_parameters() == 124_439_808  # the published 124M


def test_preset_overrides_and_unknown_preset():
    config = PgGPT2Config.from_preset("gpt2-medium", vocab_size=8192)
    assert (config.n_layer, config.n_embd, config.vocab_size, config.eos_token_id) == (24, 1024, 8192, 8191)
    with pytest.raises(ValueError, match="Unknown preset 'gpt3'.*gpt2-medium"):
        PgGPT2Config.from_preset("gpt3")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_embd": 100, "n_head": 12}, r"n_embd \(100\) must be divisible by n_head \(12\).*e\.g\. 10"),
        ({"n_layer": 0}, "n_layer must be a positive integer, got 0"),
        ({"vocab_size": -5}, "vocab_size must be a positive integer"),
        ({"n_positions": 2.5}, "n_positions must be a positive integer"),
        ({"resid_pdrop": 1.0}, r"resid_pdrop .* must be in \[0, 1\), got 1.0"),
        ({"attn_pdrop": -0.1}, r"attn_pdrop .* must be in \[0, 1\)"),
        ({"activation_function": "swish2"}, "unknown activation_function 'swish2'; use one of gelu_new"),
    ],
)
def test_invalid_config_is_rejected_with_the_field_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PgGPT2Config(**kwargs)


def test_registered_with_the_auto_classes():
    config = tiny_config()
    assert isinstance(AutoConfig.for_model("pg_gpt2"), PgGPT2Config)
    assert type(AutoModelForCausalLM.from_config(config)) is PgGPT2ForCausalLM
    assert type(AutoModel.from_config(config)) is PgGPT2Model


# --- weights ------------------------------------------------------------------------------------------------


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


# --- forward parity -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_logits_and_loss_equal_gpt2(tiny_model, implementation):
    tiny_model.config._attn_implementation = implementation
    twin = gpt2_twin(tiny_model, implementation)
    ids = _ids()
    labels = ids.clone()
    labels[0, :4] = -100
    ours, theirs = tiny_model(ids, labels=labels), twin(ids, labels=labels)
    assert (ours.logits - theirs.logits).abs().max().item() <= 1e-5
    assert ours.loss.item() == pytest.approx(theirs.loss.item(), abs=1e-6)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_left_padded_logits_equal_gpt2(tiny_model, implementation):
    tiny_model.config._attn_implementation = implementation
    twin = gpt2_twin(tiny_model, implementation)
    ids, mask = _left_padded(_ids(), [5, 0, 2])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ours = tiny_model(ids, attention_mask=mask).logits  # positions derived from the mask
    theirs = twin(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max().item() <= 1e-5


def test_left_padded_row_equals_the_prompt_alone(tiny_model):
    ids, mask = _left_padded(_ids(), [6, 0, 3])
    batch = tiny_model(ids, attention_mask=mask).logits
    for row, pad in enumerate([6, 0, 3]):
        alone = tiny_model(ids[row : row + 1, pad:]).logits[0]
        assert (batch[row, pad:] - alone).abs().max().item() <= 1e-5


def test_hidden_states_and_attentions_equal_gpt2(tiny_model):
    tiny_model.config._attn_implementation = "sdpa"  # asking for attentions falls back to eager math
    twin = gpt2_twin(tiny_model, "eager")
    ids = _ids(batch=2, length=9)
    ours = tiny_model(ids, output_hidden_states=True, output_attentions=True)
    theirs = twin(ids, output_hidden_states=True, output_attentions=True)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == tiny_model.config.n_layer + 1
    for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        assert (a - b).abs().max().item() <= 1e-5
    assert len(ours.attentions) == tiny_model.config.n_layer
    for a, b in zip(ours.attentions, theirs.attentions, strict=True):
        assert a.shape == (2, 4, 9, 9) and (a - b).abs().max().item() <= 1e-6


def test_inputs_embeds_and_logits_to_keep(tiny_model):
    ids = _ids(batch=2, length=12)
    full = tiny_model(ids).logits
    from_embeds = tiny_model(inputs_embeds=tiny_model.transformer.wte(ids)).logits
    assert torch.allclose(full, from_embeds, atol=1e-6)
    last = tiny_model(ids, logits_to_keep=1).logits
    assert last.shape == (2, 1, tiny_model.config.vocab_size)
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-6)
    chosen = tiny_model(ids, logits_to_keep=torch.tensor([0, 5])).logits
    assert torch.allclose(chosen, full[:, [0, 5]], atol=1e-6)


def test_return_dict_false_gives_a_tuple(tiny_model):
    ids = _ids(batch=1, length=5)
    loss, logits = tiny_model(ids, labels=ids, use_cache=False, return_dict=False)[:2]
    assert torch.allclose(logits, tiny_model(ids).logits) and loss.ndim == 0


def test_kv_cache_matches_full_forward(tiny_model):
    ids = _ids(batch=2, length=12)
    full = tiny_model(ids).logits
    first = tiny_model(ids[:, :8], use_cache=True)
    cache = first.cache if hasattr(first, "cache") else first.past_key_values
    assert cache.get_seq_length() == 8
    rest = tiny_model(ids[:, 8:], cache=cache, use_cache=True).logits
    assert (torch.cat([first.logits, rest], dim=1) - full).abs().max().item() <= 1e-5


def test_no_cache_is_built_in_training(tiny_model):
    tiny_model.train()
    out = tiny_model(_ids(batch=1, length=6), use_cache=True)
    assert getattr(out, "cache", None) is None and getattr(out, "past_key_values", None) is None


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_compiled_training_step_is_one_graph_and_two_with_the_logits(implementation):
    """Compiled, a training step is one graph, the fused loss traced in as a single chunk (a loop over
    chunks would pin B * T), so new batch shapes stop compiling once the graph is dynamic. Asked for
    logits too, it is two graphs, the model and its loss, split on purpose (one graph makes AOTAutograd feed
    the backward a zero gradient for the logits whenever only the loss is used), and a loss that also uses
    the logits still gets their gradient. aot_eager runs AOTAutograd without compiling kernels
    (tests/test_cuda.py does that)."""
    config = tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = PgGPT2ForCausalLM._from_config(config, attn_implementation=implementation).train()
    ids = _ids()
    for skip_logits, graphs in [(None, 1), (False, 2)]:
        explained = torch._dynamo.explain(model)(ids, labels=ids, skip_logits=skip_logits)
        assert explained.graph_count == graphs, [reason.reason for reason in explained.break_reasons]

    fused, fused_grads = _loss_and_grads(model, ids, ids)
    torch._dynamo.reset()
    compiled_model = torch.compile(model, backend="aot_eager")
    compiled, compiled_grads = _loss_and_grads(compiled_model, ids, ids)
    assert compiled.loss.item() == pytest.approx(fused.loss.item(), abs=1e-6)
    assert _worst_relative(compiled_grads, fused_grads) <= 1e-6
    graphs = []
    for length in (9, 11, 13, 15):
        _loss_and_grads(compiled_model, ids[:, :length], ids[:, :length])
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[2] == graphs[3], graphs  # once dynamic, new lengths compile nothing more

    def loss_and_grads(module):
        model.zero_grad(set_to_none=True)
        out = module(ids, labels=ids, skip_logits=False)
        (out.loss + 0.1 * out.logits.square().mean()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return out.loss.item(), grads

    loss, grads = loss_and_grads(model)
    compiled_loss, compiled_grads = loss_and_grads(torch.compile(model, backend="aot_eager"))
    assert compiled_loss == pytest.approx(loss, abs=1e-6)
    for name, grad in grads.items():
        assert (compiled_grads[name] - grad).abs().max().item() <= 1e-6 * max(1.0, grad.abs().max().item()), name


def test_static_cache_decoding_step_compiles_to_one_graph(tiny_model):
    """generate() compiles the decoding step when the cache is static; a graph break there costs every token."""
    twin = gpt2_twin(tiny_model)
    prompt, mask = _ids(batch=2, length=8), torch.ones(2, 9, dtype=torch.long)
    logits = []
    for model in (tiny_model, twin):
        cache = StaticCache(config=model.config, max_cache_len=32)
        step = torch.compile(model, fullgraph=True, backend="eager") if model is tiny_model else model
        with torch.no_grad():
            model(prompt, attention_mask=mask[:, :8], past_key_values=cache)
            logits.append(step(prompt[:, -1:], attention_mask=mask, past_key_values=cache).logits)
    assert (logits[0] - logits[1]).abs().max().item() <= 1e-5


# --- generation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"do_sample": False},
        {"do_sample": False, "num_beams": 3, "num_return_sequences": 2},
        {"do_sample": True, "top_k": 20, "top_p": 0.9, "temperature": 0.8},
    ],
    ids=["greedy", "beam", "sampling"],
)
def test_generate_equals_gpt2(tiny_model, settings):
    twin = gpt2_twin(tiny_model, "sdpa")
    prompt = _ids(batch=2, length=6)
    kwargs = dict(max_new_tokens=12, pad_token_id=0, eos_token_id=None, **settings)
    torch.manual_seed(123)
    ours = tiny_model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    torch.manual_seed(123)
    theirs = twin.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    assert ours.tolist() == theirs.tolist()


def test_cached_static_and_uncached_generation_agree(tiny_model):
    prompt = _ids(batch=1, length=7)
    kwargs = dict(max_new_tokens=15, do_sample=False, pad_token_id=0, eos_token_id=None)
    dynamic = tiny_model.generate(prompt, **kwargs)
    assert dynamic.tolist() == tiny_model.generate(prompt, use_cache=False, **kwargs).tolist()
    assert dynamic.tolist() == tiny_model.generate(prompt, cache_implementation="static", **kwargs).tolist()


def test_left_padded_batch_generates_like_each_prompt_alone(tiny_model):
    prompts = [_ids(batch=1, length=n, seed=n)[0] for n in (4, 9, 6)]
    width = max(len(p) for p in prompts)
    ids, mask = _left_padded(
        torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts]),
        [width - len(p) for p in prompts],
    )
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    batch = tiny_model.generate(ids, attention_mask=mask, **kwargs)
    for row, prompt in enumerate(prompts):
        alone = tiny_model.generate(prompt[None], **kwargs)[0, len(prompt) :]
        assert batch[row, width:].tolist() == alone.tolist()


# --- training -----------------------------------------------------------------------------------------------


def test_activation_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    model = PgGPT2ForCausalLM(tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).train()
    ids = _ids(batch=2, length=16)

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
    enable()
    assert model.transformer.h[0].gradient_checkpointing
    checkpointed = grads()
    for name, grad in plain.items():
        assert torch.equal(grad, checkpointed[name]), name


@pytest.mark.parametrize("num_items_in_batch", [None, 1000])
def test_training_loss_and_gradients_equal_gpt2_without_the_logits(num_items_in_batch):
    """In training the loss comes from the hidden states chunk by chunk (1280 tokens: two chunks, one
    partial), with ignored labels and the Trainer's token count: the same loss and gradients as GPT-2's
    logits + cross-entropy, and no (B, T, V) logits returned."""
    torch.manual_seed(0)
    model = PgGPT2ForCausalLM(tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).train()
    twin = gpt2_twin(model)
    ids = _ids(batch=20, length=64)
    labels = ids.clone()
    labels[0, :40] = -100
    labels[19] = -100  # a whole row of the second, partial chunk ignored
    kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": torch.tensor(num_items_in_batch)}
    ours, our_grads = _loss_and_grads(model, ids, labels, **kwargs)
    theirs, their_grads = _loss_and_grads(twin, ids, labels, **kwargs)
    assert ours.logits is None and theirs.logits is not None
    assert ours.loss.item() == pytest.approx(theirs.loss.item(), rel=1e-6)
    assert _worst_relative(our_grads, their_grads) <= 1e-5
    with_logits, grads_with_logits = _loss_and_grads(model, ids, labels, skip_logits=False, **kwargs)
    assert with_logits.logits.shape == (20, 64, model.config.vocab_size)
    assert _worst_relative(grads_with_logits, their_grads) <= 1e-5


def test_fused_loss_under_bf16_autocast_is_as_close_to_gpt2_as_the_logits_path():
    """Under autocast the head's products run in bf16 and the softmax in fp32, as GPT2LMHeadModel's do."""
    torch.manual_seed(0)
    model = PgGPT2ForCausalLM(tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).train()
    twin = gpt2_twin(model)
    ids = _ids(batch=20, length=64)
    reference, reference_grads = _loss_and_grads(twin, ids, ids)  # fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, fused_grads = _loss_and_grads(model, ids, ids)
        logits_path, logits_grads = _loss_and_grads(model, ids, ids, skip_logits=False)
        theirs, their_grads = _loss_and_grads(twin, ids, ids)
    assert fused.logits is None and logits_path.logits.dtype == torch.bfloat16
    assert fused.loss.item() == pytest.approx(theirs.loss.item(), rel=1e-3)
    assert _worst_relative(fused_grads, their_grads) <= 2e-2
    # bf16 moves the fused path from fp32 no further than it moves transformers' own head
    assert _worst_relative(fused_grads, reference_grads) <= 2 * _worst_relative(logits_grads, reference_grads)
    assert _worst_relative(fused_grads, reference_grads) > 0  # the products did run in bf16


def test_skip_logits_without_gradients_and_without_labels(tiny_model):
    ids = _ids(batch=2, length=16)
    with torch.no_grad():
        fused = tiny_model(ids, labels=ids, skip_logits=True)
        plain = tiny_model(ids, labels=ids)  # eval mode: logits and the loss on them
    assert fused.logits is None and plain.logits is not None
    assert fused.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)
    with pytest.raises(ValueError, match="needs labels"):
        tiny_model(ids, skip_logits=True)


def _training_model(**overrides) -> PgGPT2ForCausalLM:
    torch.manual_seed(0)
    config = tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **overrides)
    return PgGPT2ForCausalLM._from_config(config, attn_implementation="eager").train()


def test_fused_loss_edge_cases_equal_the_logits_path():
    """Whatever the loss is given, the fused path computes what the logits path does, gradients included."""
    model = _training_model()
    ids = _ids(batch=4, length=32)
    labels = ids.clone()
    labels[1, 5:] = -100
    cases = {
        "an int num_items_in_batch": {"labels": labels, "num_items_in_batch": 77},
        "shift_labels given": {"labels": labels, "shift_labels": F.pad(labels[:, 1:], (0, 1), value=-100)},
        "another ignore_index": {"labels": labels.masked_fill(labels == -100, 7), "ignore_index": 7},
    }
    for case, kwargs in cases.items():
        fused, fused_grads = _loss_and_grads(model, ids, **kwargs)
        plain, plain_grads = _loss_and_grads(model, ids, skip_logits=False, **kwargs)
        assert fused.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6), case
        assert _worst_relative(fused_grads, plain_grads) <= 1e-5, case

    # a batch without a single label token: NaN loss (0 / 0) as in transformers, but zero gradients, so an
    # optimizer step leaves the weights as they are instead of turning them into NaN
    fused, fused_grads = _loss_and_grads(model, ids, torch.full_like(ids, -100))
    assert math.isnan(fused.loss.item()) and math.isnan(model(ids, labels=torch.full_like(ids, -100)).loss.item())
    assert all(torch.equal(g, torch.zeros_like(g)) for g in fused_grads.values())

    # a scaled loss (GradScaler, DDP) scales the stored gradients; a frozen embedding gets none
    _, once = _loss_and_grads(model, ids, labels)
    model.zero_grad(set_to_none=True)
    (3 * model(ids, labels=labels).loss).backward()
    assert (
        _worst_relative({n: p.grad for n, p in model.named_parameters()}, {n: 3 * g for n, g in once.items()}) <= 1e-6
    )
    model.transformer.wte.weight.requires_grad_(False)
    _, frozen = _loss_and_grads(model, ids, labels, skip_logits=True)
    assert frozen["transformer.wte.weight"] is None
    assert (
        _worst_relative(
            {n: g for n, g in frozen.items() if g is not None}, {n: once[n] for n in frozen if "wte" not in n}
        )
        <= 1e-5
    )


def test_fused_loss_in_bf16_sums_the_weight_gradient_over_chunks_in_fp32():
    """bf16 hidden states and head (a bf16 model, no autocast), 16 chunks: the head's gradient is as close to
    fp32's as the logits path's (summed in bf16 across the chunks, it was 1.7x as far)."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(16, 1024, 32, generator=generator)
    weight = torch.randn(211, 32, generator=generator) * 0.3
    labels = torch.randint(0, 211, (16, 1024), generator=generator)

    def head_grad(h: torch.Tensor, w: torch.Tensor, fused: bool) -> torch.Tensor:
        h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
        if fused:
            loss = pg_modeling.fused_head_loss(h, w, labels)
        else:
            logits = (h @ w.t()).float()[:, :-1]
            loss = F.cross_entropy(logits.reshape(-1, 211), labels[:, 1:].reshape(-1))
        loss.backward()
        return w.grad.float()

    reference = head_grad(hidden, weight, fused=False)
    assert (head_grad(hidden, weight, fused=True) - reference).norm() <= 1e-6 * reference.norm()

    def error(fused: bool) -> float:
        return ((head_grad(hidden.bfloat16(), weight.bfloat16(), fused) - reference).norm() / reference.norm()).item()

    assert 0 < error(fused=True) <= 1.25 * error(fused=False)


def test_fused_loss_refuses_what_it_cannot_do():
    model = _training_model()
    ids = _ids(batch=2, length=16)
    with pytest.raises(ValueError, match="Label -1 is outside the vocabulary"):
        model(ids, labels=torch.full_like(ids, -1))
    loss = model(ids, labels=ids).loss
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(loss, model.transformer.ln_f.weight, create_graph=True)


def test_an_adapter_on_the_head_keeps_the_logits_path():
    """PEFT replaces lm_head; the fused loss would multiply by the bare weight and leave the adapter out."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_training_model(), peft.LoraConfig(r=4, target_modules=["lm_head", "c_attn"]))
    ids = _ids(batch=2, length=16)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert out.logits is not None
    assert all(p.grad is not None for n, p in model.named_parameters() if "lm_head.lora_" in n)
    with pytest.raises(ValueError, match="bypassing the adapter"):
        model(input_ids=ids, labels=ids, skip_logits=True)


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def test_trainer_gradient_accumulation_equals_one_big_batch(tmp_path):
    """Uneven numbers of label tokens per micro-batch: only a token-weighted loss (num_items_in_batch) matches."""
    ids = _ids(batch=4, length=16)
    labels = ids.clone()
    labels[0, :12] = -100  # micro-batch 1 has far fewer label tokens than micro-batch 2
    labels[1, :10] = -100

    def train(batch_size: int, accumulation: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = PgGPT2ForCausalLM(tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        args = TrainingArguments(
            output_dir=str(tmp_path / f"run{batch_size}"),
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            learning_rate=1e-2,
            optim="sgd",
            lr_scheduler_type="constant",
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            use_cpu=True,
            dataloader_drop_last=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=_Blocks(ids, labels))
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
        trainer.train()
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    whole, accumulated = train(4, 1), train(2, 2)
    worst = max((whole[n] - accumulated[n]).abs().max().item() for n in whole)
    assert worst <= 1e-6


def test_trainer_evaluation_gets_the_logits_while_training_steps_skip_them(tmp_path):
    """Training steps return logits=None (the fused loss); evaluation runs in eval mode and gets them:
    `prediction_loss_only=False`, `compute_metrics` and `predict` work as with GPT2LMHeadModel."""
    ids = _ids(batch=4, length=16)
    model = _training_model()
    assert model(ids, labels=ids).logits is None  # training mode with labels: the fused loss

    def next_token_accuracy(prediction) -> dict[str, float]:
        logits, labels = prediction.predictions, prediction.label_ids
        return {"accuracy": float((logits[:, :-1].argmax(-1) == labels[:, 1:]).mean())}

    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        max_steps=2,
        prediction_loss_only=False,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Blocks(ids, ids),
        eval_dataset=_Blocks(ids, ids),
        compute_metrics=next_token_accuracy,
    )
    trainer.train()
    metrics = trainer.evaluate()
    predictions = trainer.predict(_Blocks(ids, ids)).predictions
    with torch.no_grad():
        expected = model.eval()(ids, labels=ids)
    assert predictions.shape == (4, 16, 211)
    assert abs(metrics["eval_loss"] - expected.loss.item()) <= 1e-5
    assert (torch.from_numpy(predictions) - expected.logits).abs().max().item() <= 1e-5
    accuracy = (expected.logits[:, :-1].argmax(-1) == ids[:, 1:]).float().mean().item()
    assert metrics["eval_accuracy"] == pytest.approx(accuracy)


# --- bad input ----------------------------------------------------------------------------------------------


def test_too_long_input_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="65 tokens .* longer than the model's context n_positions=64"):
        tiny_model(_ids(batch=1, length=65))


def test_generation_past_the_context_is_refused_before_it_starts(tiny_model):
    with pytest.raises(ValueError, match=r"reach 70, more than .* n_positions=64.*at most 54"):
        tiny_model.generate(_ids(batch=1, length=10), max_new_tokens=60, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("bad_id", [211, 5000, -1])
def test_token_ids_outside_the_vocabulary(tiny_model, bad_id):
    ids = _ids(batch=1, length=5)
    ids[0, 2] = bad_id
    with pytest.raises(ValueError, match=f"Token id {bad_id} is outside the vocabulary \\[0, 211\\)"):
        tiny_model(ids)


def test_attention_mask_of_the_wrong_shape(tiny_model):
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 7\) but the input needs \(2, 5\)"):
        tiny_model(_ids(batch=2, length=5), attention_mask=torch.ones(2, 7, dtype=torch.long))


# --- integrations -------------------------------------------------------------------------------------------


def test_set_attn_implementation_dispatches_through_the_attention_interface(tiny_model):
    """transformers' `set_attn_implementation` reaches every layer, custom kernels registered by name too."""
    calls = []

    def counting_sdpa(module, *args, **kwargs):
        calls.append(module.layer_idx)
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, *args, **kwargs)

    AttentionInterface.register("counting_sdpa", counting_sdpa)
    ids = _ids()
    reference = gpt2_twin(tiny_model)(ids).logits
    tiny_model.set_attn_implementation("counting_sdpa")
    assert tiny_model.config._attn_implementation == "counting_sdpa"
    assert (tiny_model(ids).logits - reference).abs().max().item() <= 1e-5
    assert calls == list(range(tiny_model.config.n_layer))
    tiny_model.set_attn_implementation("eager")
    assert (tiny_model(ids).logits - reference).abs().max().item() <= 1e-5
    assert len(calls) == tiny_model.config.n_layer


def test_flex_attention_equals_gpt2_with_left_padding(tiny_model):
    twin = gpt2_twin(tiny_model)
    ids, mask = _left_padded(_ids(), [5, 0, 2])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    tiny_model.set_attn_implementation("flex_attention")
    assert tiny_model.config._attn_implementation == "flex_attention"
    with torch.no_grad():  # torch's flex attention has no backward on CPU (tests/test_cuda.py trains with it)
        ours = tiny_model(ids, attention_mask=mask).logits
    theirs = twin(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max().item() <= 1e-5


@pytest.mark.skipif(not is_flash_attn_2_available(), reason="flash-attn is not installed (needs a CUDA GPU)")
def test_flash_attention_2_matches_sdpa():
    torch.manual_seed(0)
    model = PgGPT2ForCausalLM(tiny_config()).eval().cuda().to(torch.bfloat16)
    ids = _ids().cuda()
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
    ids = _ids(batch=2, length=16)
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
