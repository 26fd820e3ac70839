"""pg_gpt2: GPT-2 written from scratch as a transformers model.

The architecture is GPT-2's (Radford et al., 2019): learned token and position embeddings, a stack of
pre-LayerNorm blocks (causal self-attention, then a 4x-wide GELU MLP, each on a residual branch), a
final LayerNorm and a language-model head tied to the token embeddings. Parameter names are GPT-2's
(`wte`, `wpe`, `h.N.ln_1`, `attn.c_attn`, ...), but every projection is an `nn.Linear`, so GPT-2's
Conv1D weights are the transpose of ours (see `convert.py`).

Beside this file: `batched_matvec.py` (the `nn.Linear` used here, with a faster decoding product where a
measurement finds one), `fused_loss.py` (head and loss in one pass, for training), `model_inputs.py` (input
checks, the attention mask) and `task_heads.py` (classification, question answering). Measurements:
bench/RESULTS.md. All are remote code served from the Hub and run on the downloader's transformers: they use
interfaces that exist from 5.5 on and accept both names of the KV cache (`past_key_values`, `cache` from 5.24).

Shapes in comments: B batch, T new tokens, S = past + T attended tokens, C = n_embd, H = n_head,
D = C / H head size, V = vocab_size.
"""

from __future__ import annotations

import inspect
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .batched_matvec import BatchedMatvecLinear
from .configuration_pg_gpt2 import PgGPT2Config
from .fused_loss import fused_head_loss
from .model_inputs import attention_mask_for_layers, check_inputs, check_paged_cache

# transformers 5.24 renamed the KV-cache argument and output field from `past_key_values` to `cache`.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

