"""The byte-level BPE tokenizer (modeling_pg_gpt2.data.tokenizer, train_tokenizer.py)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import runpy
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from helpers import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from modeling_pg_gpt2.common.errors import UserError
from modeling_pg_gpt2.data.corpus import CorpusArguments, load_corpus
from modeling_pg_gpt2.data.tokenizer import (
    EOS_TOKEN,
    MAX_PRE_TOKEN_CHARS,
    REPORT_FILE,
    TokenizerArguments,
    eos_token_id,
    format_report,
    pad_token_id,
    split_for_pretokenization,
    start_token_id,
    train_tokenizer,
    training_pre_tokenizer,
)

SCRIPT = ROOT / "train_tokenizer.py"
VOCAB_SIZE = 400

WORDS = [
    "the", "of", "and", "to", "a", "in", "that", "is", "was", "he", "for", "it", "with", "as", "his", "on",
    "be", "at", "by", "I", "this", "had", "not", "are", "but", "from", "or", "have", "an", "they", "which",
    "you", "were", "her", "all", "she", "there", "would", "their", "we", "him", "been", "has", "when", "who",
    "startup", "founders", "essay", "hacker", "painter", "wealth", "programming", "language", "lisp", "city",
]  # fmt: skip


def write_corpus(folder: Path, n_documents: int = 30) -> None:
    """Small essays of pseudo-English with some non-ASCII, one file each."""
    rng = random.Random(0)
    folder.mkdir(parents=True)
    for i in range(n_documents):
        paragraphs = []
        for _ in range(rng.randint(3, 8)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(20, 60))]
            words[0] = words[0].capitalize()
            paragraphs.append(" ".join(words) + rng.choice([".", "?", "!", " — naïve café 日本 😀."]))
        (folder / f"essay{i:02d}.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")


def run_script(*args: str) -> tuple[int, str, str]:
    """Run train_tokenizer.py in this process (its `run_cli` exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, [str(SCRIPT), *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(SCRIPT), run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The script run once on the fixture corpus: (corpus folder, output folder, printed report)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)  # no download-count ping
        root = tmp_path_factory.mktemp("tokenizer")
        write_corpus(root / "essays")
        code, stdout, stderr = run_script(
            "--train_file", str(root / "essays"), "--validation_split_percentage", "20",
            "--vocab_size", str(VOCAB_SIZE), "--output_dir", str(root / "tok"), "--model_max_length", "256",
        )  # fmt: skip
    assert code == 0, stderr
    return root / "essays", root / "tok", stdout


@pytest.fixture(scope="module")
def tokenizer(trained):
    return AutoTokenizer.from_pretrained(trained[1])


@pytest.mark.slow
def test_saved_tokenizer_loads_in_a_fresh_process(trained, tmp_path):
    out = trained[1]
    samples = ["Hello, world!  How are you?\n", "naïve café 日本 😀", f"one{EOS_TOKEN}two", ""]
    script = (
        "import json, sys\n"
        "from transformers import AutoTokenizer\n"
        f"tok = AutoTokenizer.from_pretrained({str(out)!r})\n"
        f"samples = {samples!r}\n"
        "ids = [tok(s)['input_ids'] for s in samples]\n"
        "batch = tok(['a', 'a longer prompt here'], padding=True)\n"
        "print(json.dumps({'ids': ids, 'decoded': [tok.decode(i) for i in ids], 'len': len(tok),\n"
        "    'eos': tok.eos_token_id, 'bos': tok.bos_token_id, 'pad': tok.pad_token_id,\n"
        "    'eos_token': tok.eos_token, 'max_len': tok.model_max_length, 'side': tok.padding_side,\n"
        "    'mask': batch['attention_mask'][0]}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])

    assert loaded["decoded"] == samples
    assert loaded["len"] == VOCAB_SIZE
    assert loaded["eos_token"] == EOS_TOKEN
    assert loaded["eos"] == loaded["bos"] == loaded["pad"] == VOCAB_SIZE - 1  # last id, as in GPT-2
    assert loaded["max_len"] == 256
    assert loaded["side"] == "left"
    assert loaded["mask"][0] == 0 and loaded["mask"][-1] == 1  # left padding
    # Same ids as the tokens the merges produce here: the fresh process saw the same tokenizer.
    in_process = AutoTokenizer.from_pretrained(out)
    assert loaded["ids"] == [in_process(s)["input_ids"] for s in samples]


def test_report_numbers_are_measured(trained, tokenizer):
    essays, out, stdout = trained
    report = json.loads((out / REPORT_FILE).read_text())
    corpus = load_corpus(CorpusArguments(train_file=str(essays), validation_split_percentage=20))
    train, validation = list(corpus["train"]["text"]), list(corpus["validation"]["text"])
    validation_bytes = sum(len(text.encode("utf-8")) for text in validation)
    validation_tokens = sum(len(tokenizer(text)["input_ids"]) for text in validation)

    assert report["vocab_size"] == len(tokenizer) == VOCAB_SIZE
    assert report["train_documents"] == len(train) == 24
    assert report["validation_documents"] == len(validation) == 6
    assert report["train_bytes"] == sum(len(text.encode("utf-8")) for text in train)
    assert report["validation_bytes"] == validation_bytes
    assert report["validation_tokens"] == validation_tokens
    assert report["validation_bytes_per_token"] == pytest.approx(validation_bytes / validation_tokens)
    assert 1 < report["validation_bytes_per_token"] < 10
    assert f"vocabulary {VOCAB_SIZE}" in stdout
    assert f"{validation_bytes / validation_tokens:.3f} bytes/token" in stdout


def test_every_byte_is_in_the_vocabulary(tokenizer):
    vocab = tokenizer.get_vocab()
    assert all(symbol in vocab for symbol in pre_tokenizers.ByteLevel.alphabet())
    assert tokenizer.unk_token_id is not None and tokenizer("\x00\x7f\U0010ffff")["input_ids"]


def test_endoftext_in_text_is_the_special_token_unless_split(tokenizer):
    text = f"end of one essay{EOS_TOKEN}start of the next"
    kept = tokenizer(text)["input_ids"]
    split = tokenizer(text, split_special_tokens=True)["input_ids"]
    assert kept.count(tokenizer.eos_token_id) == 1
    assert tokenizer.eos_token_id not in split and len(split) > len(kept)
    assert tokenizer.decode(kept) == tokenizer.decode(split) == text


TRICKY_PIECES = [
    EOS_TOKEN, "<|endoftext", "|>", "😀", "👩‍👩‍👧", "日本語", "e\u0301", "\u0301", "\x00", "\x1b[0m", "\r\n",
    "\t", "   ", "\n\n\n", " ", "\ufeff", "\u200b", "'s", " 's", " .", " n't", "’", "\U0010ffff", "a", "The",
    "a" * 700, "ACGT" * 100, "日" * 200,
]  # fmt: skip
any_text = st.one_of(
    st.text(),
    st.lists(st.one_of(st.sampled_from(TRICKY_PIECES), st.text(max_size=5)), max_size=12).map("".join),
)


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_decode_encode_is_lossless(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer(text, split_special_tokens=True)["input_ids"]) == text


BYTE_LEVEL = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def pre_tokens(text: str) -> list[str]:
    return [word for word, _ in BYTE_LEVEL.pre_tokenize_str(text)]


FRAGMENTS = ["word", "a", " ", "  ", "\n", "\n\n", "\t", "\r\n", ".", "!?", "'s", "42", "日本", "\x1c", "\xa0", "😀"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), min_size=10, max_size=200).map("".join), st.integers(4, 30))
def test_pieces_for_the_trainer_cover_the_text_and_keep_its_pre_tokens(text, max_chars):
    pieces = split_for_pretokenization(text, max_chars)
    assert "".join(pieces) == text
    assert all(len(piece) <= max_chars for piece in pieces)
    # A piece of exactly max_chars is a forced cut (no place to cut cleanly); otherwise nothing changes.
    if all(len(piece) < max_chars for piece in pieces[:-1]):
        assert [word for piece in pieces for word in pre_tokens(piece)] == pre_tokens(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*FRAGMENTS, "a" * 40, "-" * 25, " " * 30, "日本" * 9]), max_size=60).map("".join))
