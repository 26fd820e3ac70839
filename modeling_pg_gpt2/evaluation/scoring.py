"""The one computation of zero-shot evaluation: the log-likelihood of the last tokens of a sequence.

Perplexity with a sliding window, LAMBADA and multiple choice all reduce to requests `(token ids, n)`: the
summed log-probability of the last `n` tokens given those before, and whether each of them is the model's
argmax ([`score_requests`]). Requests are batched longest first (little padding) and right-padded, which a
causal model needs no attention mask for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from ..common.errors import UserError
from ..data.tokenizer import GPT2_CONTEXT
from ..generation.loader import context_length

# A request: token ids (a list or a 1-D tensor) and how many of the last ones are scored.
Request = tuple[Sequence[int] | torch.Tensor, int]


class Scores(NamedTuple):
    """What `score_requests` returns: per request, the summed log-probability of the scored tokens and
    whether each was the argmax; and the number of tokens that went through the model."""

    logprobs: list[float]
    greedy: list[bool]
    input_tokens: int


@torch.inference_mode()
def score_requests(
    model: torch.nn.Module,
    requests: Sequence[Request],
    batch_size: int = 8,
    pad_token_id: int = 0,
    desc: str | None = None,
) -> Scores:
    """For each request `(tokens, n)`: the summed log-probability of the last `n` tokens, each given all
    tokens before it, and whether greedy decoding would produce all `n` (each is the argmax).

    A request's `tokens` must fit the model: at most its context plus one (the last token is only a target).
    The lists are in the order of `requests`; the sums are accumulated in float64.
    """
    order = sorted(range(len(requests)), key=lambda i: len(requests[i][0]), reverse=True)
    logprobs = [0.0] * len(requests)
    greedy = [False] * len(requests)
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=None, leave=False):
        batch = order[start : start + batch_size]
        width = len(requests[batch[0]][0]) - 1  # the longest input of the batch
        inputs = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        rows, positions, targets = [], [], []
        for row, index in enumerate(batch):
            tokens, n = requests[index]
            tokens = torch.as_tensor(tokens, dtype=torch.long)
            length = len(tokens) - 1
            inputs[row, :length] = tokens[:-1]
            # Position t predicts token t + 1: the last n inputs predict the last n tokens.
            rows += [row] * n
            positions += range(length - n, length)
            targets.append(tokens[length - n + 1 :])
        rows_t = torch.tensor(rows, device=device)
        positions_t = torch.tensor(positions, device=device)
        targets_t = torch.cat(targets).to(device)
        # Only the positions that predict a target go through the vocabulary projection (B, T', V).
        first = int(positions_t.min())
        keep = torch.arange(first, int(positions_t.max()) + 1, device=device)
        logits = model(input_ids=inputs.to(device), logits_to_keep=keep).logits
        picked = logits[rows_t, positions_t - first].float()  # (M, V): one row per scored token
        token_logprobs = picked.log_softmax(dim=-1).gather(1, targets_t[:, None]).squeeze(1).double()
        misses = (picked.argmax(dim=-1) != targets_t).long()
        sums = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, rows_t, token_logprobs)
        missed = torch.zeros(len(batch), dtype=torch.long, device=device).index_add_(0, rows_t, misses)
        for index, total, miss in zip(batch, sums.tolist(), missed.tolist(), strict=True):
            logprobs[index] = total
            greedy[index] = miss == 0
    return Scores(logprobs, greedy, sum(len(tokens) - 1 for tokens, _ in requests))


def scoring_window(config, max_length: int | None = None) -> int:
    """The tokens the model reads at once when scoring: `max_length` (default: all), at most the model's context
    (`GPT2_CONTEXT` for a config that names none)."""
    context = context_length(config) or GPT2_CONTEXT
    return min(max_length or context, context)


def rolling_requests(token_ids: torch.Tensor, start_id: int, max_length: int, stride: int) -> list[Request]:
    """The sliding windows over a token stream that score every token once (see the module docstring).

    The stream is prefixed with `start_id`, the context of its first token. Each window scores the next
    `stride` tokens (fewer at the end) with as many tokens before them as fit in `max_length` inputs.
    """
    if not 1 <= stride <= max_length:
        raise UserError(f"--stride must be between 1 and the window's length {max_length}, got {stride}.")
    ids = torch.cat([torch.tensor([start_id], dtype=torch.long), token_ids])
    requests = []
    for first in range(1, len(ids), stride):
        end = min(first + stride, len(ids))
        requests.append((ids[max(0, end - 1 - max_length) : end], end - first))  # views, not copies
    return requests


def encode_pair(tokenizer, context: str, continuation: str, start_id: int) -> tuple[list[int], list[int]]:
    """Token ids of a context and of its continuation, the continuation's as it is tokenized after the context.

    As in lm-evaluation-harness: trailing spaces of the context move to the continuation (a byte-level BPE
    attaches a space to the word after it), the whole text is tokenized and the context's tokens split off.
    An empty context becomes `start_id` (<|endoftext|>).
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        return [start_id], tokenizer(continuation, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return context_ids, whole[len(context_ids) :]


def pair_request(context_ids: list[int], continuation_ids: list[int], max_length: int) -> Request:
    if not continuation_ids:
        raise UserError("a candidate (or a LAMBADA last word) is empty: every example needs text to score.")
    tokens = (context_ids + continuation_ids)[-(max_length + 1) :]  # keep the end when it is too long
    return tokens, min(len(continuation_ids), len(tokens) - 1)


__all__ = [
    "Request",
    "Scores",
    "encode_pair",
    "pair_request",
    "rolling_requests",
    "score_requests",
    "scoring_window",
]
