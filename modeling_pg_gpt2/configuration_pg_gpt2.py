"""Configuration of pg_gpt2: GPT-2's hyper-parameters under GPT-2's names.

This file is served as remote code from the Hub next to `modeling_pg_gpt2.py`, so it imports only
torch-free transformers APIs.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

# The four sizes OpenAI released, plus a CPU-sized model for demos and tests. Values that are not
# listed keep the class defaults (GPT-2 124M).
PRESETS: dict[str, dict[str, int]] = {
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},  # 124M
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},  # 355M
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280},  # 774M
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600},  # 1558M
    "tiny": {"n_layer": 4, "n_head": 4, "n_embd": 256, "n_positions": 256, "vocab_size": 8192},
}

# Activations GPT-2-style checkpoints use; all of them are in transformers' ACT2FN.
ACTIVATIONS = ("gelu_new", "gelu", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "quick_gelu")


class PgGPT2Config(PretrainedConfig):
    r"""Configuration for [`PgGPT2Model`] and [`PgGPT2ForCausalLM`].

    The attribute names are GPT-2's (`n_embd`, `n_layer`, ...), and the defaults are GPT-2 124M, so a
    `GPT2Config` dictionary loads unchanged. The usual transformers names (`hidden_size`,
    `num_attention_heads`, `num_hidden_layers`, `max_position_embeddings`) are aliases.

    Args:
        vocab_size: number of tokens; follow your tokenizer (`len(tokenizer)`).
        n_positions: longest sequence the model can attend over (learned positions).
        n_embd: width of the residual stream; must be divisible by `n_head`.
        n_layer: number of transformer blocks.
        n_head: number of attention heads.
        n_inner: width of the MLP; `None` means `4 * n_embd`.
        activation_function: MLP non-linearity, GPT-2 uses `"gelu_new"` (the tanh approximation).
        resid_pdrop, embd_pdrop, attn_pdrop: dropout on residual branches, embeddings, attention.
        layer_norm_epsilon: epsilon of every LayerNorm.
        initializer_range: std of the normal initialisation; residual projections use
            `initializer_range / sqrt(2 * n_layer)` (GPT-2 paper).
        bos_token_id, eos_token_id: `<|endoftext|>`; default `vocab_size - 1`, where GPT-2 keeps it
            (50256). Set them to your tokenizer's ids when it puts special tokens elsewhere.
        pad_token_id: padding id for batched generation, `None` in GPT-2.
        tie_word_embeddings: share `lm_head.weight` with `wte.weight`.
        use_cache: return a KV cache from inference forwards (never built while training).

    Example:
        >>> config = PgGPT2Config.from_preset("gpt2-medium", vocab_size=8192)
        >>> config.hidden_size, config.num_hidden_layers
        (1024, 24)
    """

    model_type = "pg_gpt2"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    def __init__(
        self,
        vocab_size: int = 50257,
        n_positions: int = 1024,
        n_embd: int = 768,
        n_layer: int = 12,
        n_head: int = 12,
        n_inner: int | None = None,
        activation_function: str = "gelu_new",
        resid_pdrop: float = 0.1,
        embd_pdrop: float = 0.1,
        attn_pdrop: float = 0.1,
        layer_norm_epsilon: float = 1e-5,
        initializer_range: float = 0.02,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_inner = n_inner
        self.activation_function = activation_function
        self.resid_pdrop = resid_pdrop
        self.embd_pdrop = embd_pdrop
        self.attn_pdrop = attn_pdrop
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self._validate()
        bos_token_id = vocab_size - 1 if bos_token_id is None else bos_token_id
        eos_token_id = vocab_size - 1 if eos_token_id is None else eos_token_id
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        # transformers releases differ in whether the base class keeps these as attributes.
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos_token_id, eos_token_id, pad_token_id
        self.tie_word_embeddings = tie_word_embeddings

    def _validate(self) -> None:
        """Reject values that would only fail later, deep inside torch, with one actionable message."""
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"PgGPT2Config: {name} must be a positive integer, got {value!r}.")
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner <= 0):
            raise ValueError(
                f"PgGPT2Config: n_inner must be a positive integer or None (= 4 * n_embd), got {self.n_inner!r}."
            )
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"PgGPT2Config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"choose n_head among the divisors of n_embd, e.g. {_nearest_divisor(self.n_embd, self.n_head)}."
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(
                    f"PgGPT2Config: {name} is a dropout probability and must be in [0, 1), got {value!r}."
                )
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"PgGPT2Config: unknown activation_function {self.activation_function!r}; "
                f"use one of {', '.join(ACTIVATIONS)}."
            )
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"PgGPT2Config: layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}.")
        if not self.initializer_range > 0:
            raise ValueError(f"PgGPT2Config: initializer_range must be > 0, got {self.initializer_range!r}.")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> PgGPT2Config:
        """Build a config from a named size and optional overrides.

        Presets: `gpt2` (124M), `gpt2-medium` (355M), `gpt2-large` (774M), `gpt2-xl` (1.5B) and `tiny`
        (4 layers, 256 wide, 256 positions, 8192 tokens: trains on a laptop CPU).

        Example: `PgGPT2Config.from_preset("gpt2-medium", vocab_size=8192)`.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})


def _nearest_divisor(n: int, target: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - target))


__all__ = ["PRESETS", "PgGPT2Config"]
