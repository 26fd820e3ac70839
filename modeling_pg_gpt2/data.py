"""The corpus as training blocks: tokenized with `datasets.map`, documents separated by `<|endoftext|>`, packed.

[`prepare_datasets`] loads the corpus (`corpus.py`), tokenizes it (batched, cached, `num_proc`) and packs
the token stream into `block_size` blocks as transformers' run_clm example does ([`_group_texts`]).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

from transformers import (
    PreTrainedTokenizerBase,
    TrainingArguments,
)

from .cli import UserError
from .corpus import CorpusArguments, load_corpus


@dataclass
class DataTrainingArguments:
    """How the corpus becomes training blocks. The corpus itself is chosen by `CorpusArguments`."""

    block_size: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per training sequence; documents are packed into blocks of this size. "
            "Default: the model's context (n_positions), at most 1024."
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


# Module-level functions bound with functools.partial: `datasets` pickles them by reference for its worker
# processes. Closures defined in this module were pickled by value and gained nothing from a second worker.
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
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    for split, limit in limits.items():
        if limit is not None and len(packed[split]) > limit:
            packed[split] = packed[split].select(range(limit))
    return packed


__all__ = [
    "DataTrainingArguments",
    "prepare_datasets",
]
