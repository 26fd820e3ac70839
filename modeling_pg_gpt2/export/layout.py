"""The two layouts of the same GPT-2 weights: transformers' `GPT2LMHeadModel` and pg_gpt2.

The models compute the same function with the same parameter names. transformers' GPT-2 stores its four
projections as `Conv1D`, whose weight is (in, out), the transpose of the `nn.Linear` (out, in) that pg_gpt2
uses; everything else (embeddings, LayerNorms, biases) is the same, and the head is tied to `wte` in both.
The configs hold the same hyper-parameters under the same names ([`CONFIG_FIELDS`]). Converting a state
dict checks it against the config first: extra, missing or wrongly shaped weights are a one-line `UserError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from transformers import GPT2Config

from ..common.errors import UserError, few
from ..configuration_pg_gpt2 import PgGPT2Config
from ..modeling_pg_gpt2 import PgGPT2Model

# Weights GPT-2 keeps as Conv1D (in, out): transposed on the way between the formats.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


# The causal-mask buffers of OpenAI-format checkpoints (and transformers releases before 4.31).
MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(masked_)?bias")


# Hyper-parameters both configs hold under the same names.
CONFIG_FIELDS = (
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "activation_function",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "layer_norm_epsilon",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "tie_word_embeddings",
    "use_cache",
)


def gpt2_config_to_pg(config: GPT2Config) -> PgGPT2Config:
    """The `PgGPT2Config` of a transformers `GPT2Config`.

    Raises `UserError` for GPT-2 variants pg_gpt2 does not implement (cross-attention, attention scaled by
    the inverse layer index or not scaled at all) and for values pg_gpt2 rejects (e.g. an activation it
    does not offer). `reorder_and_upcast_attn` is accepted: it changes only the precision in which
    transformers' eager attention computes the same product, and pg_gpt2 already takes the softmax in fp32.
    """
    unsupported = [
        text
        for present, text in (
            (getattr(config, "add_cross_attention", False), "add_cross_attention=True (cross-attention layers)"),
            (getattr(config, "scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=True"),
            (not getattr(config, "scale_attn_weights", True), "scale_attn_weights=False (unscaled attention)"),
        )
        if present
    ]
    if unsupported:
        raise UserError(f"this GPT-2 checkpoint uses {', '.join(unsupported)}, which pg_gpt2 does not implement")
    try:
        return PgGPT2Config(**{name: getattr(config, name) for name in CONFIG_FIELDS})
    except ValueError as err:
        raise UserError(f"this GPT-2 config cannot be a pg_gpt2 config: {err}") from None


def pg_config_to_gpt2(config: PgGPT2Config) -> GPT2Config:
    """The transformers `GPT2Config` of a `PgGPT2Config` (same hyper-parameters, same names)."""
    return GPT2Config(**{name: getattr(config, name) for name in CONFIG_FIELDS})


def split_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """(transformer weights without the `transformer.` prefix and mask buffers, `lm_head.weight` or None)."""
    body: dict[str, torch.Tensor] = {}
    lm_head = None
    for name, tensor in state_dict.items():
        if name == "lm_head.weight":
            lm_head = tensor
            continue
        name = name.removeprefix("transformer.")
        if not MASK_BUFFER.fullmatch(name):
            body[name] = tensor
    return body, lm_head


def _transpose_conv1d(body: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`transformer.`-prefixed weights with the Conv1D ones transposed (the map is its own inverse)."""
    return {
        f"transformer.{name}": tensor.t().contiguous() if name.endswith(CONV1D_WEIGHTS) else tensor
        for name, tensor in body.items()
    }


def _expected_shapes(config: PgGPT2Config, gpt2_layout: bool) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight `config` describes (no `transformer.` prefix; `lm_head.weight` when untied)."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in PgGPT2Model(config).state_dict().items()}
    if gpt2_layout:
        expected = {name: shape[::-1] if name.endswith(CONV1D_WEIGHTS) else shape for name, shape in expected.items()}
    if not config.tie_word_embeddings:
        expected["lm_head.weight"] = (config.vocab_size, config.n_embd)
    return expected


