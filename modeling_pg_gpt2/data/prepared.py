"""Tokenize once, train many times: a corpus tokenized and packed into a folder that runs read memory-mapped.

`prepare_data.py` (`pg-gpt2-prepare`) runs [`prepare_corpus`]: it loads the corpus (`corpus.py`, same
train/validation split as run_clm.py), tokenizes it with the map-style path's `data._tokenize` and packs it
into `block_size` blocks as its `data._group_texts` does (the same blocks, in numpy; one `datasets.map` pass over
`--preprocessing_num_workers` processes, each writing its Arrow file of blocks straight into the folder).
`run_clm.py --prepared_data DIR` (on any number of processes and nodes) trains on that folder without touching
the corpus or the `datasets` cache ([`load_prepared`]), mapping the files into memory instead of reading them.
Documents stay separated by `<|endoftext|>` inside the blocks, exactly as in the map-style path, so
per-document masking can find their boundaries.

The folder:

    DIR/prepared.json        what it was made with: tokenizer fingerprint, block size, corpus, counts, files
    DIR/tokenizer/           a copy of that tokenizer (pass it as --tokenizer_name)
    DIR/train/, DIR/validation/    the blocks: Arrow files, one per worker, in order

Only `input_ids` is stored (`uint16` when the vocabulary fits, as nanoGPT and llm.c store GPT-2 tokens,
`int32` otherwise): 2 bytes a token where the map-style cache holds `input_ids` and `labels` as int64, 16
bytes a token. Reading adds `labels` (the same ids) on the fly. A run whose tokenizer or block size differs
from the folder's is refused in one line: the blocks would be silently wrong for it.

Memory is bounded by the batch, not the corpus: the workers read each batch's documents through memory maps
opened for that batch alone (a map kept open keeps every page read through it resident), and the blocks are
written once, where they stay (bench/bench_scale.py; bench/RESULTS.md, "Preparing a corpus at scale").
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, Features, Sequence, Value, concatenate_datasets
from datasets.table import ConcatenationTable
from transformers import PreTrainedTokenizerBase, TrainingArguments

from ..common.errors import UserError
from ..common.outputs import LOCK_FILE, TOKENIZER_FILE, check_not_an_input, check_output_dir, output_lock, staged
from .blocks import DataTrainingArguments, _tokenize, first_blocks, sample_limits
from .corpus import CorpusArguments, load_corpus
from .tokenizer import GPT2_CONTEXT, eos_token_id, load_tokenizer

logger = logging.getLogger(__name__)

PREPARED_FILE = "prepared.json"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 2  # 1: one save_to_disk folder (copied after the map)
PACK_BATCH_SIZE = 1000  # documents per `map` batch: the map-style path packs 1000 tokenized documents at a time
TOKENIZE_CHUNK = 100  # documents tokenized at once inside a batch: the blocks do not depend on it


@dataclass
class PrepareArguments:
    """Where the prepared folder goes and how the corpus is cut (the corpus is chosen by `CorpusArguments`)."""

    output_dir: str = field(metadata={"help": "The folder to write (train with run_clm.py --prepared_data DIR)."})
    tokenizer_name: str = field(
        metadata={"help": "The tokenizer: a folder made by train_tokenizer.py or a Hub id. Runs must use the same."}
    )
    block_size: int = field(
        default=GPT2_CONTEXT,
        metadata={"help": "Tokens per training sequence; runs on this folder use it (at most their n_positions)."},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace --output_dir if it already holds something."}
    )


@dataclass
class PreparedInfo:
    """The contents of `prepared.json`: what a prepared folder was made with and what it holds."""

    block_size: int
    tokenizer: str  # where the tokenizer came from (--tokenizer_name)
    tokenizer_fingerprint: str  # `tokenizer_fingerprint` of it
    eos_token_id: int
    vocab_size: int
    corpus: dict[str, Any]  # the CorpusArguments that chose and split the corpus
    documents: dict[str, int]  # per split
    blocks: dict[str, int]
    tokens: dict[str, int]  # in the blocks (the tail of each packing batch shorter than a block is dropped)
    token_dtype: str
    files: dict[str, list[str]]  # per split, the Arrow files of its blocks in order, relative to the folder
    format_version: int = FORMAT_VERSION


def _block_features(token_dtype: str) -> Features:
    """The one column a prepared folder stores: `input_ids`, one row a block."""
    return Features({"input_ids": Sequence(Value(token_dtype))})


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of everything that decides the token ids of a text: vocabulary, merges, pre-tokenizer, added tokens.

    Taken from the `tokenizers` serialization without its padding and truncation state, which transformers
    changes between calls and which does not change an encoding without padding or truncation.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{type(tokenizer).__name__} is not a fast tokenizer; prepared data needs a {TOKENIZER_FILE}")
    state = json.loads(backend.to_str())
    state.pop("padding", None)
    state.pop("truncation", None)
    state["eos_token_id"] = tokenizer.eos_token_id
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass
class _Documents:
    """How workers read a split's documents: its Arrow table in parts (one per file, pickled), and the row of
    the table each document is, in the split's order."""

    parts: list[bytes]  # datasets pickles a memory-mapped table as its path (an in-memory one, by value)
    starts: np.ndarray  # (parts,) the first row of each part
    rows: np.ndarray  # (documents,)

    @classmethod
    def of(cls, documents: Dataset) -> _Documents:
        data = documents.data
        blocks = data.blocks if isinstance(data, ConcatenationTable) else [[data]]  # one row of blocks per file
        parts = [ConcatenationTable.from_blocks([row]) for row in blocks]
        starts = np.cumsum([0] + [part.num_rows for part in parts[:-1]])
        # Dropping empty documents and splitting off validation select rows through an index map rather than
        # copy them: `_indices` is private, and the only way to the rows without copying the corpus.
        indices = documents._indices
        rows = np.arange(documents.num_rows) if indices is None else indices.column(0).to_numpy()
        return cls([pickle.dumps(part) for part in parts], starts, rows)

    def texts(self, rows: list[int]) -> list[str]:
        """The `text` of `rows`, read through memory maps of the files that hold them, opened for this call alone.

        A worker that kept one map open over its shard would keep every page it read resident, so its memory
        would grow with the corpus; these maps close when the call returns, and opening a file walks its record
        batches, so only the files that hold the rows are opened. The rows of a batch are one stretch of the
        files (`corpus.split_documents` keeps the corpus's order): a page fault maps the page cache's whole
        folio around the page, so rows from all over the files would map most of them (bench/RESULTS.md).
        """
        rows = np.asarray(rows, dtype=np.int64)
        owners = np.searchsorted(self.starts, rows, side="right") - 1  # (rows,) the part that holds each row
        texts: list[str] = [""] * len(rows)
        for part in np.unique(owners).tolist():
            chunks = pickle.loads(self.parts[part]).table.column("text").chunks  # one per record batch
            ends = np.cumsum([len(chunk) for chunk in chunks])
            picked = np.flatnonzero(owners == part)  # positions in `rows` of the rows this part holds
            local = rows[picked] - self.starts[part]
            in_chunk = np.searchsorted(ends, local, side="right")
            for i, row, chunk in zip(picked.tolist(), local.tolist(), in_chunk.tolist(), strict=True):
                texts[i] = chunks[chunk][row - (ends[chunk] - len(chunks[chunk]))].as_py()
        return texts


