"""generate() against GPT2LMHeadModel's: sampling settings, the caches, left-padded batches."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    gpt2_twin,
    left_padded,
    random_ids,
)


@pytest.mark.parametrize(
    "settings",
    [
        {"do_sample": False},
        {"do_sample": False, "num_beams": 3, "num_return_sequences": 2},
        {"do_sample": True, "top_k": 20, "top_p": 0.9, "temperature": 0.8},
    ],
    ids=["greedy", "beam", "sampling"],
)
def test_generate_equals_gpt2(tiny_model, settings):
    twin = gpt2_twin(tiny_model, "sdpa")
    prompt = random_ids(batch=2, length=6)
    kwargs = dict(max_new_tokens=12, pad_token_id=0, eos_token_id=None, **settings)
    torch.manual_seed(123)
    ours = tiny_model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    torch.manual_seed(123)
    theirs = twin.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    assert ours.tolist() == theirs.tolist()


def test_cached_static_and_uncached_generation_agree(tiny_model):
    prompt = random_ids(batch=1, length=7)
    kwargs = dict(max_new_tokens=15, do_sample=False, pad_token_id=0, eos_token_id=None)
    dynamic = tiny_model.generate(prompt, **kwargs)
    assert dynamic.tolist() == tiny_model.generate(prompt, use_cache=False, **kwargs).tolist()
    assert dynamic.tolist() == tiny_model.generate(prompt, cache_implementation="static", **kwargs).tolist()


def test_left_padded_batch_generates_like_each_prompt_alone(tiny_model):
    prompts = [random_ids(batch=1, length=n, seed=n)[0] for n in (4, 9, 6)]
    width = max(len(p) for p in prompts)
    ids, mask = left_padded(
        torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts]),
        [width - len(p) for p in prompts],
    )
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    batch = tiny_model.generate(ids, attention_mask=mask, **kwargs)
    for row, prompt in enumerate(prompts):
        alone = tiny_model.generate(prompt[None], **kwargs)[0, len(prompt) :]
        assert batch[row, width:].tolist() == alone.tolist()
