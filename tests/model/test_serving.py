"""What serving engines need from the model, checked without the engines.

vLLM's and SGLang's Transformers backends build the bare model with `AutoModel.from_config(config,
trust_remote_code=True)` (so config.json must name `AutoModel`), drop every checkpoint key that an ignore
pattern matches with `re.search`, and call the model with attention functions of their own registered through
transformers' `AttentionInterface`; `transformers serve --continuous-batching` and `generate_batch` hand it
their paged cache. The engines themselves run in tests/cli/test_serve.py and tests/model/test_serve_vllm.py.
"""

from __future__ import annotations

import json
import re
from copy import deepcopy

import pytest
import torch
import transformers
from helpers import gpt2_twin, tiny_config
from safetensors.torch import load_file, save_file
from transformers import (
    AttentionInterface,
    AutoModel,
    AutoModelForCausalLM,
    ContinuousBatchingConfig,
    GenerationConfig,
)
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from modeling_pg_gpt2 import (
    PgGPT2Config,
    PgGPT2ForCausalLM,
    PgGPT2ForSequenceClassification,
    PgGPT2Model,
)


def registered_auto_classes() -> dict[str, str]:
    """Every transformers Auto class that `pg_gpt2` is registered with, and the class it resolves to."""
    registered = {}
    for name in dir(transformers):
        auto = getattr(transformers, name) if name.startswith("AutoModel") else None
        mapping = getattr(auto, "_model_mapping", None)
        if mapping is not None and PgGPT2Config in mapping._extra_content:
            registered[name] = mapping._extra_content[PgGPT2Config].__name__
    return registered


@pytest.mark.parametrize("model_class", [PgGPT2ForCausalLM, PgGPT2Model, PgGPT2ForSequenceClassification])
def test_saved_config_maps_every_registered_auto_class(model_class, tmp_path):
    registered = registered_auto_classes()
    assert {"AutoModel", "AutoModelForCausalLM"} <= registered.keys()
    model_class(tiny_config()).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map.pop("AutoConfig") == "configuration_pg_gpt2.PgGPT2Config"
    assert {auto: ref.rsplit(".", 1)[1] for auto, ref in auto_map.items()} == registered
    for ref in auto_map.values():  # each entry names a class defined in a file the folder carries
        module, name = ref.rsplit(".", 1)
        assert f"class {name}(" in (tmp_path / f"{module}.py").read_text()