def _tokenize_and_pack(
    batch: dict[str, list[int]],
    documents: _Documents,
    tokenizer: PreTrainedTokenizerBase,
    eos_token_id: int,
    block_size: int,
    dtype: str,
) -> dict[str, np.ndarray]:
    # The map-style path's two passes in one: tokenizing is one row per document, so packing each batch of
    # PACK_BATCH_SIZE documents right away cuts the same blocks as `data._group_texts` packing a tokenized copy
    # batch by batch (tests/data/test_prepared.py checks they are equal). Memory is what a worker holds, so the
    # batch is tokenized TOKENIZE_CHUNK documents at a time (the tokenizer's encodings of a whole batch are
    # several times its ids) and packed as one array of `dtype` (2 bytes a token instead of a Python int).
    texts = documents.texts(batch["row"])
    pieces = [
        np.asarray(ids, dtype=dtype)
        for start in range(0, len(texts), TOKENIZE_CHUNK)
        for ids in _tokenize({"text": texts[start : start + TOKENIZE_CHUNK]}, tokenizer, eos_token_id)["input_ids"]
    ]
    stream = np.concatenate(pieces) if pieces else np.empty(0, dtype=dtype)
    usable = len(stream) // block_size * block_size  # the shorter tail is dropped, as in _group_texts
    return {"input_ids": stream[:usable].reshape(-1, block_size)}  # (blocks, block_size)


