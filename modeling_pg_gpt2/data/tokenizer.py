"""Train a byte-level BPE tokenizer like GPT-2's on your corpus (the logic behind `train_tokenizer.py`).

The tokenizer is GPT-2's design, trained with the `tokenizers` library: no normalizer, GPT-2's
pre-tokenisation regex and byte-to-unicode mapping (`ByteLevel`), BPE merges learnt on the corpus, a
byte-level decoder. Every one of the 256 bytes is in the vocabulary, so any text encodes without an
unknown token and `decode(encode(text)) == text` for every Unicode string.

`<|endoftext|>` is the only special token and, as in GPT-2, has the last id (`vocab_size - 1`). It is
the bos, eos, unk and pad token (padding on the left, for batched generation).

Training cuts pre-tokens longer than `MAX_PRE_TOKEN_CHARS` bytes into pieces of that length. BPE
training costs grow with the square of a pre-token's length, so a long run without whitespace (minified
JSON, DNA, base64, a repeated character) would make it hang; GPT-2's regex never yields such long
pre-tokens from ordinary text, so the merges learnt from it are unchanged. The saved tokenizer
pre-tokenises exactly like GPT-2's (encoding is fast on any input).

`load_tokenizer` is how every script loads a tokenizer: it refuses, in one line, a folder that is not a
working tokenizer (AutoTokenizer loads a folder holding only `tokenizer_config.json` as a 1-token
tokenizer that encodes every text to no token at all).

`<|endoftext|>` written inside text: like GPT-2's tokenizer in transformers, the tokenizer *keeps it as
the special token* (one id), so prompts and concatenated documents can use it as a separator; decoding
gives the same characters back, so the round trip is lossless either way. To treat it as plain text
(several ordinary tokens), call the tokenizer with `split_special_tokens=True`.

Example:
    >>> from modeling_pg_gpt2.data.corpus import CorpusArguments
    >>> from modeling_pg_gpt2.data.tokenizer import TokenizerArguments, train_tokenizer
    >>> report = train_tokenizer(
    ...     CorpusArguments(dataset_name="shakespeare"), TokenizerArguments(output_dir="tok", vocab_size=8192)
    ... )
    >>> from transformers import AutoTokenizer
    >>> tokenizer = AutoTokenizer.from_pretrained("tok")
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from huggingface_hub.utils import tqdm
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GPT2Tokenizer, PreTrainedTokenizerBase

from ..common.errors import UserError, few, first_line
from ..common.outputs import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    TOKENIZER_FILES,
    VOCAB_FILES,
    WEIGHTS_FILES,
    check_not_an_input,
    check_output_dir,
)
from ..common.sources import check_pretrained_source
from .corpus import CorpusArguments, corpus_bytes, load_corpus

EOS_TOKEN = "<|endoftext|>"
# GPT-2's context (n_positions): the longest input a tokenizer is saved for, the longest block training packs by
# default (at most the model's own context), and the window of a model whose config names no context.
GPT2_CONTEXT = 1024
BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET_SIZE + 1  # every byte, plus <|endoftext|>
REPORT_FILE = "tokenizer_report.json"

# Documents are fed to the trainer in pieces of at most this many characters, so one huge document
# (a single big .txt file) never becomes one huge string in the trainer.
MAX_PIECE_CHARS = 1 << 20
# Longest pre-token the BPE trainer sees, in bytes (the trainer's cost grows with its square). GPT-2's
# regex gives longer ones only for runs of 256 letters, digits, punctuation or spaces.
MAX_PRE_TOKEN_CHARS = 256

# Any real tokenizer encodes this to at least one token.
PROBE_TEXT = "Hello, world"


@dataclass
class TokenizerArguments:
    """What to train and where to save it."""

    output_dir: str = field(
        metadata={"help": "Folder to save the tokenizer in; AutoTokenizer.from_pretrained(output_dir) loads it."}
    )
    vocab_size: int = field(
        default=8192,
        metadata={
            "help": "Vocabulary size including the 256 bytes and <|endoftext|> (at least 257). 8192 suits "
            "corpora of a few MB; GPT-2 uses 50257."
        },
    )
    min_frequency: int = field(default=2, metadata={"help": "Fewest occurrences for a pair to be merged."})
    model_max_length: int = field(
        default=GPT2_CONTEXT,
        metadata={"help": "Longest input the model takes (its n_positions), saved with the tokenizer."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Write into a non-empty --output_dir (files of other names there are kept)."},
    )


def check_tokenizer_arguments(args: TokenizerArguments) -> None:
    """Raise `UserError` for arguments that cannot work, before any time is spent on the corpus."""
    if args.vocab_size < MIN_VOCAB_SIZE:
        raise UserError(
            f"--vocab_size {args.vocab_size} is too small: the byte alphabet ({BYTE_ALPHABET_SIZE}) plus "
            f"{EOS_TOKEN} needs at least {MIN_VOCAB_SIZE}"
        )
    if args.min_frequency < 0:
        raise UserError(f"--min_frequency must be >= 0, got {args.min_frequency}")
    if args.model_max_length < 1:
        raise UserError(f"--model_max_length must be positive, got {args.model_max_length}")
    check_output_dir(args.output_dir, overwrite_flag=None if args.overwrite_output_dir else "--overwrite_output_dir")
    model_files = [name for name in (CONFIG_FILE, *WEIGHTS_FILES) if (Path(args.output_dir) / name).is_file()]
    if model_files:  # even with --overwrite_output_dir: the model would be left with another tokenizer's ids
        raise UserError(
            f"--output_dir {args.output_dir} holds a model ({few(model_files)}) whose embeddings belong to its own "
            "tokenizer; write the new tokenizer to another folder"
        )


def iter_text_batches(
    documents: Dataset, batch_size: int = 256, max_chars: int = MAX_PIECE_CHARS, progress: tqdm | None = None
) -> Iterator[list[str]]:
    """Stream the `"text"` column of `documents` as lists of strings, never the whole corpus at once.

    Documents longer than `max_chars` are cut into pieces by `split_for_pretokenization`, which keeps
    GPT-2's pre-tokenisation unchanged. `progress`, if given, advances by the UTF-8 bytes read.
    """
    for batch in documents.select_columns(["text"]).iter(batch_size=batch_size):
        texts = batch["text"]
        if progress is not None:
            progress.update(sum(len(text.encode("utf-8")) for text in texts))
        yield [piece for text in texts for piece in split_for_pretokenization(text, max_chars)]


# GPT-2's regex never puts a non-space character and the whitespace after it into one pre-token, and
# it has no look-behind, so cutting between the two leaves every pre-token as it was. (Only ASCII
# whitespace here: Python's \s also matches \x1c-\x1f, which the Rust regex does not.)
_SAFE_CUT = re.compile(r"(?<=\S)(?=[ \t\n\r])")


def split_for_pretokenization(text: str, max_chars: int = MAX_PIECE_CHARS) -> list[str]:
    """Cut `text` into pieces of at most `max_chars` characters whose pre-tokens are those of `text`.

    Cuts fall just before a space or line break that follows a non-space character, where GPT-2's
    pre-tokenisation splits anyway, so the pieces have exactly the pre-tokens of `text`. A stretch of
    `max_chars // 2` characters with no such place (e.g. CJK without spaces) is cut at `max_chars`,
    changing at most the pre-tokens around that cut.
    """
    pieces, start = [], 0
    while len(text) - start > max_chars:
        low, cut = start + max(1, max_chars // 2), start + max_chars
        for match in _SAFE_CUT.finditer(text, low, cut):
            cut = match.start()
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def gpt2_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """GPT-2's pre-tokenisation: its regex, then each byte mapped to a printable character."""
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def training_pre_tokenizer(max_chars: int = MAX_PRE_TOKEN_CHARS) -> pre_tokenizers.PreTokenizer:
    """GPT-2's pre-tokenisation with every pre-token cut into pieces of at most `max_chars` bytes.

    After `ByteLevel` each byte is one character (never a line break), so `.{1,n}` cuts by bytes.
    """
    cut = pre_tokenizers.Split(Regex(f".{{1,{max_chars}}}"), behavior="isolated")
    return pre_tokenizers.Sequence([gpt2_pre_tokenizer(), cut])


