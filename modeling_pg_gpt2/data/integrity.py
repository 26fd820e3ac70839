"""That a prepared folder's block files are the ones `prepare_data.py` wrote: sizes, block counts, checksums.

`prepared.json` records, for each Arrow file of blocks, its size in bytes, its number of blocks and an
xxh3-128 checksum of its bytes ([`file_record`]). [`check_file`] compares a file with its record before a
run trains on it: the size always (a `stat`, so a copy cut anywhere, even at a record-batch boundary where
Arrow would read the shorter file without a word, is refused at once), the checksum unless told not to
(it reads the file once, at several GB/s from the page cache and at the disk's speed otherwise: bytes
changed in place are refused before training, never found as an out-of-vocabulary token id mid-run).
[`check_blocks`] then checks what was read against the record: the block count and every block's length.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import xxhash
from datasets import Dataset

from ..common.errors import UserError

CHECKSUM = "xxh3_128"  # xxhash (a dependency of datasets): several GB/s, where sha256 reads 0.4 GB/s
READ_CHUNK = 16 * 2**20  # bytes read at a time: memory stays bounded whatever the file's size


def checksum(path: str | os.PathLike) -> str:
    """`xxh3_128:<hex>` of the file's bytes, read in chunks."""
    hasher = xxhash.xxh3_128()
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while count := file.readinto(buffer):
            hasher.update(view[:count])
    return f"{CHECKSUM}:{hasher.hexdigest()}"


def file_record(path: Path, blocks: int) -> dict[str, Any]:
    """What `prepared.json` records of one block file: its size, number of blocks and checksum."""
    return {"bytes": path.stat().st_size, "blocks": blocks, "checksum": checksum(path)}


def check_file(folder: Path, name: str, record: dict[str, Any], verify_checksum: bool) -> None:
    """Refuse, in one line, a block file whose size (or checksum) is not the one recorded."""
    path = folder / name
    fix = "copy the folder again, or prepare it again"
    try:
        size = path.stat().st_size
    except OSError as err:
        raise UserError(f"--prepared_data {folder}: cannot read its blocks ({name}: {err.strerror}); {fix}") from None
    if size != record.get("bytes"):
        raise UserError(
            f"--prepared_data {folder}: {name} holds {size} bytes, prepared.json records {record.get('bytes')}: "
            f"the file was cut or changed (an interrupted copy?); {fix}"
        )
    if verify_checksum and checksum(path) != record.get("checksum"):
        raise UserError(
            f"--prepared_data {folder}: {name} does not match its checksum in prepared.json: its bytes were "
            f"changed (a bad disk or copy?); {fix}"
        )


def record_problem(info: Any) -> str | None:
    """What is wrong with the shape of a `prepared.PreparedInfo` as read from an edited or damaged
    `prepared.json` (each split's files, their records, the counts adding up), or `None`."""
    if not isinstance(info.block_size, int) or info.block_size < 2:
        return f"block_size {info.block_size!r}"
    if info.token_dtype not in ("uint16", "int32"):
        return f"token_dtype {info.token_dtype!r}"
    for split in ("train", "validation"):
        for name in ("files", "blocks"):
            if not isinstance(getattr(info, name), dict) or split not in getattr(info, name):
                return f"no {name}.{split}"
        names = info.files[split]
        records = [info.integrity.get(name) if isinstance(info.integrity, dict) else None for name in names or ()]
        if not isinstance(names, list) or not all(
            isinstance(r, dict) and isinstance(r.get("blocks"), int) for r in records
        ):
            return f"files.{split} is not a list of files recorded in integrity"
        if sum(record["blocks"] for record in records) != info.blocks[split]:
            return f"the blocks of files.{split} do not add up to blocks.{split}"
    return None


def check_blocks(folder: Path, name: str, blocks: Dataset, expected: int, block_size: int) -> None:
    """Refuse a file whose number of blocks, or whose blocks' length, is not what `prepared.json` says."""
    if blocks.num_rows != expected:
        raise UserError(
            f"--prepared_data {folder}: {name} holds {blocks.num_rows} blocks, prepared.json records {expected}; "
            "copy the folder again, or prepare it again"
        )
    if blocks.num_rows == 0:
        return
    lengths = pc.min_max(pc.list_value_length(blocks.data.column("input_ids")))  # reads the offsets only
    if lengths["min"].as_py() != block_size or lengths["max"].as_py() != block_size:
        raise UserError(
            f"--prepared_data {folder}: {name} holds blocks of {lengths['max'].as_py()} tokens, prepared.json says "
            f"{block_size}: the record was edited; prepare the folder again"
        )


__all__ = ["CHECKSUM", "check_blocks", "check_file", "checksum", "file_record", "record_problem"]
