"""data.py: packing documents into training blocks (`prepare_datasets` runs end to end in test_run_clm.py)."""

from __future__ import annotations

from datasets import Dataset
from hypothesis import given
from hypothesis import strategies as st

from modeling_pg_gpt2.data.blocks import (
    DataTrainingArguments,
    _group_texts,
    default_block_size,
    first_blocks,
    sample_limits,
)

EOS = 0


def test_documents_are_concatenated_and_cut_into_blocks() -> None:
    batch = {"input_ids": [[1, 2, EOS], [3, 4, 5, 6, EOS], [7, EOS]]}
    packed = _group_texts(batch, block_size=4)
    # 10 tokens: two blocks of 4, across document boundaries; the tail [7, EOS] is dropped
    assert packed["input_ids"] == [[1, 2, EOS, 3], [4, 5, 6, EOS]]
    assert packed["labels"] == packed["input_ids"]
    assert packed["labels"][0] is not packed["input_ids"][0]  # a copy: the Trainer shifts labels, not inputs


def test_fewer_tokens_than_a_block_give_no_block() -> None:
    assert _group_texts({"input_ids": [[1, 2, EOS]]}, block_size=4) == {"input_ids": [], "labels": []}


@given(
    st.lists(st.lists(st.integers(1, 50), max_size=20).map(lambda ids: [*ids, EOS]), max_size=10),
    st.integers(1, 16),
)
def test_packing_keeps_the_token_stream_in_order(documents: list[list[int]], block_size: int) -> None:
    packed = _group_texts({"input_ids": documents}, block_size)
    stream = [token for document in documents for token in document]
    assert all(len(block) == block_size for block in packed["input_ids"])
    assert len(packed["input_ids"]) == len(stream) // block_size
    assert [token for block in packed["input_ids"] for token in block] == stream[
        : len(stream) // block_size * block_size
    ]


def test_max_samples_keep_the_first_blocks_of_each_split():
    blocks = Dataset.from_dict({"input_ids": [[i, i] for i in range(10)]})
    assert first_blocks(blocks, 3)["input_ids"] == [[0, 0], [1, 1], [2, 2]]
    assert first_blocks(blocks, None) is blocks and first_blocks(blocks, 50) is blocks
    stream = blocks.to_iterable_dataset(num_shards=2)
    assert [row["input_ids"] for row in first_blocks(stream, 4)] == [[0, 0], [1, 1], [2, 2], [3, 3]]
    limits = sample_limits(DataTrainingArguments(max_train_samples=7, max_eval_samples=2))
    assert limits == {"train": 7, "validation": 2}


def test_the_default_block_is_the_context_at_most_gpt2s():
    assert default_block_size(64) == 64 and default_block_size(1024) == 1024 and default_block_size(4096) == 1024
