"""ONNX export (`convert --to onnx`), checked by onnxruntime against the torch model it came from."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from modeling_pg_gpt2 import PgGPT2Config, PgGPT2ForCausalLM
from modeling_pg_gpt2.common.errors import UserError
from modeling_pg_gpt2.data.corpus import CorpusArguments
from modeling_pg_gpt2.data.tokenizer import TokenizerArguments, train_tokenizer
from modeling_pg_gpt2.export.onnx import export_onnx
from modeling_pg_gpt2.generation.onnx import OnnxCausalLM
from modeling_pg_gpt2.generation.sampling import GenerationArguments, generate_text

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.slow  # every test exports through torch.onnx (torch.export + onnxscript)

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Random values in every parameter, LayerNorms and biases included, so a wrong tensor changes the logits."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random pg_gpt2 saved as run_clm.py saves one: weights, tokenizer trained here, generation config."""
    root = tmp_path_factory.mktemp("onnx")
    (root / "corpus").mkdir()
    (root / "corpus" / "play.txt").write_text(TEXT * 5, encoding="utf-8")
    train_tokenizer(
        CorpusArguments(train_file=str(root / "corpus")),
        TokenizerArguments(output_dir=str(root / "model"), vocab_size=300),
    )
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    config = PgGPT2Config(
        vocab_size=len(tokenizer), n_positions=48, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = randomize(PgGPT2ForCausalLM(config))
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    return export_onnx(checkpoint, tmp_path_factory.mktemp("out") / "onnx")


@pytest.fixture(scope="module")
def torch_model(checkpoint) -> PgGPT2ForCausalLM:
    return PgGPT2ForCausalLM.from_pretrained(checkpoint).eval()


def test_folder_holds_graph_config_and_tokenizer(exported, checkpoint):
    names = {p.name for p in exported.iterdir()}
    assert {"model.onnx", "config.json", "tokenizer.json", "generation_config.json"} <= names
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    config = GPT2Config.from_pretrained(exported)
    assert (config.model_type, config.n_layer, config.n_head) == ("gpt2", 2, 4)
    session = OnnxCausalLM.from_pretrained(exported).session
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert list(inputs)[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs["past_key_values.1.value"][1:4:2] == [4, 8]  # (B, H, P, D): only H and D are fixed
    assert [o.name for o in session.get_outputs()][:2] == ["logits", "present.0.key"]


def test_logits_match_torch_with_and_without_cache_and_left_padding(exported, torch_model):
    onnx = OnnxCausalLM.from_pretrained(exported)
    vocab = torch_model.config.vocab_size
    ids = torch.randint(0, vocab, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding
    mask[1, :1] = 0
    real = mask.bool().numpy()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = torch_model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)

    # Without cache: the whole sequence at once.
    logits, present = onnx.forward(ids.numpy(), mask.numpy(), None)
    assert np.abs(logits[real] - want.logits.numpy()[real]).max() <= 1e-4
    # The cache it returns is the torch model's, at the real tokens: (B, H, S, D) -> (B, S, H, D)[real].
    for layer in range(2):
        cached = (want.cache.layers[layer].keys, want.cache.layers[layer].values)
        for got, expected in zip(present[2 * layer : 2 * layer + 2], cached, strict=True):
            assert np.abs(got.swapaxes(1, 2)[real] - expected.transpose(1, 2).numpy()[real]).max() <= 1e-4

    # With cache: the first 8 tokens, then 3 decoding steps of one token (one of them padded before).
    logits, past = onnx.forward(ids[:, :8].numpy(), mask[:, :8].numpy(), None)
    got = [logits]
    for t in range(8, 12):
        logits, past = onnx.forward(ids[:, t : t + 1].numpy(), mask[:, : t + 1].numpy(), past)
        got.append(logits)
    got = np.concatenate(got, axis=1)
    assert np.abs(got[real] - want.logits.numpy()[real]).max() <= 1e-4


def test_greedy_text_equals_torch_generate(exported, checkpoint, torch_model):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    prompt = "But soft, what"
    args = GenerationArguments(max_new_tokens=20, do_sample=False, backend="onnxruntime")
    [[text]] = generate_text(exported, [prompt], args, stream=io.StringIO())
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = torch_model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert text == tokenizer.decode(expected[0], skip_special_tokens=True)

    # A left-padded batch decodes each row as it would alone.
    batch = tokenizer(["It is", "ROMEO: But soft"], return_tensors="pt", padding=True, padding_side="left")
    onnx = OnnxCausalLM.from_pretrained(exported)
    got = onnx.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=10, eos_token_id=[])
    with torch.no_grad():
        want = torch_model.generate(**batch, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(got, want)


def test_sampling_options_run_and_seed_reproduces(exported):
    args = GenerationArguments(
        max_new_tokens=8, seed=0, top_k=5, top_p=0.9, repetition_penalty=1.3, num_return_sequences=2,
        backend="onnxruntime",
    )  # fmt: skip
    first = generate_text(exported, ["ROMEO:"], args, stream=io.StringIO())
    assert first == generate_text(exported, ["ROMEO:"], args, stream=io.StringIO())
    assert len(first[0]) == 2 and all(s.startswith("ROMEO:") for s in first[0])


def test_gpt2_source_and_refusals(tmp_path, checkpoint, torch_model):
    # A transformers GPT-2 checkpoint exports too (converted on the fly), here in float16, which onnxruntime's
    # CPU provider runs: the logits are GPT-2's to float16 precision (a missed Conv1D transpose would be O(1)).
    gpt2 = randomize(GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=32, n_embd=16, n_layer=1, n_head=2)))
    gpt2.save_pretrained(tmp_path / "gpt2")
    out = export_onnx(tmp_path / "gpt2", tmp_path / "gpt2-onnx", dtype="float16")
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    onnx = OnnxCausalLM.from_pretrained(out)
    logits, past = onnx.forward(ids.numpy(), np.ones((2, 9), np.int64), None)
    assert logits.dtype == past[0].dtype == np.float16
    with torch.no_grad():
        want = gpt2(ids).logits.numpy()
    assert np.abs(logits - want).max() <= 1e-2 * np.abs(want).max()
    assert onnx.generate(ids, max_new_tokens=3).shape == (2, 12)

    with pytest.raises(UserError, match="exists; choose another name or pass --overwrite"):
        export_onnx(checkpoint, out)
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(UserError, match="holds a 'llama' model; --to onnx exports pg_gpt2"):
        export_onnx(tmp_path / "llama", tmp_path / "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_command_line(exported, tmp_path):
    """`generate.py --backend onnxruntime` as docs/exports.md shows (the export's command line is the one
    tests/export/test_gguf.py runs: `convert` hands both formats to `export_main`); bad input is one line."""
    sample = subprocess.run(
        [sys.executable, "generate.py", str(exported), "ROMEO:", "--backend", "onnxruntime", "--max_new_tokens", "5"],
        cwd=ROOT, env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("ROMEO:")
    bad = subprocess.run(
        [sys.executable, str(ROOT / "convert.py"), str(exported), str(tmp_path / "x"), "--to", "onnx"],
        cwd=ROOT, env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2  # an export is not a checkpoint
    assert bad.stderr.startswith("error: no weights in") and bad.stderr.count("\n") == 1
