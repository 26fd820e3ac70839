"""The language-model head and its cross-entropy fused, chunk by chunk, so the (N, V) logits are never held whole.

`PgGPT2ForCausalLM` calls `fused_head_loss` for training steps (`skip_logits`); it returns what
transformers' `ForCausalLMLoss` returns on the logits. Why it pays, and by how much on which machine:
bench/RESULTS.md ("fused loss"). Part of the remote code: `modeling_pg_gpt2.py` imports it relatively,
so `save_pretrained` copies it next to the model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .model_inputs import out_of_range

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
    bad = None if torch.compiler.is_compiling() else out_of_range(targets, weight.shape[0])  # no branch in graphs
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
