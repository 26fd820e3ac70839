"""pg_gpt2: GPT-2 written from scratch as a transformers model.

The architecture is GPT-2's (Radford et al., 2019): learned token and position embeddings, a stack of
pre-LayerNorm blocks (causal self-attention, then a 4x-wide GELU MLP, each on a residual branch), a
final LayerNorm and a language-model head tied to the token embeddings. Parameter names are GPT-2's
(`wte`, `wpe`, `h.N.ln_1`, `attn.c_attn`, ...), but every projection is an `nn.Linear` (`PgLinear`, the
same layer with a faster decoding path on some CPUs), so GPT-2's Conv1D weights are the transpose of
ours (see `convert.py`).

This file and `configuration_pg_gpt2.py` are the remote code served from the Hub. They run on the
transformers version of whoever downloads them, so they only use interfaces that exist from 5.5 on
and accept both names of the KV-cache argument (`past_key_values`, renamed `cache` in 5.24).

Shapes in comments: B batch, T new tokens, S = past + T attended tokens, C = n_embd, H = n_head,
D = C / H head size, V = vocab_size.
"""

from __future__ import annotations

import inspect
import math
import platform
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_pg_gpt2 import PgGPT2Config

# transformers 5.24 renamed the KV-cache argument and output field from `past_key_values` to `cache`.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
_MASK_CACHE_ARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def causal_mask_table(T: int, S: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(T, S) additive causal mask for T queries that are the last T of S keys: 0 where attended, dtype-min above."""
    return torch.full((T, S), torch.finfo(dtype).min, dtype=dtype, device=device).triu(diagonal=S - T + 1)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax(q k^T / sqrt(D) + mask) v; the reference every other implementation must match.

    attention_mask: additive (0 / dtype-min) or boolean (True = attend), broadcastable to (B, H, T, S);
    None means plain causal attention.
    """
    T, S = query.shape[-2], key.shape[-2]
    if attention_mask is None and T > 1:
        attention_mask = causal_mask_table(T, S, query.dtype, query.device)
    elif attention_mask is not None and attention_mask.dtype == torch.bool:  # sdpa's form, when attentions are asked
        attention_mask = torch.zeros_like(attention_mask, dtype=query.dtype).masked_fill_(
            ~attention_mask, torch.finfo(query.dtype).min
        )
    # (B, H, T, D) @ (B, H, D, S) -> (B, H, T, S)
    attn_weights = torch.matmul(query, key.transpose(-1, -2))
    if attention_mask is not None:  # mask + scaling * scores in one pass over the (B, H, T, S) scores
        attn_weights = torch.add(attention_mask[..., :S], attn_weights, alpha=scaling)
    else:  # a single query (decoding without padding) sees every key
        attn_weights = attn_weights * scaling
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(value.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)  # (B, H, T, D)
    return attn_output.transpose(1, 2), attn_weights  # (B, T, H, D), (B, H, T, S)


def _mkl_on_an_amd_cpu() -> bool:
    """True when torch multiplies with MKL on an AMD CPU, where MKL's matrix-vector kernel is slow."""
    if not torch.backends.mkl.is_available():
        return False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            vendor = cpuinfo.read(4096)  # the first processor's entry names the vendor
    except OSError:  # not Linux
        vendor = platform.processor()
    return "AuthenticAMD" in vendor


# Read once, at import: a module constant is also what a compiled graph can take as given.
_BATCHED_DECODING_PRODUCTS = _mkl_on_an_amd_cpu()


class PgLinear(nn.Linear):
    """`nn.Linear` (same weights, same state dict) with a faster path for decoding on MKL + AMD CPUs.

    Decoding multiplies each weight matrix by one row per sequence. For one row, MKL calls its
    matrix-vector kernel, which on AMD CPUs reads the weights at 7-12 GB/s on one core (AMD EPYC,
    2 cores); the same product written as a batch of two half-height matrices goes through MKL's
    batched matrix product instead: 2-4x faster, and spread over two cores. With up to 8 rows that
    only pays for a vocabulary head (out >= 8 x in). On Intel CPUs MKL's own kernel is fast and
    threaded (2x faster than this path on a 16-core Xeon), so there, on other devices and for
    everything else (training, prefill), this is `nn.Linear`. Measurements: bench/RESULTS.md.
    """

    def _batched_rows(self, x: torch.Tensor) -> int:
        """How many rows x has if the batched product pays for them, else 0 (nn.Linear's path)."""
        if not _BATCHED_DECODING_PRODUCTS or x.device.type != "cpu":  # first, and cheap: most calls stop here
            return 0
        if x.shape[-1] != self.in_features or not self.weight.is_contiguous():
            return 0
        rows = x.numel() // self.in_features
        head = self.out_features >= 8 * self.in_features
        return rows if rows == 1 or (head and 0 < rows <= 8) else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._batched_rows(x)
        if not rows:
            return F.linear(x, self.weight, self.bias)
        in_features, out_features = self.in_features, self.out_features
        even = out_features - out_features % 2  # GPT-2's 50257-token head leaves one row over
        halves = self.weight[:even].view(2, even // 2, in_features)  # (2, out/2, in)
        columns = x.reshape(1, rows, in_features).mT.expand(2, -1, -1)  # (2, in, rows), column-major as BLAS wants
        y = torch.bmm(halves, columns).view(even, rows).t()  # (2, out/2, rows) -> (rows, out)
        if even < out_features:
            y = torch.cat([y, x.reshape(rows, in_features) @ self.weight[even:].t()], dim=1)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)  # under autocast the product is bf16, as F.linear's would be
        return y.reshape(*x.shape[:-1], out_features)


def _out_of_range(ids: torch.Tensor, size: int) -> int | None:
    """An id in `ids` outside [0, size), or None if there is none; reading it synchronises with the device."""
    if ids.numel() == 0:
        return None
    low, high = (int(x) for x in torch.aminmax(ids))
    return low if low < 0 else high if high >= size else None


# Tokens per chunk of the fused loss below. A chunk's fp32 logits are 1024 x V floats (32 MiB at V = 8192,
# 196 MiB at GPT-2's 50257); smaller chunks cost 4-14% of the head's time at 124M on a CPU, where every
# chunk also reads and writes the whole (V, C) weight gradient.
_LOSS_CHUNK = 1024


class _FusedHeadLoss(torch.autograd.Function):
    """Cross-entropy of `hidden @ weight.T` against `targets`, without keeping the (N, V) logits.

    The forward pass works through the tokens chunk by chunk: logits, log-softmax, the loss, and the
    loss's gradients for `hidden` and `weight`, all while the chunk is still in cache; backward only
    scales the stored gradients. The products are the three the unfused head and loss compute, but the
    (N, V) logits, their log-softmax and their gradient are never allocated whole: less memory, and on
    a CPU no freshly mapped blocks that fault in page by page at every step (bench/RESULTS.md).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, valid, divisor, compute_dtype):
        # hidden (N, C), weight (V, C), targets (N,) with ignored tokens replaced by 0, valid (N,) bool,
        # divisor: what the summed loss is divided by. Products run in compute_dtype (bf16 under
        # autocast), the softmax, the loss and the weight gradient's sum over chunks in fp32, as
        # GPT2LMHeadModel's head and loss_function do.
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        # 1 / divisor for each label token and 0 for ignored ones, so that a batch without any label
        # token gets zero gradients (its loss is NaN, 0 / 0, as in transformers' loss).
        scale = torch.where(valid, 1.0 / divisor, 0.0)  # (N,) fp32
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(compute_dtype)
            grad_hidden = torch.empty_like(hidden) if need_hidden else None
            grad_weight = None  # (V, C) fp32, summed over the chunks
            total = hidden.new_zeros((), dtype=torch.float32)
            # Compiled, one chunk: a loop over B * T would pin it in the graph (a recompilation for every new
            # shape), and inductor fuses the softmax passes itself.
            chunks = (
                [slice(None)]
                if torch.compiler.is_compiling()
                else [slice(i, i + _LOSS_CHUNK) for i in range(0, hidden.shape[0], _LOSS_CHUNK)]
            )
            for chunk in chunks:
                h, t, s = hidden[chunk], targets[chunk], scale[chunk]  # (n, C), (n,), (n,)
                rows = torch.arange(h.shape[0], device=h.device)
                logp = torch.log_softmax((h.to(compute_dtype) @ w.t()).float(), dim=-1)  # (n, V)
                total -= torch.where(valid[chunk], logp[rows, t], 0.0).sum()
                if not (need_hidden or need_weight):
                    continue
                # d loss / d logits = (softmax - onehot(target)) * s, built in place of the log-probs; s is
                # applied in fp32 on the (n, C) side, which is n x C multiplications instead of n x V.
                d_logits = logp.exp_()
                d_logits[rows, t] -= 1
                d_logits = d_logits.to(compute_dtype)  # (n, V)
                if need_hidden:
                    grad_hidden[chunk] = (d_logits @ w).float() * s[:, None]
                if need_weight:
                    product = d_logits.t() @ (h.float() * s[:, None]).to(compute_dtype)  # (V, C)
                    grad_weight = product.float() if grad_weight is None else grad_weight.add_(product)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if need_weight else None)
        return total / divisor

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():  # backward(create_graph=True): the stored gradients have no graph to extend
            raise RuntimeError(
                "The fused loss has no second derivative; pass skip_logits=False to differentiate twice."
            )
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            grad_hidden * grad_loss if grad_hidden is not None else None,
            grad_weight * grad_loss if grad_weight is not None else None,
            None,
            None,
            None,
            None,
        )


def fused_head_loss(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """transformers' causal-LM loss of `hidden_states @ weight.T`, computed without materialising the logits.

    Same arguments and result as `ForCausalLMLoss` on the logits: labels are shifted inside unless
    `shift_labels` are given, `ignore_index` tokens count for nothing, and the summed loss is divided by
    `num_items_in_batch` when given (the Trainer's gradient accumulation), else by the label tokens.
    The gradients are computed in the forward pass (backward only scales them), so a forward whose loss
    is never backpropagated costs a backward too; it supports one backward, not second derivatives.
    """
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    targets = shift_labels.reshape(-1).to(hidden_states.device)  # (N,)
    valid = targets != ignore_index
    targets = targets.masked_fill(~valid, 0)
    bad = None if torch.compiler.is_compiling() else _out_of_range(targets, weight.shape[0])  # no branch in graphs
    if bad is not None:
        raise ValueError(
            f"Label {bad} is outside the vocabulary [0, {weight.shape[0]}) and is not ignore_index={ignore_index}; "
            "mark tokens to ignore with ignore_index."
        )
    divisor = num_items_in_batch if num_items_in_batch is not None else valid.sum()
    divisor = torch.as_tensor(divisor, dtype=torch.float32, device=hidden_states.device)
    device_type = hidden_states.device.type
    compute_dtype = (
        torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden_states.dtype
    )
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])  # (N, C)
    return _FusedHeadLoss.apply(hidden, weight, targets, valid, divisor, compute_dtype)


class PgGPT2Attention(nn.Module):
    """Multi-head causal self-attention with one fused q/k/v projection (GPT-2's `c_attn`)."""

    def __init__(self, config: PgGPT2Config, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx  # where this layer's keys/values live in the KV cache
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.scaling = self.head_dim**-0.5
        self.is_causal = True  # read by the sdpa / flash-attention interfaces
        self.c_attn = PgLinear(config.n_embd, 3 * config.n_embd)
        self.c_proj = PgLinear(config.n_embd, config.n_embd)
        self.c_proj.is_residual_projection = True  # scaled init, see _init_weights
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = hidden_states.shape
        # (B, T, 3C) -> three (B, T, H, D) -> (B, H, T, D)
        q, k, v = self.c_attn(hidden_states).view(B, T, 3, self.n_head, self.head_dim).unbind(dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:  # append this step's keys/values and attend over all S of them
            k, v = cache.update(k, v, self.layer_idx)

        implementation = self.config._attn_implementation
        dropout = self.config.attn_pdrop if self.training else 0.0
        # eager, sdpa (its fused causal kernel when there is no mask), flash, flex, kernels from the Hub...
        # Only eager materialises the attention probabilities, so asking for them routes there.
        attention_interface: Callable = eager_attention_forward
        if not output_attentions:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        y, attn_weights = attention_interface(
            self, q, k, v, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs
        )
        y = y.reshape(B, T, C)  # (B, T, H, D) -> (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y)), attn_weights


class PgGPT2MLP(nn.Module):
    """Position-wise feed-forward: C -> n_inner (4C) -> C."""

    def __init__(self, config: PgGPT2Config) -> None:
        super().__init__()
        n_inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.c_fc = PgLinear(config.n_embd, n_inner)
        self.c_proj = PgLinear(n_inner, config.n_embd)
        self.c_proj.is_residual_projection = True
        # GPT-2's "gelu_new" is the tanh approximation of GELU; torch has it as one fused kernel,
        # several times faster than transformers' elementwise formula and equal to within 1e-7.
        if config.activation_function == "gelu_new":
            self.act = nn.GELU(approximate="tanh")
        else:
            self.act = ACT2FN[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class PgGPT2Block(GradientCheckpointingLayer):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: PgGPT2Config, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = PgGPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = PgGPT2MLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # hidden_states stays positional: re-entrant activation checkpointing only tracks positional inputs.
        attn_output, attn_weights = self.attn(
            self.ln_1(hidden_states), attention_mask, cache=cache, output_attentions=output_attentions, **kwargs
        )
        hidden_states = hidden_states + attn_output
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states, attn_weights


class PgGPT2PreTrainedModel(PreTrainedModel):
    """Weight initialisation and the capabilities transformers checks before loading or generating."""

    config_class = PgGPT2Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PgGPT2Block"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # OpenAI's checkpoints carry the causal mask as buffers; we build masks on the fly.
    _keys_to_ignore_on_load_unexpected = [r"attn\.bias", r"attn\.masked_bias"]

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init: N(0, 0.02) everywhere, residual projections N(0, 0.02 / sqrt(2 * n_layer)).

        The scaled init keeps the residual stream's variance from growing with depth: each block adds
        two branches (attention, MLP) to it. `_init_weights` only visits modules with direct parameters,
        so the flag sits on the `c_proj` Linear itself.
        """
        super()._init_weights(module)
        if getattr(module, "is_residual_projection", False):
            std = self.config.initializer_range / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.weight, mean=0.0, std=std)


class PgGPT2Model(PgGPT2PreTrainedModel):
    """The bare transformer: token + position embeddings, `n_layer` blocks, final LayerNorm."""

    def __init__(self, config: PgGPT2Config) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([PgGPT2Block(config, layer_idx=i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.wte = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        r"""Run the transformer and return the final hidden states, shape (B, T, C).

        input_ids / inputs_embeds: (B, T) token ids, or (B, T, C) embeddings instead.
        cache / past_key_values: a `Cache` with the keys and values of earlier tokens (same object,
            named `cache` from transformers 5.24 on, `past_key_values` before).
        attention_mask: (B, S) with 1 for tokens to attend to and 0 for padding; S = past + T.
        position_ids: (B, T); by default counted from the attention mask, so left padding is right.
        """
        cache = cache if cache is not None else past_key_values
        output_attentions = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        output_hidden_states = bool(
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        B, T = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]

        # A cache is for generation: building one in a training step only costs time and memory.
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if use_cache and cache is None and not (self.training and torch.is_grad_enabled()):
            cache = DynamicCache(config=self.config)
        past_length = cache.get_seq_length() if cache is not None else 0  # a tensor for a StaticCache
        # The checks compare values (a StaticCache's length, the ids): inside a compiled graph (generate's
        # compiled decoding step) each would be a graph break, and generate has checked lengths already.
        if not torch.compiler.is_compiling():
            self._check_inputs(input_ids, attention_mask, int(past_length), B, T)

        if position_ids is None:
            if attention_mask is not None and attention_mask.ndim == 2:
                # Count only real tokens, so a left-padded prompt gets the positions it has alone.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past_length, past_length + T, device=self.wte.weight.device)[None]

        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        hidden_states = self.drop(inputs_embeds + self.wpe(position_ids))

        # One mask for all layers. Without padding (training on packed blocks, unpadded prompts, every
        # decoding step) causal attention needs no mask tensor: sdpa takes its fused is_causal path and
        # eager gets one (T, T) table. Padding, static caches, chunked prefill and the other kernels
        # (flash, flex, paged) get the mask transformers builds for them.
        if self._is_plain_causal(attention_mask, cache, past_length, T):
            causal_mask = None
            if T > 1 and (self.config._attn_implementation == "eager" or output_attentions):
                causal_mask = causal_mask_table(T, T, hidden_states.dtype, hidden_states.device)
        else:
            causal_mask = create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **{_MASK_CACHE_ARG: cache},
            )

        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.h:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, attn_weights = block(
                hidden_states,
                causal_mask,
                cache=cache,
                output_attentions=output_attentions,
                position_ids=position_ids,
                **kwargs,
            )
            if output_attentions:
                all_attentions += (attn_weights,)
        hidden_states = self.ln_f(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            **{_CACHE_FIELD: cache if use_cache else None},
        )
        return output if return_dict is not False else output.to_tuple()

    def _is_plain_causal(
        self, attention_mask: torch.Tensor | None, cache: Cache | None, past_length: int, T: int
    ) -> bool:
        """True when every query attends to exactly the keys before it: no padding, no fixed-size cache."""
        if self.config._attn_implementation not in ("eager", "sdpa"):
            return False
        # A StaticCache returns all its slots, empty ones included; T > 1 new tokens after a past need an offset.
        if cache is not None and (type(cache) is not DynamicCache or (past_length > 0 and T > 1)):
            return False
        if attention_mask is None:
            return True
        # Reading the mask's values synchronises with the device: compiled graphs take the general path.
        return attention_mask.ndim == 2 and not torch.compiler.is_compiling() and bool(attention_mask.all())

    def _check_inputs(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, past_length: int, B: int, T: int
    ) -> None:
        """Turn inputs that would fail deep inside torch (or silently read garbage) into clear errors."""
        n_positions = self.config.n_positions
        if past_length + T > n_positions:
            raise ValueError(
                f"Sequence of {past_length + T} tokens ({past_length} cached + {T} new) is longer than the "
                f"model's context n_positions={n_positions}; truncate the input or generate fewer tokens."
            )
        if (
            attention_mask is not None
            and attention_mask.ndim == 2
            and tuple(attention_mask.shape) != (B, past_length + T)
        ):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but the input needs "
                f"({B}, {past_length + T}) = (batch, cached + new tokens)."
            )
        bad = _out_of_range(input_ids, self.config.vocab_size) if input_ids is not None else None
        if bad is not None:
            raise ValueError(
                f"Token id {bad} is outside the vocabulary [0, {self.config.vocab_size}); the tokenizer and "
                "the model disagree: build the model with vocab_size=len(tokenizer)."
            )


class PgGPT2ForCausalLM(PgGPT2PreTrainedModel, GenerationMixin):
    """GPT-2 with its language-model head (tied to `wte`): next-token logits, loss, and `generate()`.

    Example:
        >>> from modeling_pg_gpt2 import PgGPT2Config, PgGPT2ForCausalLM
        >>> model = PgGPT2ForCausalLM(PgGPT2Config.from_preset("tiny"))
        >>> out = model(input_ids, labels=input_ids)  # a new model trains: out.loss, out.logits None
        >>> logits = model.eval()(input_ids).logits  # (B, T, V)
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: PgGPT2Config) -> None:
        super().__init__(config)
        self.transformer = PgGPT2Model(config)
        self.lm_head = PgLinear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        skip_logits: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        r"""Next-token logits (B, T, V) (None with `skip_logits`), and the mean cross-entropy when `labels` are given.

        labels: (B, T), usually `input_ids`; the shift by one happens inside. -100 is ignored.
        logits_to_keep: compute logits only for the last N positions (0 = all) or the given indices;
            generation needs just the last one, which saves a (B, T, V) matmul.
        skip_logits: compute the loss straight from the hidden states, chunk by chunk, and return no
            logits (`logits=None`, and a shorter tuple with `return_dict=False`): the (B, T, V) logits,
            their log-softmax and gradient are never held whole (`fused_head_loss`). Default: in training
            mode with labels and gradients on (every Trainer step), unless `lm_head` was replaced or
            hooked (a PEFT adapter, accelerate's device map), which the fused loss would bypass. Pass
            False for logits in training, or to train with a `loss_function` of your own.
        **kwargs: forwarded to the loss, e.g. the Trainer's `num_items_in_batch`, which makes
            gradient accumulation average over tokens exactly as one large batch would.
        """
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            cache=cache if cache is not None else past_key_values,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if skip_logits is None:
            skip_logits = self.training and labels is not None and torch.is_grad_enabled() and self._plain_head()
        logits = loss = None
        if skip_logits:
            if labels is None:
                raise ValueError("skip_logits=True returns only the loss, which needs labels; pass labels.")
            if not self._plain_head():
                raise ValueError(
                    "skip_logits=True computes the loss from lm_head's weight, bypassing the adapter or hooks "
                    "on lm_head; leave skip_logits unset (or False) for this model."
                )
            loss = fused_head_loss(hidden_states, self.lm_head.weight, labels, **kwargs)
        else:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden_states[:, keep, :])  # (B, T', V)
            if labels is not None:
                if torch.compiler.is_compiling():
                    # Compiled, the loss gets a graph of its own, as in GPT2LMHeadModel. In one graph with the
                    # logits output, AOTAutograd would hand the backward a zero-filled (B, T, V) gradient for the
                    # logits whenever only the loss is used: 3-4% of a compiled CPU step.
                    torch._dynamo.graph_break()
                loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)

        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{_CACHE_FIELD: getattr(outputs, _CACHE_FIELD)},
        )
        return output if return_dict is not False else output.to_tuple()

    def _plain_head(self) -> bool:
        """Whether lm_head is the model's own layer, without hooks.

        The fused loss multiplies by its weight itself, which would bypass an adapter that replaced the layer
        (PEFT) or hooks acting on it (accelerate's device map, quantisation).
        """
        head = self.lm_head
        return type(head) is PgLinear and not (
            hasattr(head, "_hf_hook") or head._forward_hooks or head._forward_pre_hooks
        )

    def _validate_generated_length(self, generation_config, input_ids_length, has_default_max_length):
        """Refuse before generating when prompt + new tokens cannot fit the learned positions."""
        super()._validate_generated_length(generation_config, input_ids_length, has_default_max_length)
        if generation_config.max_length > self.config.n_positions:
            raise ValueError(
                f"Prompt ({input_ids_length} tokens) plus new tokens reach {generation_config.max_length}, more than "
                f"the model's context n_positions={self.config.n_positions}; shorten the prompt or lower "
                f"max_new_tokens to at most {max(self.config.n_positions - input_ids_length, 0)}."
            )


__all__ = ["PgGPT2ForCausalLM", "PgGPT2Model", "PgGPT2PreTrainedModel"]
