"""Shared fixtures: tiny pg_gpt2 models and their transformers GPT-2 twins (the oracle), and the play-like
corpus and tokenizer the end-to-end runs of run_clm.py train on."""

from __future__ import annotations

import os
from pathlib import Path

# No test reaches the real Hub. HF_HUB_OFFLINE is left alone: the push tests talk to a local Hub server.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import tiny_config, write_corpus  # noqa: E402

from modeling_pg_gpt2 import PgGPT2ForCausalLM  # noqa: E402
from modeling_pg_gpt2.data.corpus import CorpusArguments  # noqa: E402
from modeling_pg_gpt2.data.tokenizer import TokenizerArguments, train_tokenizer  # noqa: E402


@pytest.fixture
def tiny_model() -> PgGPT2ForCausalLM:
    torch.manual_seed(0)
    return PgGPT2ForCausalLM(tiny_config()).eval()


@pytest.fixture(scope="module")
def workspace(request, tmp_path_factory) -> Path:
    """A folder for one test module's runs (named after the module: run_clm, streaming, prepared)."""
    return tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))


@pytest.fixture(scope="module")
def corpus(workspace) -> Path:
    """The play-like corpus, written into each module's workspace (each keeps its own datasets cache)."""
    return write_corpus(workspace / "corpus")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A 400-token byte-level BPE trained once on the same corpus `corpus` writes (same seed, same text)."""
    root = tmp_path_factory.mktemp("tokenizer")
    out = root / "tokenizer"
    train_tokenizer(
        CorpusArguments(train_file=str(write_corpus(root / "corpus"))),
        TokenizerArguments(output_dir=str(out), vocab_size=400),
    )
    return out
