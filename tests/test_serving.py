"""What serving engines need from the model, checked without the engines.

vLLM's and SGLang's Transformers backends build the bare model with `AutoModel.from_config(config,
trust_remote_code=True)` (so config.json must name `AutoModel`), drop every checkpoint key that an ignore
pattern matches with `re.search`, and call the model with attention functions of their own registered through
transformers' `AttentionInterface`; `transformers serve --continuous-batching` and `generate_batch` hand it
their paged cache. The engines themselves run in tests/test_serve_transformers.py and tests/test_serve_vllm.py.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import transformers
from conftest import tiny_config
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
)

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