def _pack_split(
    documents: Dataset, folder: Path, num_proc: int | None, features: Features, description: str, **pack: Any
) -> Dataset:
    """`documents` tokenized and packed into blocks written to `folder` (one Arrow file per worker)."""
    source = _Documents.of(documents)
    # The map runs over the documents' row numbers, cut into shards and batches exactly as the map-style path
    # cuts the documents themselves, so the batches (and the blocks) are the same.
    positions = Dataset.from_dict({"row": source.rows})
    folder.mkdir()
    return positions.map(
        functools.partial(_tokenize_and_pack, documents=source, **pack),
        batched=True,
        batch_size=PACK_BATCH_SIZE,
        num_proc=num_proc if num_proc and len(positions) > 0 else None,
        remove_columns=["row"],
        features=features,
        cache_file_name=str(folder / "blocks.arrow"),
        desc=description,
    )


def prepare_corpus(corpus_args: CorpusArguments, args: PrepareArguments) -> PreparedInfo:
    """Tokenize and pack the corpus into `args.output_dir`; returns what `prepared.json` records.

    The folder appears only once complete (written beside it, then renamed). The blocks equal those of
    `data.prepare_datasets` for the same corpus, tokenizer, block size and `preprocessing_num_workers`.
    The folder is locked while it is written, and may not be (or hold, or lie inside) one of the inputs.
    """
    if args.block_size < 2:
        raise UserError(f"--block_size must be at least 2, got {args.block_size}.")
    output_dir = check_output_dir(args.output_dir, overwrite_flag=None)  # a file, or not writable
    inputs = {
        "--train_file": corpus_args.train_file,
        "--validation_file": corpus_args.validation_file,
        "--dataset_name": corpus_args.dataset_name,
        "--tokenizer_name": args.tokenizer_name,
    }
    check_not_an_input(output_dir, "--output_dir", inputs)
    with output_lock(output_dir):  # a second prepare_data.py on the folder is refused while this one writes
        overwrite_flag = None if args.overwrite_output_dir else "--overwrite_output_dir"
        check_output_dir(output_dir, overwrite_flag=overwrite_flag, ignore=(LOCK_FILE,))
        return _prepare(corpus_args, args, output_dir)