def test_the_trainer_sees_gpt2_pre_tokens_cut_to_a_bounded_length(text):
    """What keeps BPE training linear in the corpus: no pre-token longer than the bound reaches the trainer."""
    limit = 8
    expected = [word[i : i + limit] for word in pre_tokens(text) for i in range(0, len(word), limit)]
    assert [word for word, _ in training_pre_tokenizer(limit).pre_tokenize_str(text)] == expected


def test_the_bound_leaves_ordinary_text_alone(trained):
    text = "".join(path.read_text(encoding="utf-8") for path in sorted(trained[0].iterdir()))
    bounded = [word for word, _ in training_pre_tokenizer().pre_tokenize_str(text)]
    assert bounded == pre_tokens(text)
    run = "ACGT" * 50_000  # DNA: one GPT-2 pre-token of 200,000 letters
    assert max(len(word) for word, _ in training_pre_tokenizer().pre_tokenize_str(run)) == MAX_PRE_TOKEN_CHARS


def test_long_documents_are_cut_only_between_pre_tokens():
    rng = random.Random(1)
    text = "".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) + rng.choice(["\n", "\n\n", ".\n", "  \n"])
        for _ in range(300)
    )
    pieces = split_for_pretokenization(text, max_chars=200)
    assert len(pieces) > 10
    assert [word for piece in pieces for word in pre_tokens(piece)] == pre_tokens(text)


