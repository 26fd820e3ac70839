"""Export a pg_gpt2 (or GPT-2) checkpoint to GGUF, the file format of llama.cpp, Ollama and LM Studio.

    python convert.py outputs/shakespeare shakespeare-q8_0.gguf --to gguf --dtype q8_0
    llama-completion -m shakespeare-q8_0.gguf -p "ROMEO:" -n 100

The file uses llama.cpp's `gpt2` architecture: its tensor names (`token_embd`, `position_embd`,
`blk.N.attn_qkv`, ..., `output_norm`), its hyper-parameters (`gpt2.context_length`, ...), and the
tokenizer as llama.cpp's byte-level BPE (`tokenizer.ggml.model = gpt2`, pre-tokenizer `gpt-2`): every
token with its type, the merges in rank order, `<|endoftext|>` as bos and eos. It is written with the
`gguf` package that llama.cpp publishes.

Precisions (`dtype`): `f32`; `f16` (the default: half the size, logits within about 1e-2); `q8_0`
(llama.cpp's 8-bit blocks of 32 weights with one scale, about a quarter of f32). Only the matrices are
converted; LayerNorm weights and biases stay f32, as llama.cpp's own converter keeps them. The tied
language-model head is not stored: llama.cpp reuses `token_embd` when `output.weight` is absent.

Python:

    >>> from modeling_pg_gpt2.export.gguf import export_gguf
    >>> export_gguf("outputs/shakespeare", "shakespeare.gguf", dtype="f16")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..common.errors import UserError
from ..common.outputs import TOKENIZER_FILE, staged
from ..modeling_pg_gpt2 import PgGPT2ForCausalLM
from .source import check_destination, load_source

ARCH = "gpt2"
DTYPES = ("f32", "f16", "q8_0")
# pg_gpt2 parameter name (without "transformer.", "{i}" for the layer) -> llama.cpp gpt2 tensor name.
TENSOR_NAMES = {
    "wte.weight": "token_embd.weight",
    "wpe.weight": "position_embd.weight",
    "ln_f.weight": "output_norm.weight",
    "ln_f.bias": "output_norm.bias",
    "h.{i}.ln_1.weight": "blk.{i}.attn_norm.weight",
    "h.{i}.ln_1.bias": "blk.{i}.attn_norm.bias",
    "h.{i}.attn.c_attn.weight": "blk.{i}.attn_qkv.weight",
    "h.{i}.attn.c_attn.bias": "blk.{i}.attn_qkv.bias",
    "h.{i}.attn.c_proj.weight": "blk.{i}.attn_output.weight",
    "h.{i}.attn.c_proj.bias": "blk.{i}.attn_output.bias",
    "h.{i}.ln_2.weight": "blk.{i}.ffn_norm.weight",
    "h.{i}.ln_2.bias": "blk.{i}.ffn_norm.bias",
    "h.{i}.mlp.c_fc.weight": "blk.{i}.ffn_up.weight",
    "h.{i}.mlp.c_fc.bias": "blk.{i}.ffn_up.bias",
    "h.{i}.mlp.c_proj.weight": "blk.{i}.ffn_down.weight",
    "h.{i}.mlp.c_proj.bias": "blk.{i}.ffn_down.bias",
}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise UserError("--to gguf needs the gguf package: pip install 'pg-gpt2[gguf]'") from None
    return gguf


def gguf_tensors(model: PgGPT2ForCausalLM) -> dict[str, np.ndarray]:
    """The model's weights under llama.cpp's gpt2 names, fp32, in GGUF's (rows, columns) = (out, in) order.

    pg_gpt2's `nn.Linear` weights are (out, in), which is what llama.cpp reads (ggml's first dimension
    is `in`), so nothing is transposed; GPT-2's Conv1D checkpoints were transposed when converted.
    """
    names = {}
    for pattern, gguf_name in TENSOR_NAMES.items():
        for i in range(model.config.n_layer) if "{i}" in pattern else [None]:
            names[f"transformer.{pattern.format(i=i)}"] = gguf_name.format(i=i)
    state = model.state_dict()
    tensors = {gguf_name: state[name].float().numpy() for name, gguf_name in names.items()}
    if not model.config.tie_word_embeddings:
        tensors["output.weight"] = state["lm_head.weight"].float().numpy()
    return tensors


def _tokenizer_vocabulary(folder: Path, vocab_size: int) -> tuple[list[str], list[int], list[str], int]:
    """(tokens by id, their llama.cpp token types, merges "a b" in rank order, the id of <|endoftext|>).

    Ids the tokenizer does not use up to the model's `vocab_size` (a vocabulary padded to a multiple of
    64) become unused placeholder tokens, so that the token list covers every row of the embedding.
    """
    gguf = _gguf()
    path = folder / TOKENIZER_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"{folder} has no {TOKENIZER_FILE}; a GGUF file carries its tokenizer: save it beside the model"
        ) from None
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    model, pre = data.get("model") or {}, json.dumps(data.get("pre_tokenizer"))
    if model.get("type") != "BPE" or '"ByteLevel"' not in pre:
        raise UserError(
            f"{path} is not a byte-level BPE tokenizer (model {model.get('type')!r}); llama.cpp's gpt2 models "
            "need one (train_tokenizer.py writes one)"
        )
    vocab: dict[str, int] = dict(model["vocab"])
    special = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    vocab.update(special)
    if max(vocab.values()) >= vocab_size:
        raise UserError(f"the tokenizer has ids up to {max(vocab.values())}, the model only {vocab_size} embeddings")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, index in vocab.items():
        tokens[index] = token
        types[index] = gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL
    # tokenizers writes merges as "a b" strings (older files) or as [a, b] pairs.
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    eos = special.get("<|endoftext|>")
    if eos is None:
        raise UserError(f"{path} has no <|endoftext|> token, which GPT-2 models end their texts with")
    return tokens, [int(t) for t in types], merges, eos


def _encode(tensor: np.ndarray, dtype: str):
    """(data, GGML type) of one fp32 tensor in `dtype`; vectors (LayerNorms, biases) stay fp32."""
    gguf = _gguf()
    kinds = gguf.GGMLQuantizationType
    if tensor.ndim < 2 or dtype == "f32":
        return tensor.astype(np.float32), kinds.F32
    block = gguf.GGML_QUANT_SIZES[kinds.Q8_0][0]
    if dtype == "q8_0" and tensor.shape[-1] % block == 0:
        return gguf.quants.quantize(tensor, kinds.Q8_0), kinds.Q8_0
    return tensor.astype(np.float16), kinds.F16  # rows that are not whole q8_0 blocks, as llama.cpp does


def write_gguf(
    model: PgGPT2ForCausalLM, folder: Path, path: Path, dtype: str = "f16", name: str | None = None
) -> None:
    """Write `model`, with the tokenizer of checkpoint `folder`, as a llama.cpp gpt2 GGUF file at `path`."""
    gguf = _gguf()
    config = model.config
    if config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(
            f"llama.cpp's gpt2 architecture computes GELU's tanh approximation (gelu_new); this model uses "
            f"activation_function={config.activation_function!r} and would give other results there"
        )
    tokens, types, merges, eos = _tokenizer_vocabulary(folder, config.vocab_size)
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }

    writer = gguf.GGUFWriter(path, ARCH)
    writer.add_name(name or folder.name)
    writer.add_file_type(file_types[dtype])
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre("gpt-2")  # GPT-2's pre-tokenisation regex, which train_tokenizer.py uses
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(False)  # GPT-2 prompts start with their first word, not a special token
    for tensor_name, tensor in gguf_tensors(model).items():
        data, kind = _encode(tensor, dtype)
        writer.add_tensor(tensor_name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_gguf(
    src: str | Path,
    dst: str | Path,
    dtype: str = "f16",
    overwrite: bool = False,
    revision: str | None = None,
) -> Path:
    """Export checkpoint `src` (pg_gpt2 or GPT-2, folder or Hub id) to the GGUF file `dst`; returns `dst`.

    dtype: "f32", "f16" or "q8_0". An existing `dst` is only replaced with `overwrite=True`.
    """
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype} is not available for GGUF; choose one of {', '.join(DTYPES)}")
    dst = Path(dst)
    if dst.suffix != ".gguf":
        raise UserError(f"DST {dst} should be a file name ending in .gguf (e.g. {dst.name}-{dtype}.gguf)")
    model, folder = load_source(src, "--to gguf", revision)
    check_destination(dst, folder, overwrite, "file")
    with staged(dst, "file") as staging:
        write_gguf(model, folder, staging, dtype, name=Path(str(src)).name)
    return dst


__all__ = ["DTYPES", "TENSOR_NAMES", "export_gguf", "gguf_tensors", "write_gguf"]