def _prepare(corpus_args: CorpusArguments, args: PrepareArguments, output_dir: Path) -> PreparedInfo:
    tokenizer = load_tokenizer(args.tokenizer_name)
    eos_token_id(tokenizer, args.tokenizer_name)
    fingerprint = tokenizer_fingerprint(tokenizer)  # before any encoding
    raw = load_corpus(corpus_args)
    num_proc = corpus_args.preprocessing_num_workers
    token_dtype = "uint16" if len(tokenizer) <= 2**16 else "int32"
    features = _block_features(token_dtype)
    pack = dict(
        tokenizer=tokenizer, eos_token_id=tokenizer.eos_token_id, block_size=args.block_size, dtype=token_dtype
    )
    with staged(output_dir, "folder") as staging:
        packed = {
            split: _pack_split(
                documents,
                staging / split,
                num_proc,
                features,
                f"Tokenizing and packing {split} into blocks of {args.block_size}",
                **pack,
            )
            for split, documents in raw.items()
        }
        if len(packed["train"]) == 0:
            raise UserError(
                f"the train split holds fewer than one block of {args.block_size} tokens; "
                "lower --block_size or give it more text."
            )
        tokenizer.save_pretrained(staging / TOKENIZER_DIR)
        corpus = {key: value for key, value in asdict(corpus_args).items() if value is not None}
        corpus.pop("preprocessing_num_workers", None)
        info = PreparedInfo(
            block_size=args.block_size,
            tokenizer=args.tokenizer_name,
            tokenizer_fingerprint=fingerprint,
            eos_token_id=tokenizer.eos_token_id,
            vocab_size=len(tokenizer),
            corpus=corpus,
            documents={split: raw[split].num_rows for split in raw},
            blocks={split: len(blocks) for split, blocks in packed.items()},
            tokens={split: len(blocks) * args.block_size for split, blocks in packed.items()},
            token_dtype=token_dtype,
            files={
                split: [
                    Path(f["filename"]).resolve().relative_to(staging.resolve()).as_posix() for f in blocks.cache_files
                ]
                for split, blocks in packed.items()
            },
        )
        del packed  # memory maps of the files being renamed into place
        (staging / PREPARED_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
    return info


def read_prepared_info(path: str | os.PathLike) -> PreparedInfo:
    """The `prepared.json` of a prepared folder; a one-line `UserError` for anything else."""
    folder = Path(path)
    record = folder / PREPARED_FILE
    if not folder.is_dir():
        raise UserError(f"--prepared_data {folder}: no such folder; make one with prepare_data.py")
    if not record.is_file():
        raise UserError(f"--prepared_data {folder} holds no {PREPARED_FILE}: it was not made by prepare_data.py")
    try:
        values = json.loads(record.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"--prepared_data {folder}: cannot read {PREPARED_FILE} ({err}); prepare it again") from None
    version = values.get("format_version") if isinstance(values, dict) else None
    if version != FORMAT_VERSION:  # checked first: an older record lacks the fields this version reads
        raise UserError(
            f"--prepared_data {folder} has format {version}; this version reads {FORMAT_VERSION}: prepare it again"
        )
    try:
        info = PreparedInfo(**values)
    except TypeError as err:
        raise UserError(f"--prepared_data {folder}: cannot read {PREPARED_FILE} ({err}); prepare it again") from None
    return info


def _with_labels(batch: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
    # Causal LM labels are the inputs (the model shifts them): added when read, not stored twice.
    return {"input_ids": batch["input_ids"], "labels": batch["input_ids"]}


def load_prepared(
    path: str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    data_args: DataTrainingArguments,
    training_args: TrainingArguments,
) -> DatasetDict:
    """A prepared folder as training blocks (`input_ids`, `labels`), memory-mapped, split train/validation.

    Refuses in one line a folder made with another tokenizer or block size than the run's.
    """
    info = read_prepared_info(path)
    folder = Path(path)
    if info.tokenizer_fingerprint != tokenizer_fingerprint(tokenizer):
        raise UserError(
            f"--prepared_data {folder} was tokenized with another tokenizer ({info.tokenizer}); pass "
            f"--tokenizer_name {folder / TOKENIZER_DIR} or prepare the corpus again with this one"
        )
    if info.block_size != block_size:
        raise UserError(
            f"--prepared_data {folder} holds blocks of {info.block_size} tokens, not {block_size}; pass "
            f"--block_size {info.block_size} or prepare the corpus again with --block_size {block_size}"
        )
    if training_args.do_eval and info.blocks.get("validation", 0) == 0:
        raise UserError(
            f"--prepared_data {folder} has no validation blocks: prepare it with validation text, "
            "or pass --do_eval false"
        )
    packed = DatasetDict({split: _open_blocks(folder, files, info.token_dtype) for split, files in info.files.items()})
    for split, limit in sample_limits(data_args).items():
        packed[split] = first_blocks(packed[split], limit)
    return DatasetDict({split: dataset.with_transform(_with_labels) for split, dataset in packed.items()})


def _open_blocks(folder: Path, files: list[str], token_dtype: str) -> Dataset:
    """A split's blocks from its Arrow files, memory-mapped: no rank reads the whole corpus into memory."""
    if not files:  # an empty split (--validation_split_percentage 0): the map wrote nothing
        return Dataset.from_dict({"input_ids": []}, features=_block_features(token_dtype))
    try:
        parts = [Dataset.from_file(str(folder / name)) for name in files]
    except (OSError, ValueError) as err:
        raise UserError(f"--prepared_data {folder}: cannot read its blocks ({err}); prepare it again") from None
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def format_report(info: PreparedInfo, output_dir: str | os.PathLike) -> str:
    """What `prepare_data.py` prints: the counts and the flag that trains on the folder."""
    splits = ", ".join(
        f"{name}: {info.documents[name]:,} documents -> {info.blocks[name]:,} blocks ({info.tokens[name]:,} tokens)"
        for name in info.blocks
    )
    return (
        f"Prepared {splits}; blocks of {info.block_size} tokens stored as {info.token_dtype} in {output_dir}.\n"
        f"Train on it with: python run_clm.py --prepared_data {output_dir} --tokenizer_name "
        f"{Path(output_dir) / TOKENIZER_DIR} --block_size {info.block_size} ..."
    )


__all__ = [
    "PREPARED_FILE",
    "PrepareArguments",
    "PreparedInfo",
    "format_report",
    "load_prepared",
    "prepare_corpus",
    "read_prepared_info",
    "tokenizer_fingerprint",
]
