"""What `PgGPT2Model` makes of its inputs before the first block: checks, and the attention mask all layers share.

`check_inputs` turns each mistake into one ValueError that names the expected shape, dtype or range; it reads
values (the largest id), which synchronises with the device, so callers skip it inside compiled graphs.
`attention_mask_for_layers` decides, in one place, which mask the attention implementation gets.

Part of the remote code, imported relatively by `modeling_pg_gpt2.py` and `fused_loss.py`.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import transformers
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask, find_packed_sequence_indices

# transformers 5.24 renamed create_causal_mask's `past_key_values` argument to `cache`.
_MASK_CACHE_ARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def out_of_range(ids: torch.Tensor, size: int) -> int | None:
    """An id in `ids` outside [0, size), or None if there is none; reading it synchronises with the device."""
    if ids.numel() == 0:
        return None
    low, high = (int(x) for x in torch.aminmax(ids))
    return low if low < 0 else high if high >= size else None


def check_inputs(
    config: PretrainedConfig,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    past_length: int | torch.Tensor,
) -> None:
    """Turn inputs that would fail deep inside torch (or silently read garbage) into one clear ValueError.

    The shapes: input_ids (B, T) integers or inputs_embeds (B, T, C); token_type_ids and position_ids (B or 1, T);
    attention_mask (B, S) or a ready 4-D mask (B or 1, 1 or H, T, >= S), with S = past_length + T.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
    if input_ids is not None and (input_ids.ndim != 2 or input_ids.is_floating_point() or input_ids.is_complex()):
        raise ValueError(
            f"input_ids must be a 2-D (batch, tokens) tensor of integer token ids (torch.long), got shape "
            f"{tuple(input_ids.shape)} and {input_ids.dtype}; add a batch dimension with ids[None]."
        )
    if inputs_embeds is not None and (inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != config.n_embd):
        raise ValueError(
            f"inputs_embeds has shape {tuple(inputs_embeds.shape)} but must be (batch, tokens, {config.n_embd})."
        )
    B, T = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
    past_length = int(past_length)  # a StaticCache's length is a tensor
    if B == 0 or T == 0:
        raise ValueError(f"The input is empty (shape ({B}, {T})); pass at least one token per row.")
    for name, ids in (("token_type_ids", token_type_ids), ("position_ids", position_ids)):
        if ids is not None and (ids.ndim != 2 or ids.shape[-1] != T or ids.shape[0] not in (1, B)):
            raise ValueError(f"{name} has shape {tuple(ids.shape)} but the input needs ({B}, {T}) = (batch, tokens).")
    S = past_length + T
    if position_ids is None and config.n_positions < S:
        raise ValueError(
            f"Sequence of {S} tokens ({past_length} cached + {T} new) is longer than the "
            f"model's context n_positions={config.n_positions}; truncate the input or generate fewer tokens."
        )
    bad = out_of_range(position_ids, config.n_positions) if position_ids is not None else None
    if bad is not None:
        raise ValueError(
            f"Position id {bad} is outside the model's context [0, n_positions={config.n_positions}); "
            "truncate the input (packed documents: restart the positions at 0 for each)."
        )
    if attention_mask is not None and attention_mask.ndim == 2 and tuple(attention_mask.shape) != (B, S):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the input needs "
            f"({B}, {S}) = (batch, cached + new tokens)."
        )
    if attention_mask is not None and attention_mask.ndim == 4:
        b, h, t, s = attention_mask.shape
        if b not in (1, B) or h not in (1, config.n_head) or t != T or s < S:
            raise ValueError(
                f"The 4-D attention_mask has shape {tuple(attention_mask.shape)} but the input needs "
                f"({B}, 1, {T}, {S}) = (batch, 1 or heads, new tokens, cached + new tokens)."
            )
    elif attention_mask is not None and attention_mask.ndim != 2:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; pass ({B}, {S}) = (batch, cached + new "
            f"tokens) with 1 for tokens to attend to, or a ready 4-D mask ({B}, 1, {T}, {S})."
        )
    for ids in (input_ids, token_type_ids):
        bad = out_of_range(ids, config.vocab_size) if ids is not None else None
        if bad is not None:
            raise ValueError(
                f"Token id {bad} is outside the vocabulary [0, {config.vocab_size}); the tokenizer and "
                "the model disagree: build the model with vocab_size=len(tokenizer)."
            )


def check_paged_cache(cache: Any, position_ids: torch.Tensor | None) -> None:
    """Refuse a paged cache (continuous batching: `generate_batch`, `transformers serve --continuous-batching`) that
    this transformers release hands over in another form, or without the positions of its packed sequences."""
    if "kwargs" not in inspect.signature(cache.update).parameters:
        raise ValueError(
            f"Continuous batching with pg_gpt2 needs transformers >= 5.24 (this is {transformers.__version__}, whose "
            "paged cache works another way); upgrade transformers, or generate with `generate()`."
        )
    if position_ids is None:
        raise ValueError(
            f"A {type(cache).__name__} packs many sequences into one row; pass their position_ids with the input."
        )


def attention_mask_for_layers(
    config: PretrainedConfig,
    attention_mask: torch.Tensor | None,
    packed_positions: torch.Tensor | None,
    cache: Cache | None,
    inputs_embeds: torch.Tensor,
    output_attentions: bool,
) -> torch.Tensor | Any | None:
    """The one attention mask all layers share, for `config._attn_implementation`.

    Plain causal attention (every query sees the keys before it: no padding, no packed documents; training
    on blocks, unpadded prompts, every decoding step) with eager or sdpa and a dynamic cache needs no mask
    tensor: sdpa takes its fused is_causal path (None), eager gets one (T, S) table, 0 where attended and
    dtype-min above the diagonal. Everything else gets the mask transformers builds for the implementation:
    padding, static caches, chunked prefill, flash, flex; and packed documents (`packed_positions`: position
    ids given without an attention mask, restarting at 0 for each document), which transformers only looks
    for without a cache, so an empty cache is left out of that call. A paged cache (continuous batching) comes
    with the mask its packed batch needs (None for flash attention), which is used as it is.
    """
    if cache is not None and not isinstance(cache, Cache):  # paged: continuous batching made the mask for its batch
        return attention_mask
    compiling = torch.compiler.is_compiling()  # reading values synchronises and would break the graph
    past_length = cache.get_seq_length() if cache is not None else 0  # a tensor for a StaticCache
    fresh = cache is None or (type(cache) is DynamicCache and past_length == 0)
    packed = (
        packed_positions is not None
        and fresh
        and (compiling or find_packed_sequence_indices(packed_positions) is not None)
    )
    T = inputs_embeds.shape[1]
    plain = (
        not packed
        and config._attn_implementation in ("eager", "sdpa")
        # A StaticCache returns all its slots, empty ones included; T > 1 new tokens after a past need an offset.
        and (cache is None or (type(cache) is DynamicCache and (past_length == 0 or T == 1)))
        and (attention_mask is None or (attention_mask.ndim == 2 and not compiling and bool(attention_mask.all())))
    )
    if plain:
        if T == 1 or not (config._attn_implementation == "eager" or output_attentions):
            return None
        S = int(past_length) + T
        table = torch.full((T, S), torch.finfo(inputs_embeds.dtype).min, device=inputs_embeds.device)
        return table.to(inputs_embeds.dtype).triu(diagonal=S - T + 1)  # (T, S)
    return create_causal_mask(
        config=config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=packed_positions,
        **{_MASK_CACHE_ARG: None if packed else cache},
    )