def train_bpe(batches: Iterable[list[str]], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train GPT-2's byte-level BPE on `batches` of text; `<|endoftext|>` gets the last id.

    The trainer learns `vocab_size - 1` tokens (the 256 bytes, then merges) and `<|endoftext|>` is
    appended after it. A corpus with too few distinct pairs gives a smaller vocabulary. The trainer sees
    pre-tokens of at most `MAX_PRE_TOKEN_CHARS` bytes (see the module docstring); the tokenizer returned
    pre-tokenises like GPT-2's.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = training_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(batches, trainer=trainer)
    tokenizer.pre_tokenizer = gpt2_pre_tokenizer()  # what transformers' GPT2Tokenizer uses when loaded
    tokenizer.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
    return tokenizer


def to_transformers(tokenizer: Tokenizer, model_max_length: int = GPT2_CONTEXT) -> PreTrainedTokenizerBase:
    """Wrap a trained `tokenizers.Tokenizer` as transformers' GPT-2 tokenizer, ready for `save_pretrained`.

    `<|endoftext|>` is bos, eos, unk and pad; padding is on the left (what batched generation needs),
    and decoding does not "clean up" spaces, so decoding is exact.
    """
    return GPT2Tokenizer(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        add_prefix_space=False,
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def check_tokenizer_files(folder: str | os.PathLike) -> None:
    """Refuse, naming the missing file, a local folder that lacks a tokenizer's vocabulary.

    A folder needs `tokenizer.json` or GPT-2's original `vocab.json` and `merges.txt`: the other files
    save_pretrained writes make a tokenizer with no vocabulary on their own.
    """
    folder = Path(folder)
    if (folder / TOKENIZER_FILE).is_file() or all((folder / name).is_file() for name in VOCAB_FILES):
        return
    held = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    found = f"it holds only {', '.join(held)}" if held else "it holds no tokenizer file"
    raise UserError(
        f"{folder} has no {TOKENIZER_FILE} ({found}): save a tokenizer there with train_tokenizer.py "
        "(--output_dir) or tokenizer.save_pretrained(folder)"
    )


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """Refuse a tokenizer that cannot be the tokenizer of a language model: too few tokens, or no token for text.

    A byte-level BPE has more than the 256 byte tokens, and encodes any text to at least one token.
    """
    size = len(tokenizer)
    n_ids = len(tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])
    if size <= BYTE_ALPHABET_SIZE or n_ids == 0:
        raise UserError(
            f"{name} is not a working tokenizer: it has {size} token(s) (a byte-level BPE has more than "
            f"{BYTE_ALPHABET_SIZE}) and encodes {PROBE_TEXT!r} to {n_ids}; its {TOKENIZER_FILE} is missing or "
            "broken (train one with train_tokenizer.py)"
        )


def load_tokenizer(name_or_path: str | os.PathLike, **kwargs: Any) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained(name_or_path, **kwargs)`, refusing with a `UserError` what is not a tokenizer.

    A missing folder or Hub repository is said at once (`sources.check_pretrained_source`); a local folder must
    hold `tokenizer.json` (or `vocab.json` and `merges.txt`); the tokenizer loaded must pass
    `check_tokenizer`. `revision`, `token` and `cache_dir` in `kwargs` also apply to the Hub lookup.
    """
    name = os.fspath(name_or_path)
    check_pretrained_source(name, "tokenizer", kwargs.get("revision"), kwargs.get("token"), kwargs.get("cache_dir"))
    if Path(name).expanduser().is_dir():
        check_tokenizer_files(Path(name).expanduser())
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the tokenizer {name!r}: {first_line(err)}") from None
    check_tokenizer(tokenizer, name)
    return tokenizer


def start_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id a text starts from when nothing comes before it (an empty prompt, the context of a scored text's
    first token): bos, else eos (GPT-2's `<|endoftext|>` is both); a `UserError` for a tokenizer with neither."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise UserError("the tokenizer has neither a bos nor an eos token to start a text with")
    return start


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The id batches are padded with: pad, else eos (GPT-2's tokenizer has no pad token), else bos, else `None`.

    Padding is masked out, so any id of the vocabulary does; these are the ones every tokenizer has if any.
    """
    ids = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)
    return next((token_id for token_id in ids if token_id is not None), None)


def eos_token_id(tokenizer: PreTrainedTokenizerBase, name: str) -> int:
    """The end-of-text id, which separates the documents packed into blocks; a `UserError` for a tokenizer without."""
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer {name!r} has no end-of-text (eos) token; train one with train_tokenizer.py")
    return tokenizer.eos_token_id


def count_tokens(tokenizer: Tokenizer, documents: Dataset, batch_size: int = 256) -> int:
    """Number of tokens in the `"text"` column of `documents`, each document encoded whole."""
    total = 0
    for batch in documents.select_columns(["text"]).iter(batch_size=batch_size):
        total += sum(
            len(encoding.ids) for encoding in tokenizer.encode_batch_fast(batch["text"], add_special_tokens=False)
        )
    return total


def train_tokenizer(corpus_args: CorpusArguments, args: TokenizerArguments) -> dict[str, Any]:
    """Train the tokenizer on the corpus, save it to `args.output_dir` and return its report.

    The report (also saved as `tokenizer_report.json` next to the tokenizer) holds the vocabulary
    size, the documents and UTF-8 bytes of each split, and the compression on the held-out
    documents in bytes per token.
    """
    check_tokenizer_arguments(args)
    inputs = {"--train_file": corpus_args.train_file, "--validation_file": corpus_args.validation_file}
    check_not_an_input(args.output_dir, "--output_dir", {**inputs, "--dataset_name": corpus_args.dataset_name})
    corpus = load_corpus(corpus_args)
    train, validation = corpus["train"], corpus["validation"]
    train_bytes = corpus_bytes(train)

    start = time.perf_counter()
    with tqdm(total=train_bytes, unit="B", unit_scale=True, desc="Training tokenizer") as progress:
        tokenizer = train_bpe(iter_text_batches(train, progress=progress), args.vocab_size, args.min_frequency)
    seconds = time.perf_counter() - start

    validation_bytes = corpus_bytes(validation)
    validation_tokens = count_tokens(tokenizer, validation)
    report = {
        "corpus": corpus_args.describe(),
        "vocab_size": tokenizer.get_vocab_size(),
        "requested_vocab_size": args.vocab_size,
        "min_frequency": args.min_frequency,
        "eos_token": EOS_TOKEN,
        "eos_token_id": tokenizer.token_to_id(EOS_TOKEN),
        "train_documents": train.num_rows,
        "train_bytes": train_bytes,
        "validation_documents": validation.num_rows,
        "validation_bytes": validation_bytes,
        "validation_tokens": validation_tokens,
        "validation_bytes_per_token": validation_bytes / validation_tokens if validation_tokens else None,
        "training_seconds": round(seconds, 3),
    }

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    to_transformers(tokenizer, args.model_max_length).save_pretrained(out)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def format_report(report: dict[str, Any], output_dir: str | Path) -> str:
    """The few lines `train_tokenizer.py` prints about a trained tokenizer."""
    lines = [
        f"Tokenizer saved to {output_dir}: vocabulary {report['vocab_size']} "
        f"({report['eos_token']} = {report['eos_token_id']}), trained in {report['training_seconds']:.1f} s",
        f"  train       {report['train_documents']} documents, {_megabytes(report['train_bytes'])}",
        f"  validation  {report['validation_documents']} documents, {_megabytes(report['validation_bytes'])}",
    ]
    if report["validation_bytes_per_token"] is None:
        lines.append("  compression not measured: no validation documents")
    else:
        lines.append(
            f"  compression {report['validation_bytes_per_token']:.3f} bytes/token on the validation documents"
        )
    if report["vocab_size"] < report["requested_vocab_size"]:
        lines.append(
            f"  note: the corpus allowed only {report['vocab_size']} of the {report['requested_vocab_size']} "
            "tokens asked for (lower --min_frequency or use more text)"
        )
    lines.append(f"  report      {Path(output_dir, REPORT_FILE)}")
    return "\n".join(lines)


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.2f} MB ({n_bytes:,} bytes)"