def test_a_folder_saved_before_auto_model_was_mapped_loads_and_gains_it(tmp_path):
    """Folders written before `AutoModel` entered auto_map still load; saving them again adds the entry."""
    torch.manual_seed(0)
    model = PgGPT2ForCausalLM(tiny_config()).eval()
    model.save_pretrained(tmp_path / "old")
    config_path = tmp_path / "old" / "config.json"
    config = json.loads(config_path.read_text())
    del config["auto_map"]["AutoModel"]
    config_path.write_text(json.dumps(config))

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "old").eval()
    bare = AutoModel.from_pretrained(tmp_path / "old").eval()
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
        assert torch.equal(bare(ids).last_hidden_state, model.transformer(ids).last_hidden_state)
    loaded.save_pretrained(tmp_path / "new")
    auto_map = json.loads((tmp_path / "new" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_pg_gpt2.PgGPT2Model"


# -- the ignore patterns, as vLLM applies them ------------------------------------------------------------------


@pytest.mark.parametrize("model_class", [PgGPT2ForCausalLM, PgGPT2ForSequenceClassification])
def test_no_checkpoint_key_matches_an_ignore_pattern(model_class, tmp_path):
    """vLLM turns `_keys_to_ignore_on_load_unexpected` into drop rules applied with `re.search` to every key of
    the checkpoint: a pattern matching a real key (as `attn\\.bias` matched `attn.c_attn.bias`) leaves that weight
    unloaded and the served model silently wrong."""
    model_class(tiny_config(n_layer=3)).save_pretrained(tmp_path)
    keys = load_file(tmp_path / "model.safetensors").keys()
    assert any(key.endswith("attn.c_attn.bias") for key in keys)
    patterns = model_class._keys_to_ignore_on_load_unexpected
    assert patterns
    assert [(pattern, key) for pattern in patterns for key in keys if re.search(pattern, key)] == []


def test_openai_causal_mask_buffers_are_still_ignored_on_load(tmp_path):
    """The patterns' purpose: OpenAI's checkpoints carry `attn.bias` / `attn.masked_bias` buffers, which load as
    unexpected keys that are dropped without a word."""
    torch.manual_seed(0)
    model = PgGPT2ForCausalLM(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["transformer.h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    state["transformer.h.1.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded, info = PgGPT2ForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == set() and info["missing_keys"] == set()
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(ids).logits, model(ids).logits)


# -- continuous batching ----------------------------------------------------------------------------------------

# Prompts of many lengths, more than one batch of max_batch_tokens holds: requests join and leave while others
# decode, so prefill and decoding tokens of different requests share forward passes.
PROMPTS = [[(7 * i + 3 * j) % 200 + 1 for j in range(length)] for i, length in enumerate([1, 5, 17, 3, 9, 30, 2, 12])]
CB_CONFIG = dict(num_blocks=32, page_size=16, max_batch_tokens=48)


@pytest.fixture(scope="module")
def varied_model() -> PgGPT2ForCausalLM:
    """A random model whose greedy continuations vary (a wide init), so that a wrong token shows."""
    torch.manual_seed(0)
    return PgGPT2ForCausalLM(tiny_config(initializer_range=0.3)).eval()


def with_attention(model: PgGPT2ForCausalLM, attn_implementation: str) -> PgGPT2ForCausalLM:
    """`model`'s weights in a model that uses `attn_implementation`."""
    copy = PgGPT2ForCausalLM._from_config(deepcopy(model.config), attn_implementation=attn_implementation)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_generate_batch_equals_generate(varied_model, attn_implementation):
    """Continuous batching (`generate_batch`: a paged cache, all requests' tokens packed in one row) gives the
    greedy tokens that `generate()` gives each prompt alone, and that transformers' GPT-2 gives (fp32)."""
    model = with_attention(varied_model, attn_implementation)
    twin = gpt2_twin(model, attn_implementation).eval()
    new_tokens = 12

    def greedy() -> GenerationConfig:
        return GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)

    outputs = model.generate_batch(
        PROMPTS, generation_config=greedy(), continuous_batching_config=ContinuousBatchingConfig(**CB_CONFIG)
    )
    batched = [outputs[request].generated_tokens for request in sorted(outputs, key=lambda r: int(r.split("_")[1]))]
    with torch.no_grad():
        alone = [model.generate(torch.tensor([p]), generation_config=greedy())[0, len(p) :].tolist() for p in PROMPTS]
        oracle = [twin.generate(torch.tensor([p]), generation_config=greedy())[0, len(p) :].tolist() for p in PROMPTS]
    assert oracle == alone
    assert all(len(tokens) == new_tokens for tokens in batched)  # generate_batch returns nothing for a failed request
    assert batched == alone
    assert len({tuple(tokens) for tokens in alone}) == len(PROMPTS)


# -- the attention interface ------------------------------------------------------------------------------------


def engine_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """An attention function of an engine's kind, written out: (B, H, T, D) in, (B, T, H, D) out. Without a mask
    (engines register none) it is causal over the last T of the S keys, as vLLM's and SGLang's are."""
    engine_attention.calls.append((module.layer_idx, query.shape, key.shape, attention_mask, kwargs))
    T, S = query.shape[-2], key.shape[-2]
    scores = (query @ key.transpose(-1, -2)) * scaling  # (B, H, T, S)
    if attention_mask is None:
        attention_mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
    if attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., :S], torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask[..., :S]
    probs = scores.softmax(dim=-1)
    return (probs @ value).transpose(1, 2), probs


@pytest.fixture
def engine_attention_registered():
    """`engine_attention` registered under a name of its own, and unregistered afterwards."""
    name = "pg_gpt2_test_engine"
    engine_attention.calls = []
    AttentionInterface.register(name, engine_attention)
    yield name
    del AttentionInterface._global_mapping[name]
    AttentionMaskInterface._global_mapping.pop(name, None)


def test_registered_attention_gets_every_layer_call_and_equals_sdpa(varied_model, engine_attention_registered):
    name = engine_attention_registered
    config = varied_model.config
    sdpa, engine = with_attention(varied_model, "sdpa"), with_attention(varied_model, name)
    assert engine.config._attn_implementation == name
    ids = torch.tensor([PROMPTS[2][:12], PROMPTS[5][:12]])
    engine_data = object()  # what an engine passes to its attention through the model's forward
    with torch.no_grad():
        logits = engine(ids, engine_data=engine_data).logits
        expected = sdpa(ids).logits
    calls = engine_attention.calls
    assert [call[0] for call in calls] == list(range(config.n_layer))
    head_shape = (2, config.n_head, 12, config.n_embd // config.n_head)
    for _, query_shape, key_shape, mask, kwargs in calls:
        assert query_shape == key_shape == head_shape
        assert mask is None  # no mask function registered: the engine's function does the causal masking
        assert kwargs["engine_data"] is engine_data and kwargs["position_ids"].tolist() == [list(range(12))]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)

    # generate(): a prompt, then one token at a time against the DynamicCache (T=1 queries over S keys).
    engine_attention.calls.clear()
    with torch.no_grad():
        tokens = engine.generate(ids[:1], max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert torch.equal(tokens, sdpa.generate(ids[:1], max_new_tokens=8, do_sample=False, pad_token_id=0))
    assert [tuple(call[1][-2:-1]) + tuple(call[2][-2:-1]) for call in engine_attention.calls[-config.n_layer :]] == [
        (1, 19)
    ] * config.n_layer

    # With a mask function registered as well, padded batches get the mask, and match sdpa's too.
    AttentionMaskInterface.register(name, sdpa_mask)
    padded = torch.tensor([[0, 0, 0, *PROMPTS[2][:9]], PROMPTS[5][:12]])
    attention_mask = (torch.arange(12) >= torch.tensor([[3], [0]])).long()
    with torch.no_grad():
        logits = engine(padded, attention_mask=attention_mask).logits
        expected = sdpa(padded, attention_mask=attention_mask).logits
    assert engine_attention.calls[-1][3] is not None
    torch.testing.assert_close(logits[attention_mask.bool()], expected[attention_mask.bool()], rtol=1e-5, atol=1e-5)