def refuse_mismatch(
    config: PgGPT2Config,
    unexpected: Iterable[str],
    missing: Iterable[str],
    wrong_shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]],
) -> None:
    """Raise `UserError` naming what does not fit `config`: extra weights, then missing ones, then a wrong shape.

    Names are without the `transformer.` prefix; `wrong_shapes` maps a name to (its shape, the shape `config`
    implies).
    """
    unexpected = sorted(unexpected, key=_natural)
    if unexpected:
        raise UserError(f"the checkpoint has weights that are not part of a GPT-2 language model: {few(unexpected)}")
    missing = sorted(missing, key=_natural)
    if missing:
        raise UserError(f"the checkpoint lacks weights its config.json implies: {few(missing)}")
    for name, (shape, implied) in wrong_shapes.items():
        raise UserError(
            f"weight {name} has shape {shape} but config.json (vocab_size={config.vocab_size}, "
            f"n_positions={config.n_positions}, n_embd={config.n_embd}, n_inner={config.n_inner}) implies "
            f"{implied}: the config and the weights do not belong together"
        )


def check_weights(
    body: Mapping[str, torch.Tensor], lm_head: torch.Tensor | None, config: PgGPT2Config, gpt2_layout: bool
) -> None:
    """Raise `UserError` unless the weights are exactly those `config` describes, with their shapes."""
    expected = _expected_shapes(config, gpt2_layout)
    if not config.tie_word_embeddings and lm_head is not None:
        body = {**body, "lm_head.weight": lm_head}
    shapes = {name: tuple(tensor.shape) for name, tensor in body.items()}
    wrong = {name: (shapes[name], shape) for name, shape in expected.items() if shapes.get(name, shape) != shape}
    refuse_mismatch(config, set(shapes) - set(expected), set(expected) - set(shapes), wrong)


def gpt2_state_dict_to_pg(state_dict: Mapping[str, torch.Tensor], config: PgGPT2Config) -> dict[str, torch.Tensor]:
    """The `PgGPT2ForCausalLM` state dict of transformers' GPT-2 weights.

    Accepts `GPT2LMHeadModel` / `GPT2Model` state dicts and the original OpenAI layout (no `transformer.`
    prefix, `attn.bias` / `attn.masked_bias` buffers, which are dropped). Conv1D weights are transposed.
    With tied embeddings `lm_head.weight` is `wte`'s tensor, so the result loads with `strict=True`.
    Raises `UserError` when the weights do not match `config`.
    """
    body, lm_head = split_state_dict(state_dict)
    check_weights(body, lm_head, config, gpt2_layout=True)
    converted = _transpose_conv1d(body)
    converted["lm_head.weight"] = converted["transformer.wte.weight"] if config.tie_word_embeddings else lm_head
    return converted


def pg_state_dict_to_gpt2(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `GPT2LMHeadModel` state dict of pg_gpt2 weights (Conv1D weights transposed).

    `lm_head.weight` is taken from the input, or is `wte`'s tensor when the input omits it (tied
    embeddings), so the result loads into `GPT2LMHeadModel` with `strict=True`.
    """
    body, lm_head = split_state_dict(state_dict)
    converted = _transpose_conv1d(body)
    converted["lm_head.weight"] = lm_head if lm_head is not None else converted["transformer.wte.weight"]
    return converted


def _natural(name: str) -> list[int | str]:
    """Sort key that puts h.2 before h.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


__all__ = [
    "CONFIG_FIELDS",
    "CONV1D_WEIGHTS",
    "MASK_BUFFER",
    "check_weights",
    "gpt2_config_to_pg",
    "gpt2_state_dict_to_pg",
    "pg_config_to_gpt2",
    "pg_state_dict_to_gpt2",
    "refuse_mismatch",
    "split_state_dict",
]
