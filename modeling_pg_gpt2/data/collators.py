"""Batches of packed blocks with document masking: attention and positions restart after every `<|endoftext|>`.

The packed blocks (`data.py`) hold documents back to back, each ended by `<|endoftext|>`. Batched as they
are, every token attends to the documents before it in the block and counts its position from the block's
start. [`DocumentMaskingCollator`] adds `position_ids` that restart at 0 on the token after each
`<|endoftext|>`; the model reads restarting positions as packed documents (as from transformers'
`DataCollatorWithFlattening`) and attends within each document only. So a document is trained as it is
generated: from position 0, seeing nothing before it. It works on the blocks alone, whichever way they
were made (tokenized here, streamed, or read from a prepared folder), and the Trainer uses it for training
and evaluation alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import default_data_collator


def document_position_ids(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Positions (B, T) that restart at 0 on the token after each `eos_token_id` and at each row's start.

    The end-of-text token belongs to the document it ends: `[a b EOS c d]` gets `[0 1 2 0 1]`. A block that
    starts in the middle of a document counts that document's tokens from 0, as if it started there.
    """
    B, T = input_ids.shape
    starts = torch.zeros_like(input_ids, dtype=torch.bool)  # (B, T): True where a document starts
    starts[:, 0] = True
    starts[:, 1:] = input_ids[:, :-1] == eos_token_id
    index = torch.arange(T, device=input_ids.device).expand(B, T)
    # The index of the latest start at or before each token, carried forward along the row.
    latest_start = torch.where(starts, index, 0).cummax(dim=1).values
    return index - latest_start


# The label that no loss or metric counts (transformers' and PyTorch's cross-entropy convention).
IGNORE_INDEX = -100


@dataclass
class DocumentMaskingCollator:
    """`default_data_collator` plus `position_ids` that restart after each `<|endoftext|>` (document masking).

    The label of each document's first token becomes -100 (ignored), as in `DataCollatorWithFlattening`: it
    would be predicted at the previous document's `<|endoftext|>`, which now sees only that document. With
    it, the loss of a block equals the loss of its documents run one by one.

    Example:
        >>> collate = DocumentMaskingCollator(eos_token_id=0)
        >>> collate([{"input_ids": [5, 6, 0, 7, 8], "labels": [5, 6, 0, 7, 8]}])["position_ids"]
        tensor([[0, 1, 2, 0, 1]])
    """

    eos_token_id: int

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = default_data_collator(list(features), return_tensors="pt")
        input_ids = batch["input_ids"]  # (B, T)
        position_ids = document_position_ids(input_ids, self.eos_token_id)
        batch["position_ids"] = position_ids
        if "labels" in batch:
            labels = batch["labels"].clone()
            labels[:, 1:][position_ids[:, 1:] == 0] = IGNORE_INDEX  # a row's first label is never a target
            batch["labels"] = labels
        return batch


__all__ = ["IGNORE_INDEX", "DocumentMaskingCollator", "document_position_ids"]
