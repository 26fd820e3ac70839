"""The corpus as training blocks: tokenized with `datasets.map`, documents separated by `<|endoftext|>`, packed.

[`prepare_datasets`] loads the corpus (`corpus.py`), tokenizes it (batched, cached, `num_proc`) and packs
the token stream into `block_size` blocks as transformers' run_clm example does ([`_group_texts`]).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field

from datasets import Dataset, IterableDataset
from datasets.distributed import split_dataset_by_node
from transformers import (
    PreTrainedTokenizerBase,
    TrainingArguments,
)

from ..common.errors import UserError
from .corpus import CorpusArguments, load_corpus, stream_corpus
from .tokenizer import GPT2_CONTEXT


@dataclass
class DataTrainingArguments:
    """How the corpus becomes training blocks. The corpus itself is chosen by `CorpusArguments`."""

    block_size: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per training sequence; documents are packed into blocks of this size. "
            f"Default: the model's context (n_positions), at most {GPT2_CONTEXT}."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training blocks (debugging, quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation blocks (faster evaluations)."}
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Re-tokenize instead of reusing the datasets cache."}
    )
    prepared_data: str | None = field(
        default=None,
        metadata={
            "help": "Train on a folder made by prepare_data.py (tokenized and packed once, read memory-mapped) "
            "instead of a corpus; its block size is the default --block_size."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the corpus as a stream (datasets' IterableDataset), tokenized and packed on the fly as "
            "training goes: nothing is tokenized in advance or cached, so the corpus may be larger than the disk. "
            "Needs --max_steps. Resuming restores the stream's position from the checkpoint."
        },
    )
    streaming_validation_documents: int = field(
        default=100,
        metadata={
            "help": "With --streaming: validate on the first N documents of --validation_file or the dataset's "
            "validation split, or, without one, on the first N documents of the corpus, never trained on."
        },
    )


# Module-level functions bound with functools.partial: `datasets` pickles them by reference for its worker
# processes. Closures defined in this module were pickled by value and gained nothing from a second worker.
def default_block_size(n_positions: int) -> int:
    """`--block_size` when none is given: the model's context, at most GPT-2's (as transformers' run_clm.py)."""
    return min(n_positions, GPT2_CONTEXT)


def _tokenize(batch: dict[str, list[str]], tokenizer: PreTrainedTokenizerBase, eos_token_id: int) -> dict:
    encoded = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
    return {"input_ids": [ids + [eos_token_id] for ids in encoded]}


def _group_texts(batch: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    # Concatenate the documents of this batch (each ends with <|endoftext|>) and cut them into
    # blocks; the tail shorter than a block is dropped, as in transformers' run_clm example.
    stream = [token for ids in batch["input_ids"] for token in ids]
    usable = len(stream) // block_size * block_size
    blocks = [stream[i : i + block_size] for i in range(0, usable, block_size)]
    return {"input_ids": blocks, "labels": [list(block) for block in blocks]}


def prepare_datasets(
    corpus_args: CorpusArguments,
    data_args: DataTrainingArguments,
    training_args: TrainingArguments,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
):
    """Load the corpus and return it as packed blocks (`input_ids`, `labels`), split train/validation.

    Runs on the main process first so the other ranks reuse its `datasets` cache.
    """
    with training_args.main_process_first(desc="tokenizing and packing the corpus"):
        raw = load_corpus(corpus_args)
        num_proc = corpus_args.preprocessing_num_workers
        cache = not data_args.overwrite_cache
        tokenized = raw.map(
            functools.partial(_tokenize, tokenizer=tokenizer, eos_token_id=tokenizer.eos_token_id),
            batched=True,
            num_proc=num_proc,
            remove_columns=raw["train"].column_names,
            load_from_cache_file=cache,
            desc="Tokenizing",
        )
        packed = tokenized.map(
            functools.partial(_group_texts, block_size=block_size),
            batched=True,
            batch_size=1000,
            num_proc=num_proc,
            load_from_cache_file=cache,
            desc=f"Packing into blocks of {block_size} tokens",
        )
    # Without worker processes the fast tokenizer encoded on all cores with its own threads. Processes forked
    # from here on (data-loader workers) must not use those threads: say so, instead of tokenizers warning.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if training_args.do_eval and raw["validation"].num_rows == 0:
        raise UserError(
            "no validation text (--validation_split_percentage 0): pass --validation_file, a percentage above 0, "
            "or --do_eval false."
        )
    for split in ("train", "validation"):
        if (split == "train" and not training_args.do_train) or (split == "validation" and not training_args.do_eval):
            continue
        if len(packed[split]) == 0:
            tokens = sum(len(ids) for ids in tokenized[split]["input_ids"])
            raise UserError(
                f"the {split} split has {tokens} tokens, fewer than one block of {block_size}; "
                "lower --block_size or give it more text."
            )
    for split, limit in sample_limits(data_args).items():
        packed[split] = first_blocks(packed[split], limit)
    return packed


def sample_limits(data_args: DataTrainingArguments) -> dict[str, int | None]:
    """The most blocks each split is cut to (`--max_train_samples`, `--max_eval_samples`), `None` for all."""
    return {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}


def first_blocks(blocks: Dataset | IterableDataset, limit: int | None) -> Dataset | IterableDataset:
    """The first `limit` blocks of a split (a stream's first `limit`), or all of them when `limit` is `None`."""
    if limit is None:
        return blocks
    if isinstance(blocks, IterableDataset):
        return blocks.take(limit)
    return blocks.select(range(limit)) if len(blocks) > limit else blocks


def check_streaming_arguments(data_args: DataTrainingArguments, training_args: TrainingArguments) -> None:
    """Refuse `--streaming` flags that cannot work, before anything is loaded."""
    if training_args.do_train and training_args.max_steps <= 0:
        raise UserError("--streaming needs --max_steps N: a stream has no length to count epochs in.")
    count = data_args.streaming_validation_documents
    if count < 0 or (training_args.do_eval and count == 0):
        raise UserError(
            f"--streaming_validation_documents must be at least 1 to evaluate (got {count}); or pass --do_eval false."
        )


def streaming_datasets(
    corpus_args: CorpusArguments,
    data_args: DataTrainingArguments,
    training_args: TrainingArguments,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
) -> dict[str, Dataset | IterableDataset]:
    """`--streaming`: the training blocks as an endless stream of this rank's share, validation blocks in memory.

    The documents are read as they are needed (`corpus.stream_corpus`) and go through the same [`_tokenize`]
    and [`_group_texts`] as in [`prepare_datasets`] (packed 1000 documents at a time, so blocks cross document
    boundaries at `<|endoftext|>` exactly as there). Validation is the first `--streaming_validation_documents`
    documents of the validation source or, without one, of the corpus; those are then dropped from the
    training stream by content, so neither a held-out document nor a copy of it is ever trained on.

    The training stream repeats without end: the Trainer's `--max_steps` stops it, and every rank keeps
    stepping when its share runs out before another's (an epoch that ends on one rank only would leave
    the other waiting in a collective).
    """
    check_streaming_arguments(data_args, training_args)
    count = data_args.streaming_validation_documents
    train_documents, validation_source = stream_corpus(corpus_args)
    source = validation_source if validation_source is not None else train_documents
    held_out = [row["text"] for row in source.take(count)]
    if validation_source is None and training_args.do_train and len(held_out) < count:
        raise UserError(
            f"the corpus has only {len(held_out)} documents, all held out for validation by "
            f"--streaming_validation_documents {count}: lower it, or pass --validation_file."
        )
    tokenize = functools.partial(_tokenize, tokenizer=tokenizer, eos_token_id=tokenizer.eos_token_id)
    pack = functools.partial(_group_texts, block_size=block_size)
    validation = Dataset.from_dict({"text": held_out}).map(tokenize, batched=True, remove_columns=["text"])
    validation = validation.map(pack, batched=True, batch_size=1000)
    if training_args.do_eval and len(validation) == 0:
        raise UserError(
            f"the {count} validation documents hold fewer than one block of {block_size} tokens; "
            "raise --streaming_validation_documents or lower --block_size."
        )
    validation = first_blocks(validation, data_args.max_eval_samples)

    train = train_documents
    if validation_source is None:
        held_out_digests = frozenset(_digest(text) for text in held_out)
        train = train.filter(
            _not_held_out, input_columns="text", batched=True, fn_kwargs={"held_out": held_out_digests}
        )
    if training_args.world_size > 1:
        # Each rank reads its own documents (whole files when their number divides the world size) and
        # tokenizes only those: split_dataset_by_node spreads the reading and tokenizing over the ranks, where
        # accelerate's default for a stream (dispatch_batches) has rank 0 read and tokenize for everyone.
        # The training loader must then not shard it again (streaming.StreamingTrainer).
        train = split_dataset_by_node(train, rank=training_args.process_index, world_size=training_args.world_size)
    train = train.map(tokenize, batched=True, remove_columns=["text"]).map(pack, batched=True, batch_size=1000)
    train = first_blocks(train, data_args.max_train_samples)
    # Without an end, for the reason in the docstring; a `datasets` stream keeps its exact position through it.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # see prepare_datasets
    return {"train": train.repeat(None), "validation": validation}


def _digest(text: str) -> bytes:
    # A content digest, the same in every process (Python's str hash is salted per process).
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _not_held_out(texts: list[str], held_out: frozenset[bytes]) -> list[bool]:
    return [_digest(text) not in held_out for text in texts]


__all__ = [
    "DataTrainingArguments",
    "check_streaming_arguments",
    "default_block_size",
    "first_blocks",
    "prepare_datasets",
    "sample_limits",
    "streaming_datasets",
]