def test_bad_arguments_fail_in_one_line_before_touching_anything(trained, tmp_path):
    essays = str(trained[0])
    code, _, stderr = run_script("--train_file", essays, "--vocab_size", "256", "--output_dir", str(tmp_path / "o"))
    assert code == 2
    assert stderr.strip().splitlines() == [
        "error: --vocab_size 256 is too small: the byte alphabet (256) plus <|endoftext|> needs at least 257"
    ]
    assert not (tmp_path / "o").exists()

    busy = tmp_path / "checkpoint"
    busy.mkdir()
    (busy / "model.safetensors").write_bytes(b"weights")
    code, _, stderr = run_script("--train_file", essays, "--output_dir", str(busy))
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "is not empty (holds model.safetensors)" in stderr and "--overwrite_output_dir" in stderr
    assert sorted(path.name for path in busy.iterdir()) == ["model.safetensors"]

    code, _, stderr = run_script("--train_file", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o"))
    assert code == 2 and "nope: no such file or folder" in stderr


def test_overwrite_output_dir_writes_beside_other_files(trained, tmp_path):
    busy = tmp_path / "out"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    report = train_tokenizer(
        CorpusArguments(train_file=str(trained[0]), validation_split_percentage=0),
        TokenizerArguments(output_dir=str(busy), vocab_size=257, overwrite_output_dir=True),
    )
    assert (busy / "notes.txt").read_text() == "mine"
    assert report["vocab_size"] == 257 and report["validation_bytes_per_token"] is None
    tokenizer = AutoTokenizer.from_pretrained(busy)
    assert len(tokenizer("ab")["input_ids"]) == 2  # bytes only, no merges
    with pytest.raises(UserError, match="is a file, not a folder"):
        train_tokenizer(
            CorpusArguments(train_file=str(trained[0])),
            TokenizerArguments(output_dir=str(busy / "notes.txt"), overwrite_output_dir=True),
        )


def test_report_says_when_the_corpus_is_too_small_for_the_vocabulary(trained, tmp_path):
    report = train_tokenizer(
        CorpusArguments(train_file=str(trained[0])), TokenizerArguments(output_dir=str(tmp_path), vocab_size=5000)
    )
    assert report["vocab_size"] == len(AutoTokenizer.from_pretrained(tmp_path)) < 5000
    assert f"allowed only {report['vocab_size']} of the 5000 tokens" in format_report(report, tmp_path)


def test_special_token_fallbacks(tokenizer):
    """GPT-2's <|endoftext|> starts, ends and pads; other tokenizers fall back bos -> eos and pad -> eos -> bos."""
    endoftext = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    assert start_token_id(tokenizer) == pad_token_id(tokenizer) == eos_token_id(tokenizer, "tok") == endoftext

    def variant(**special: str) -> PreTrainedTokenizerFast:
        return PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, **special)

    no_pad = variant(bos_token="the", eos_token=EOS_TOKEN)
    assert (start_token_id(no_pad), pad_token_id(no_pad)) == (no_pad.bos_token_id, endoftext)
    eos_only = variant(eos_token=EOS_TOKEN)
    assert start_token_id(eos_only) == pad_token_id(eos_only) == endoftext
    bos_only = variant(bos_token=EOS_TOKEN)
    assert start_token_id(bos_only) == pad_token_id(bos_only) == endoftext
    with pytest.raises(UserError, match="the tokenizer 'bos-only' has no end-of-text"):
        eos_token_id(bos_only, "bos-only")
    bare = variant()
    assert pad_token_id(bare) is None
    with pytest.raises(UserError, match="neither a bos nor an eos token"):
        start_token_id(bare)
    padded = variant(eos_token=EOS_TOKEN, pad_token="the")
    assert pad_token_id(padded) == padded.pad_token_id != endoftext
