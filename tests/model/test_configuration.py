"""The configuration: GPT-2's defaults and names, presets, validation, Auto-class registration."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    tiny_config,
)
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
)

from modeling_pg_gpt2 import PRESETS, PgGPT2Config, PgGPT2ForCausalLM, PgGPT2Model


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
