"""Export a pg_gpt2 (or GPT-2) checkpoint to ONNX, with the KV cache as graph inputs and outputs.

    python convert.py outputs/shakespeare shakespeare-onnx --to onnx

DST is a folder:

* `model.onnx`: one graph for the prompt and for every decoding step. Inputs `input_ids` (B, T),
  `attention_mask` (B, P + T), `position_ids` (B, T) and, per layer i, `past_key_values.i.key` /
  `.value` (B, H, P, D); outputs `logits` (B, T, V) and `present.i.key` / `.value` (B, H, P + T, D).
  Batch, T and P are dynamic; P = 0 (empty past tensors) is the prompt. These are the names and
  layouts optimum and transformers.js use for decoder models.
* float32 by default; `--dtype float16` halves the file (weights, cache and logits in float16).
* `config.json` (transformers' `gpt2` config: no remote code needed to read the hyper-parameters),
  the tokenizer files and `generation_config.json` of the source.

The graph comes from `torch.onnx.export(dynamo=True)` (torch.export, then onnxscript's translation and
optimisation) of the pg_gpt2 model itself. Decode with `modeling_pg_gpt2.generation.onnx` or
`generate.py MODEL --backend onnxruntime`. Python:

    >>> from modeling_pg_gpt2.export.onnx import export_onnx
    >>> export_onnx("outputs/shakespeare", "shakespeare-onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from ..common.errors import UserError
from ..common.outputs import staged
from ..generation.onnx import ONNX_FILE, past_names
from ..modeling_pg_gpt2 import PgGPT2ForCausalLM
from .layout import pg_config_to_gpt2
from .source import check_destination, copy_side_files, load_source

# ONNX opset 18: run by onnxruntime >= 1.14 and every current runtime (LayerNormalization is native).
OPSET = 18
DTYPES = {"float32": torch.float32, "float16": torch.float16}


class OnnxDecoder(nn.Module):
    """pg_gpt2 with the KV cache as plain tensors in and out: the signature of the exported graph.

    forward(input_ids (B, T), attention_mask (B, P+T), position_ids (B, T), past_key_values: per layer
    (key, value), each (B, H, P, D)) -> (logits (B, T, V), key_0, value_0, key_1, ...) with (B, H, P+T, D).
    """

    def __init__(self, model: PgGPT2ForCausalLM) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, ...]:
        cache = DynamicCache(config=self.model.config)
        for layer, (key, value) in enumerate(past_key_values):
            cache.update(key, value, layer)
        logits = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        ).logits
        return (logits, *(tensor for layer in cache.layers for tensor in (layer.keys, layer.values)))


def _example_sizes(config) -> tuple[int, int, int]:
    """(batch, new tokens, past tokens) of the example inputs that the export traces.

    torch.export gives dynamic axes whose example sizes are equal one symbol ("duck sizing"), which would
    tie them together in the graph; the sizes also avoid the model's own, so that no shape check can
    equate an axis with a constant. Sizes 0 and 1 would be specialised.
    """
    n_inner = config.n_inner or 4 * config.n_embd
    model_sizes = {config.n_head, config.n_embd // config.n_head, config.n_embd, n_inner, config.vocab_size}
    model_sizes |= {config.n_layer, config.n_positions}
    for B, T, P in itertools.product((2, 3, 5, 7), (3, 5, 7, 11, 13), (6, 10, 14, 17, 19, 23)):
        sizes = {B, T, P, P + T}
        if len(sizes) == 4 and not sizes & model_sizes and config.n_positions >= P + T:
            return B, T, P
    raise UserError(f"n_positions={config.n_positions} is too short to export (at least 9 positions are needed)")


def export_model(model: PgGPT2ForCausalLM, path: Path, dtype: torch.dtype = torch.float32) -> None:
    """Write `model` (in eval mode) as an ONNX graph with KV-cache inputs and outputs to `path`."""
    config = model.config
    model = model.to(dtype).eval()
    heads, head_dim = config.n_head, config.n_embd // config.n_head
    B, T, P = _example_sizes(config)
    # Distinct tensors: torch.export would trace one input for a key and a value that are the same object.
    past = [tuple(torch.zeros(B, heads, P, head_dim, dtype=dtype) for _ in "kv") for _ in range(config.n_layer)]
    args = (
        torch.zeros(B, T, dtype=torch.long),
        torch.ones(B, P + T, dtype=torch.long),
        torch.arange(P, P + T).expand(B, T),
        past,
    )
    dynamic = torch.export.Dim.DYNAMIC
    dynamic_shapes = {
        "input_ids": {0: dynamic, 1: dynamic},
        "attention_mask": {0: dynamic, 1: dynamic},
        "position_ids": {0: dynamic, 1: dynamic},
        "past_key_values": [({0: dynamic, 2: dynamic},) * 2 for _ in range(config.n_layer)],
    }
    exporter_logger = logging.getLogger("torch.onnx")
    level = exporter_logger.level
    exporter_logger.setLevel(logging.ERROR)  # its notes about torchvision's operators concern other models
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation notes from torch.export's internals
            program = torch.onnx.export(
                OnnxDecoder(model),
                args,
                input_names=["input_ids", "attention_mask", "position_ids", *past_names(config.n_layer)],
                output_names=["logits", *past_names(config.n_layer, "present")],
                dynamic_shapes=dynamic_shapes,
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
            )
    finally:
        exporter_logger.setLevel(level)
    # One file while the protobuf fits (< 2 GB); larger models keep their weights in model.onnx.data.
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    program.save(path, external_data=parameter_bytes > 1_800_000_000)


def export_onnx(
    src: str | Path,
    dst: str | Path,
    dtype: str = "float32",
    overwrite: bool = False,
    revision: str | None = None,
) -> Path:
    """Export checkpoint `src` (pg_gpt2 or GPT-2, folder or Hub id) to the ONNX folder `dst`; returns `dst`.

    dtype: "float32", or "float16" (weights, cache and logits; half the size, logits to float16
    precision; onnxruntime runs it on the CPU and on GPUs). A non-empty `dst` is only replaced with
    `overwrite=True`.
    """
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype} is not available for ONNX; choose one of {', '.join(DTYPES)}")
    try:  # what torch.onnx's exporter imports, checked before minutes of work
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise UserError(f"--to onnx needs {err.name}: pip install 'pg-gpt2[onnx]'") from None
    dst = Path(dst)
    model, folder = load_source(src, "--to onnx", revision)
    check_destination(dst, folder, overwrite, "folder")
    with staged(dst, "folder") as staging:
        export_model(model, staging / ONNX_FILE, DTYPES[dtype])
        pg_config_to_gpt2(model.config).save_pretrained(staging)
        copy_side_files(folder, staging)
    return dst


__all__ = ["OnnxDecoder", "export_model", "export_onnx"]
