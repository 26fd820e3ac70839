"""Inputs the model refuses with a clear error instead of failing deep inside torch."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    random_ids,
)


def test_too_long_input_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="65 tokens .* longer than the model's context n_positions=64"):
        tiny_model(random_ids(batch=1, length=65))


def test_generation_past_the_context_is_refused_before_it_starts(tiny_model):
    with pytest.raises(ValueError, match=r"reach 70, more than .* n_positions=64.*at most 54"):
        tiny_model.generate(random_ids(batch=1, length=10), max_new_tokens=60, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("bad_id", [211, 5000, -1])
def test_token_ids_outside_the_vocabulary(tiny_model, bad_id):
    ids = random_ids(batch=1, length=5)
    ids[0, 2] = bad_id
    with pytest.raises(ValueError, match=f"Token id {bad_id} is outside the vocabulary \\[0, 211\\)"):
        tiny_model(ids)


def test_attention_mask_of_the_wrong_shape(tiny_model):
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 7\) but the input needs \(2, 5\)"):
        tiny_model(random_ids(batch=2, length=5), attention_mask=torch.ones(2, 7, dtype=torch.long))
