"""data.py: packing documents into training blocks (`prepare_datasets` runs end to end in test_run_clm.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from modeling_pg_gpt2.data.blocks import _group_texts

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
