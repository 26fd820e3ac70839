"""generation/loader.py: the one loader of a model for use, which generate, evaluate and the exports share."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import gpt2_twin, saved_small_model
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

from modeling_pg_gpt2 import PgGPT2ForCausalLM
from modeling_pg_gpt2.common.errors import UserError
from modeling_pg_gpt2.export.source import load_source
from modeling_pg_gpt2.generation.loader import context_length, load_model, resolve_device

CONTEXT = 48
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return saved_small_model(tmp_path_factory.mktemp("loader"), TEXT, CONTEXT)


def copy_of(model_dir: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / name))


def test_a_pg_gpt2_folder_and_a_gpt2_checkpoint_load_ready_for_use(model_dir, tmp_path):
    tokenizer, model = load_model(model_dir, dtype=torch.bfloat16)
    assert isinstance(model, PgGPT2ForCausalLM) and not model.training
    assert model.dtype == torch.bfloat16 and model.device == torch.device("cpu")
    assert len(tokenizer) == model.config.vocab_size and context_length(model.config) == CONTEXT

    gpt2 = copy_of(model_dir, tmp_path, "gpt2")  # transformers' own GPT-2 with the same weights and tokenizer
    for name in ("config.json", "model.safetensors"):
        (gpt2 / name).unlink()
    gpt2_twin(PgGPT2ForCausalLM.from_pretrained(model_dir)).save_pretrained(gpt2)
    _, native = load_model(gpt2)
    assert type(native) is GPT2LMHeadModel and not native.training
    assert context_length(native.config) == CONTEXT


@pytest.mark.parametrize("kind", ["missing folder", "no tokenizer.json", "NaN weights", "tokenizer too large"])
def test_what_cannot_be_used_is_one_line(model_dir, tmp_path, kind):
    folder = copy_of(model_dir, tmp_path, "model")
    if kind == "missing folder":
        shutil.rmtree(folder)
        message = f"no such folder: {folder}"
    elif kind == "no tokenizer.json":
        (folder / "tokenizer.json").unlink()
        message = "has no tokenizer.json"
    elif kind == "NaN weights":
        weights = load_file(folder / "model.safetensors")
        weights["transformer.h.1.mlp.c_fc.weight"][0, 0] = float("nan")
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        message = r"has NaN or infinite weights \(transformer.h.1.mlp.c_fc.weight\): its training diverged"
    else:
        config = json.loads((folder / "config.json").read_text())
        vocab_size = config["vocab_size"]
        weights = load_file(folder / "model.safetensors")
        weights["transformer.wte.weight"] = weights["transformer.wte.weight"][:-5].clone()
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps({**config, "vocab_size": vocab_size - 5}))
        message = f"has {vocab_size} tokens but the model only {vocab_size - 5} \\(config.vocab_size\\)"
    with pytest.raises(UserError, match=message) as caught:
        load_model(folder)
    assert "\n" not in str(caught.value)
    if kind in ("NaN weights", "tokenizer too large"):  # an export is a model for use elsewhere: refused alike
        with pytest.raises(UserError, match=message):
            load_source(folder, "--to onnx")


def test_an_onnx_export_loaded_as_torch_weights_names_the_backend(model_dir, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, folder / name)
    (folder / "model.onnx").write_bytes(b"a graph")
    with pytest.raises(UserError, match=f"{folder} is an ONNX export .*--backend onnxruntime"):
        load_model(folder)
    with pytest.raises(UserError, match=f"no such folder: {tmp_path / 'missing'}; --backend onnxruntime runs"):
        load_model(tmp_path / "missing", backend="onnxruntime")


def test_devices_are_checked_before_anything_loads():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="'gpu' is not a device"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda: CUDA is not available here"):
            resolve_device("cuda")
    if torch.cuda.device_count() < 8:
        with pytest.raises(UserError, match="--device cuda:7: (this machine has|CUDA is not available here)"):
            resolve_device("cuda:7")


def test_context_length_reads_either_name():
    class Config:
        max_position_embeddings = 2048

    assert context_length(Config()) == 2048
    assert context_length(object()) is None
