"""GGUF export (`convert --to gguf`): the file read back with gguf's reader, and run by llama.cpp.

The llama.cpp tests need llama-cpp-python, which compiles llama.cpp when installed (minutes), so it is
not in the dev extra: `make test-gguf` installs it and runs this file; elsewhere they are skipped.
"""

from __future__ import annotations

import json
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
from modeling_pg_gpt2.export.gguf import export_gguf

gguf = pytest.importorskip("gguf")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# Emoji, CJK, tabs and runs of spaces: byte-level BPE must split them exactly as the tokenizer does.
TEXT = "ROMEO:\nBut soft, what light 😀 through yonder 東京の空 window    breaks?\n\tIt is the east.\n\n"
HARD_TEXT = "JULIET: 😀🙂 東京  and   new\t\tlines\n\n 新しい  😀 window    breaks<|endoftext|>soft"
PROMPT = "ROMEO:\nBut soft, what light through yonder"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random pg_gpt2 saved as run_clm.py saves one, with a tokenizer trained here on TEXT."""
    root = tmp_path_factory.mktemp("gguf")
    (root / "corpus").mkdir()
    (root / "corpus" / "play.txt").write_text(TEXT * 20, encoding="utf-8")
    train_tokenizer(
        CorpusArguments(train_file=str(root / "corpus")),
        TokenizerArguments(output_dir=str(root / "model"), vocab_size=320),
    )
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    config = PgGPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=4,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = PgGPT2ForCausalLM(config).eval()
    with torch.no_grad():  # random LayerNorms and biases too, so that a misplaced tensor shows
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    model.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def files(checkpoint, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gguf-out")
    return {dtype: export_gguf(checkpoint, out / f"model-{dtype}.gguf", dtype) for dtype in ("f32", "f16", "q8_0")}


@pytest.fixture(scope="module")
def torch_model(checkpoint) -> PgGPT2ForCausalLM:
    return PgGPT2ForCausalLM.from_pretrained(checkpoint).eval()


def field(reader, key: str):
    return reader.fields[key].contents()


def test_metadata_and_tokenizer_read_back(files, checkpoint, torch_model):
    reader = gguf.GGUFReader(files["f16"])
    config = torch_model.config
    assert field(reader, "general.architecture") == "gpt2"
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    expected = {
        "gpt2.context_length": 64, "gpt2.embedding_length": 64, "gpt2.feed_forward_length": 256,
        "gpt2.block_count": 2, "gpt2.attention.head_count": 4,
    }  # fmt: skip
    assert {key: field(reader, key) for key in expected} == expected
    assert field(reader, "gpt2.attention.layer_norm_epsilon") == pytest.approx(config.layer_norm_epsilon)

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert tokens == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    eos = tokenizer.eos_token_id
    assert field(reader, "tokenizer.ggml.eos_token_id") == field(reader, "tokenizer.ggml.bos_token_id") == eos
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[eos] == gguf.TokenType.CONTROL and set(types[:eos]) == {gguf.TokenType.NORMAL}
    merges = json.loads((checkpoint / "tokenizer.json").read_text())["model"]["merges"]
    assert field(reader, "tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert (field(reader, "tokenizer.ggml.model"), field(reader, "tokenizer.ggml.pre")) == ("gpt2", "gpt-2")


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_tensors_read_back(files, torch_model, dtype):
    reader = gguf.GGUFReader(files[dtype])
    tensors = {t.name: t for t in reader.tensors}
    state = {name.removeprefix("transformer."): p.detach().numpy() for name, p in torch_model.state_dict().items()}
    pairs = {"token_embd.weight": "wte.weight", "position_embd.weight": "wpe.weight", "output_norm.bias": "ln_f.bias"}
    pairs |= {
        "blk.1.attn_qkv.weight": "h.1.attn.c_attn.weight", "blk.1.attn_qkv.bias": "h.1.attn.c_attn.bias",
        "blk.0.attn_output.weight": "h.0.attn.c_proj.weight", "blk.0.ffn_up.weight": "h.0.mlp.c_fc.weight",
        "blk.1.ffn_down.weight": "h.1.mlp.c_proj.weight", "blk.1.ffn_norm.weight": "h.1.ln_2.weight",
        "blk.0.attn_norm.bias": "h.0.ln_1.bias",
    }  # fmt: skip
    assert len(tensors) == 4 + 2 * 12  # embeddings, final LayerNorm, 12 per block; the tied head is not stored
    assert "output.weight" not in tensors
    for gguf_name, name in pairs.items():
        want = state[name]
        tensor = tensors[gguf_name]
        got = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(want.shape)
        if want.ndim == 1 or dtype == "f32":
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(got, want)
        elif dtype == "f16":
            np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32))
        else:  # q8_0: each block of 32 holds int8 multiples of max|w| / 127 (a float16 scale: half a step + 0.1%)
            assert tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0
            step = np.abs(want).reshape(-1, 32).max(axis=1, keepdims=True) / 127
            assert (np.abs(got - want).reshape(-1, 32) <= step * 0.5 + step * 127 * 1e-3).all()
    sizes = {dtype: path.stat().st_size for dtype, path in files.items()}
    assert sizes["q8_0"] < 0.6 * sizes["f16"] < 0.6 * sizes["f32"]


def test_gpt2_source_and_refusals(tmp_path, checkpoint):
    # A transformers GPT-2 checkpoint exports too (converted on the fly): its Conv1D weights come out transposed.
    shape = dict(vocab_size=320, n_positions=32, n_embd=32, n_layer=1, n_head=2, bos_token_id=319, eos_token_id=319)
    gpt2 = GPT2LMHeadModel(GPT2Config(**shape))
    gpt2.save_pretrained(tmp_path / "gpt2")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "gpt2" / name).write_bytes((checkpoint / name).read_bytes())
    reader = gguf.GGUFReader(export_gguf(tmp_path / "gpt2", tmp_path / "gpt2.gguf", "f32"))
    qkv = next(t for t in reader.tensors if t.name == "blk.0.attn_qkv.weight")
    conv1d = gpt2.transformer.h[0].attn.c_attn.weight.detach().numpy()  # (in, out)
    np.testing.assert_array_equal(qkv.data.reshape(96, 32), conv1d.T)

    with pytest.raises(UserError, match="exists; choose another name or pass --overwrite"):
        export_gguf(checkpoint, tmp_path / "gpt2.gguf")
    with pytest.raises(UserError, match="ending in .gguf"):
        export_gguf(checkpoint, tmp_path / "model")
    with pytest.raises(UserError, match="--dtype q4_0 is not available"):
        export_gguf(checkpoint, tmp_path / "x.gguf", "q4_0")
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(UserError, match="holds a 'llama' model; --to gguf exports pg_gpt2"):
        export_gguf(tmp_path / "llama", tmp_path / "llama.gguf")
    # A failure while writing (a model llama.cpp's gpt2 cannot run) leaves neither DST nor a temporary file.
    relu = PgGPT2ForCausalLM(PgGPT2Config(vocab_size=320, n_positions=32, n_embd=32, n_layer=1, n_head=2,
                                          activation_function="relu"))  # fmt: skip
    relu.save_pretrained(tmp_path / "relu")
    before = set(tmp_path.iterdir())
    with pytest.raises(UserError, match="GELU's tanh approximation"):
        export_gguf(tmp_path / "relu", tmp_path / "relu.gguf")
    assert set(tmp_path.iterdir()) == before


@pytest.mark.slow
def test_command_line(checkpoint, tmp_path):
    out = tmp_path / "model-q8_0.gguf"
    command = [str(ROOT / "convert.py"), str(checkpoint), str(out), "--to", "gguf", "--dtype", "q8_0"]
    done = subprocess.run([sys.executable, *command], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"llama-completion -m {out}" in done.stdout
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0


# -- llama.cpp itself ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(files):
    """Open each GGUF file in llama.cpp (all logits kept, fp32 KV cache so only the weights differ)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: run `make test-gguf`")
    f32 = llama_cpp.GGML_TYPE_F32
    models = {
        dtype: llama_cpp.Llama(
            str(path), n_ctx=64, n_threads=1, logits_all=True, type_k=f32, type_v=f32, verbose=False, seed=0
        )
        for dtype, path in files.items()
    }
    yield models
    for model in models.values():
        model.close()


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def test_llama_cpp_tokenizer_gives_our_ids(llama, checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ours = tokenizer(HARD_TEXT, add_special_tokens=False)["input_ids"]
    assert tokenizer.eos_token_id in ours  # <|endoftext|> inside text is the special token, in both
    for llm in llama.values():
        assert llm.tokenize(HARD_TEXT.encode(), add_bos=False, special=True) == ours
        assert llm.detokenize(ours, special=True).decode() == HARD_TEXT


def test_llama_cpp_logits_match_torch(llama, checkpoint, torch_model):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        want = torch_model(torch.tensor([ids])).logits[0].numpy()
    got = {dtype: llama_logits(llm, ids) for dtype, llm in llama.items()}
    print(f"\n{len(ids)} positions, torch logits up to {np.abs(want).max():.2f} in magnitude")
    for dtype in ("f32", "f16", "q8_0"):
        top1 = (got[dtype].argmax(-1) == want.argmax(-1)).mean()
        print(f"{dtype}: max |logit - torch| {np.abs(got[dtype] - want).max():.2e}, top-1 agreement {top1:.0%}")
        assert top1 >= 0.9
    # f32: only llama.cpp's arithmetic differs (its GELU reads a float16 table).
    assert np.abs(got["f32"] - want).max() <= 1e-3
    assert np.abs(got["f16"] - want).max() <= 1e-2


def test_llama_cpp_greedy_text_equals_torch(llama, checkpoint, torch_model):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        want = torch_model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None)
    want = want[0, len(ids) :].tolist()
    for dtype, llm in llama.items():
        llm.reset()
        got = []
        for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            got.append(token)
            if len(got) == len(want):
                break
        same = next((i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b), len(want))
        print(f"{dtype}: the first {same} of {len(want)} greedy tokens equal torch's")
        # 8-bit weights may flip a near tie of this random model: reported (above), not required.
        assert same == len(want) or dtype == "q8_0"
