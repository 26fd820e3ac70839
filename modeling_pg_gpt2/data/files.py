"""Local corpus files as documents: `--train_file` / `--validation_file` given as a file, a folder or a glob.

`.txt` and `.md` files are one document each, read byte-exact (no newline translation); `.json`/`.jsonl`,
`.csv` and `.parquet` files hold one document per row in `--text_column`. Every way a user's file can be
unreadable (not UTF-8, malformed JSON, a missing or non-text column, mixed kinds) is one `UserError` that
names the file and, where it can, the line and column or the byte offset.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
from datasets import Dataset, Features, IterableDataset, Value, load_dataset
from datasets.fingerprint import Hasher

from ..common.errors import UserError, first_line, root_cause

TEXT_SUFFIXES = (".txt", ".md")


# File suffix -> the `datasets` builder that reads it. Text files are read by `read_documents`.
FILE_FORMATS = {
    ".txt": "text",
    ".md": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}


TEXT_FEATURES = Features({"text": Value("string")})


def load_files(spec: str, flag: str, column: str = "text", num_proc: int | None = None) -> Dataset:
    """Documents from a file, folder or glob: text files one document each, tables one per row."""
    files = resolve_files(spec, flag)
    fmt = file_format(files, flag, spec)
    if fmt == "text":
        return read_documents(files, flag, spec, num_proc)
    try:
        table = load_dataset(
            fmt,
            data_files=[str(path) for path in files],
            split="train",
            num_proc=num_proc,
        )
    except Exception as err:  # a parse error anywhere in the user's files: report it in one line
        raise_if_not_utf8(files)
        if fmt == "json":
            raise_json_error(files)
        raise UserError(f"cannot read {flag} {spec} as {fmt}: {first_line(root_cause(err), named=True)}") from None
    documents = text_column(table, column, f"{flag} {spec}")
    # pyarrow's JSON reader accepts invalid UTF-8 and only fails when a value is read back.
    for chunk in read_column(table, column):
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid:
            raise_if_not_utf8(files)
            raise UserError(f"{flag} {spec} holds text that is not valid UTF-8") from None
    return documents


def stream_files(spec: str, flag: str, column: str = "text") -> IterableDataset:
    """Documents from a file, folder or glob as a stream: text files one document each, tables one per row."""
    files = resolve_files(spec, flag)
    fmt = file_format(files, flag, spec)
    paths = [str(path) for path in files]
    if fmt == "text":  # byte-exact, as `read_documents`; one shard per file
        return IterableDataset.from_generator(generate_documents, features=TEXT_FEATURES, gen_kwargs={"paths": paths})
    try:
        table = load_dataset(fmt, data_files=paths, split="train", streaming=True)
    except Exception as err:  # as in load_files: the user's files, reported in one line
        raise UserError(f"cannot read {flag} {spec} as {fmt}: {first_line(root_cause(err), named=True)}") from None
    return text_column(table, column, f"{flag} {spec}")


def read_column(table: Dataset, column: str) -> Iterator[pa.Array]:
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


def file_format(files: Sequence[Path], flag: str, spec: str) -> str:
    """The `datasets` builder that reads `files` (`FILE_FORMATS`); they must all be of one kind."""
    suffixes = {path.suffix.lower() for path in files}
    formats = {FILE_FORMATS[suffix] for suffix in suffixes}
    if len(formats) > 1:
        raise UserError(
            f"{flag} {spec} mixes file types ({', '.join(sorted(suffixes))}); "
            "point it at files of one kind, e.g. a glob like 'essays/*.txt'"
        )
    return formats.pop()


def resolve_files(spec: str, flag: str) -> list[Path]:
    """The files a path, folder or glob names, sorted; hidden files and folders are skipped."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() not in FILE_FORMATS:
            raise UserError(f"{flag} {spec}: unsupported file type; use {supported_formats()}")
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
            raise UserError(f"{flag} {spec}: the folder holds no {supported_formats()} files")
        return files
    if glob.has_magic(spec):
        matches = sorted(Path(match) for match in glob.glob(os.path.expanduser(spec), recursive=True))
        files = [file for file in matches if file.is_file() and file.suffix.lower() in FILE_FORMATS]
        if not files:
            raise UserError(f"{flag} {spec}: no {supported_formats()} file matches this pattern")
        return files
    raise UserError(f"{flag} {spec}: no such file or folder")


def supported_formats() -> str:
    return "/".join(FILE_FORMATS)


def read_documents(files: Sequence[Path], flag: str, spec: str, num_proc: int | None) -> Dataset:
    """Text files as documents, byte-exact (the `text` builder would translate \\r\\n to \\n).

    Built with `Dataset.from_generator`, so it is cached by `datasets` under a fingerprint of the
    paths, sizes and modification times, and read with `num_proc` processes.
    """
    stats = [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    fingerprint = Hasher.hash(["pg_gpt2.corpus.text_documents/1", stats])
    try:
        return Dataset.from_generator(
            generate_documents,
            features=TEXT_FEATURES,
            gen_kwargs={"paths": [str(path) for path in files]},
            num_proc=num_proc if num_proc and num_proc > 1 and len(files) > 1 else None,
            fingerprint=fingerprint,
        )
    except Exception as err:  # worker processes lose the exception type: find the culprit ourselves
        raise_if_not_utf8(files)
        raise UserError(f"cannot read {flag} {spec}: {first_line(root_cause(err), named=True)}") from None


def generate_documents(paths: list[str]):
    for path in paths:
        yield {"text": Path(path).read_bytes().decode("utf-8")}


def raise_if_not_utf8(files: Sequence[Path]) -> None:
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


def raise_json_error(files: Sequence[Path]) -> None:
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


def text_column(dataset: Dataset | IterableDataset, column: str, source: str) -> Dataset | IterableDataset:
    """Keep only `column`, renamed to "text", checking that it exists and holds strings."""
    features = dataset.features
    if features is None:  # a stream of JSON Lines: its columns are known once a row is read
        features = Features({key: value_feature(value) for key, value in next(iter(dataset.take(1)), {}).items()})
    if column not in features:
        raise UserError(f"{source} has no column '{column}' (columns: {', '.join(features)}); pass --text_column NAME")
    feature = features[column]
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        raise UserError(f"column '{column}' of {source} holds {feature}, not text; pass --text_column NAME")
    dataset = dataset.select_columns([column])
    return dataset.rename_column(column, "text") if column != "text" else dataset


def value_feature(value: object) -> Value | str:
    """The feature of one value read from a stream of unknown features, as far as `text_column` cares."""
    return Value("string") if isinstance(value, str) else type(value).__name__


__all__ = ["FILE_FORMATS", "TEXT_SUFFIXES", "first_invalid_utf8", "load_files", "stream_files", "text_column"]