# The task heads, in `task_heads.py` (which imports this file, not the other way round). Every auto-class save
# ships that file and these entries, so that a causal-LM folder also loads as any of the heads.
_HEADS = ("SequenceClassification", "TokenClassification", "QuestionAnswering")
TASK_HEADS = {f"AutoModelFor{head}": f"task_heads.PgGPT2For{head}" for head in _HEADS}
# Every Auto class the package registers, written into each saved config.json (transformers writes only the saved
# class's). Serving engines build the bare model with `AutoModel.from_config(config, trust_remote_code=True)`
# (vLLM's and SGLang's Transformers backends) and put their own head on it.
AUTO_MAP = {
    "AutoModel": "modeling_pg_gpt2.PgGPT2Model",
    "AutoModelForCausalLM": "modeling_pg_gpt2.PgGPT2ForCausalLM",
    **TASK_HEADS,
}


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
    None only where no key is masked (a single query); `PgGPT2Model` builds the causal mask.
    """
    S = key.shape[-2]
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # sdpa's form, when attentions are asked
        attention_mask = torch.where(attention_mask, 0.0, torch.finfo(query.dtype).min).to(query.dtype)
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
        self.c_attn = BatchedMatvecLinear(config.n_embd, 3 * config.n_embd)
        self.c_proj = BatchedMatvecLinear(config.n_embd, config.n_embd)
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
            # With the kwargs, as transformers' own models pass them: continuous batching's paged cache reads from
            # them where each packed sequence's tokens go and fills in (in place) what its attention needs; the
            # other caches ignore them.
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)

        dropout = self.config.attn_pdrop if self.training else 0.0
        # eager, sdpa (its fused causal kernel when there is no mask), flash, flex, kernels from the Hub...
        # Only eager materialises the attention probabilities, so asking for them routes there.
        attend: Callable = eager_attention_forward
        if not output_attentions:
            attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        y, attn_weights = attend(self, q, k, v, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs)
        y = y.reshape(B, T, C)  # (B, T, H, D) -> (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y)), attn_weights


class PgGPT2MLP(nn.Module):
    """Position-wise feed-forward: C -> n_inner (4C) -> C."""

    def __init__(self, config: PgGPT2Config) -> None:
        super().__init__()
        n_inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.c_fc = BatchedMatvecLinear(config.n_embd, n_inner)
        self.c_proj = BatchedMatvecLinear(n_inner, config.n_embd)
        self.c_proj.is_residual_projection = True
        # GPT-2's "gelu_new" is the tanh approximation of GELU; torch has it as one fused kernel,
        # several times faster than transformers' elementwise formula and equal to within 1e-7.
        gelu_new = config.activation_function == "gelu_new"
        self.act = nn.GELU(approximate="tanh") if gelu_new else ACT2FN[config.activation_function]
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
    """Weight initialisation, saving, and the capabilities transformers checks before loading or generating."""

    config_class = PgGPT2Config
    base_model_prefix = "transformer"
    _input_embed_layer = "wte"  # what get_input_embeddings / set_input_embeddings return and replace
    supports_gradient_checkpointing = True
    _no_split_modules = ["PgGPT2Block"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # OpenAI's checkpoints carry the causal mask as buffers (`h.0.attn.bias`, `h.0.attn.masked_bias`); we build
    # masks on the fly. Anchored: vLLM drops every checkpoint key these match (with re.search), not only unexpected
    # ones, and an unanchored `attn\.bias` would drop each `attn.c_attn.bias` and serve NaN.
    _keys_to_ignore_on_load_unexpected = [r"(?:^|\.)attn\.bias$", r"(?:^|\.)attn\.masked_bias$"]

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

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained`, plus `task_heads.py` and an `auto_map` entry for every Auto class
        (AUTO_MAP; entries the config already has are kept)."""
        heads = Path(inspect.getfile(PgGPT2PreTrainedModel)).with_name("task_heads.py")
        if self._auto_class is not None and heads.is_file():
            self.config.auto_map = {**AUTO_MAP, **(getattr(self.config, "auto_map", None) or {})}
            Path(save_directory).mkdir(parents=True, exist_ok=True)  # before a push_to_hub=True upload
            shutil.copy(heads, Path(save_directory) / heads.name)
        super().save_pretrained(save_directory, *args, **kwargs)


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

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
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
        cache / past_key_values: a `Cache` of earlier tokens' keys and values (`cache` from transformers 5.24 on).
        attention_mask: (B, S), non-zero (1) for tokens to attend to and 0 for padding; S = past + T. Or a
            ready (B, 1, T, S) mask (0 / dtype-min, or boolean True = attend).
        token_type_ids: (B, T) ids embedded through `wte` and added, as GPT-2 does (segment markers).
        position_ids: (B, T); by default counted from the attention mask, so left padding is right.
            Positions that restart at 0 inside a row mark packed documents (`DataCollatorWithFlattening`):
            without an attention mask, each document then attends only to itself.
        """
        cache = cache if cache is not None else past_key_values
        config = self.config
        output_attentions = bool(config.output_attentions if output_attentions is None else output_attentions)
        output_hidden_states = bool(
            config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )

        # A cache is for generation: building one in a training step only costs time and memory.
        use_cache = use_cache if use_cache is not None else config.use_cache
        if use_cache and cache is None and not (self.training and torch.is_grad_enabled()):
            cache = DynamicCache(config=config)
        paged = cache is not None and not isinstance(cache, Cache)
        if paged and not torch.compiler.is_compiling():
            check_paged_cache(cache, position_ids)
        # A StaticCache's length is a tensor. Continuous batching's paged cache holds many sequences of different
        # lengths packed in one row: it has no single length, and its caller passes the positions and the mask.
        past_length = cache.get_seq_length() if cache is not None and not paged else 0
        # The checks compare values (a StaticCache's length, the ids): inside a compiled graph (generate's
        # compiled decoding step) each would be a graph break, and generate has checked lengths already.
        if not torch.compiler.is_compiling():
            check_inputs(config, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids, past_length)
        B, T = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]

        packed = position_ids is not None and attention_mask is None and T > 1 and not paged
        if position_ids is None:
            if attention_mask is not None and attention_mask.ndim == 2:
                # Count only real tokens, so a left-padded prompt gets the positions it has alone. Any non-zero
                # value is a real token, as transformers' masks read it (a 2 or a 0.5 is not a count).
                position_ids = (attention_mask.bool().long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past_length, past_length + T, device=self.wte.weight.device)[None]

        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        hidden_states = inputs_embeds + self.wpe(position_ids)
        if token_type_ids is not None:
            hidden_states = hidden_states + self.wte(token_type_ids)
        hidden_states = self.drop(hidden_states)
        # One mask for all layers (None: plain causal attention, sdpa's fused kernel), see model_inputs.py.
        causal_mask = attention_mask_for_layers(
            config, attention_mask, position_ids if packed else None, cache, hidden_states, output_attentions
        )

        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.h:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, attn_weights = block(
                hidden_states, causal_mask, cache, output_attentions, position_ids=position_ids, **kwargs
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


class PgGPT2ForCausalLM(PgGPT2PreTrainedModel, GenerationMixin):
    """GPT-2 with its language-model head (tied to `wte`): next-token logits, loss, and `generate()`.

    In training mode with labels (every Trainer step) the loss comes from the fused head and loss
    (`fused_loss.py`) and `logits` is None; pass `skip_logits=False` to get logits there too. Evaluation
    runs in eval mode, where logits are always returned (`prediction_loss_only=False`, `compute_metrics`).

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
        self.lm_head = BatchedMatvecLinear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
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
        skip_logits: compute the loss from the hidden states chunk by chunk (`fused_head_loss`) and return
            `logits=None` (a shorter tuple with `return_dict=False`). Default: in training mode with labels and
            gradients on, unless `lm_head` was replaced or hooked (PEFT, accelerate), which it would bypass.
            Pass False for logits in training, or to train with a `loss_function` of your own.
        **kwargs: forwarded to the loss, e.g. the Trainer's `num_items_in_batch`, which makes
            gradient accumulation average over tokens exactly as one large batch would.
        """
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
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
                bypass = (
                    "bypassing the adapter or hooks on lm_head; leave skip_logits unset (or False) for this model."
                )
                raise ValueError(f"skip_logits=True computes the loss from lm_head's weight, {bypass}")
            loss = fused_head_loss(hidden_states, self.lm_head.weight, labels, **kwargs)
        else:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden_states[:, keep, :])  # (B, T', V)
            if labels is not None:
                if torch.compiler.is_compiling():
                    # Compiled, the loss gets a graph of its own, as in GPT2LMHeadModel. In one graph with the
                    # logits output, AOTAutograd would hand the backward a zero-filled (B, T, V) gradient for the
                    # logits whenever only the loss is used (cost: bench/RESULTS.md, torch.compile).
                    torch._dynamo.graph_break()
                loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)

        past = {_CACHE_FIELD: getattr(outputs, _CACHE_FIELD)}
        output = CausalLMOutputWithPast(
            loss, logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions, **past
        )
        return output if return_dict is not False else output.to_tuple()

    def _plain_head(self) -> bool:
        """Whether lm_head is the model's own layer without hooks, which the fused loss would bypass (an adapter
        that replaced the layer (PEFT), hooks for accelerate's device map or quantisation)."""
        head = self.lm_head
        return type(head) is BatchedMatvecLinear and not (
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
