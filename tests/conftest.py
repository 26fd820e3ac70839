"""Shared fixtures: tiny pg_gpt2 models and their transformers GPT-2 twins (the oracle), and the play-like
corpus and tokenizer the end-to-end runs of run_clm.py train on."""

from __future__ import annotations

import os
import random
from pathlib import Path

# No test reaches the real Hub. HF_HUB_OFFLINE is left alone: the push tests talk to a local Hub server.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from modeling_pg_gpt2 import PgGPT2Config, PgGPT2ForCausalLM  # noqa: E402
from modeling_pg_gpt2.corpus import CorpusArguments  # noqa: E402
from modeling_pg_gpt2.tokenizer import TokenizerArguments, train_tokenizer  # noqa: E402

# GPT-2 stores these as Conv1D (in, out); nn.Linear stores (out, in).
_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

NAMES = ["ROMEO", "JULIET", "HAMLET", "OPHELIA", "KING", "QUEEN"]
WORDS = [
    "the", "my", "thy", "love", "night", "day", "sweet", "fair", "death", "heart",
    "lord", "lady", "crown", "sword", "moon", "star", "doth", "hath", "thou", "art",
]  # fmt: skip


class FakeClock:
    """A clock the test advances by hand, so the callback's arithmetic is checked without sleeping."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tiny_config(**overrides) -> PgGPT2Config:
    """A model small enough that a forward pass takes milliseconds."""
    values = dict(vocab_size=211, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    values.update(overrides)
    return PgGPT2Config(**values)


def gpt2_twin(model: PgGPT2ForCausalLM, attn_implementation: str = "eager") -> GPT2LMHeadModel:
    """transformers' own GPT-2 with exactly `model`'s weights: the independent oracle of the tests.

    The weights are copied here by hand (not with the project's converter) so the oracle does not share
    code with what it checks.
    """
    cfg = model.config
    names = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function")
    gpt2_config = GPT2Config(
        **{name: getattr(cfg, name) for name in names},
        resid_pdrop=cfg.resid_pdrop,
        embd_pdrop=cfg.embd_pdrop,
        attn_pdrop=cfg.attn_pdrop,
        layer_norm_epsilon=cfg.layer_norm_epsilon,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
    )
    twin = GPT2LMHeadModel._from_config(gpt2_config, attn_implementation=attn_implementation)
    state = {
        name: tensor.t() if name.endswith(_CONV1D_WEIGHTS) else tensor for name, tensor in model.state_dict().items()
    }
    twin.load_state_dict(state, strict=True)
    twin.generation_config = model.generation_config
    return twin.train(model.training)


@pytest.fixture
def tiny_model() -> PgGPT2ForCausalLM:
    torch.manual_seed(0)
    return PgGPT2ForCausalLM(tiny_config()).eval()


def saved_small_model(root: Path, text: str, n_positions: int) -> Path:
    """A small random pg_gpt2 saved in root/model like run_clm.py saves one, with a tokenizer trained on `text`."""
    from transformers import AutoTokenizer

    (root / "corpus").mkdir()
    for number in range(4):
        (root / "corpus" / f"{number}.txt").write_text(text * (number + 2), encoding="utf-8")
    train_tokenizer(
        CorpusArguments(train_file=str(root / "corpus")),
        TokenizerArguments(output_dir=str(root / "model"), vocab_size=300),
    )
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    torch.manual_seed(0)
    config = PgGPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = PgGPT2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(root / "model")
    return root / "model"


def write_corpus(folder: Path, documents: int = 30, speeches: int = 30, seed: int = 0) -> Path:
    """A play-like corpus: speaker lines and short verse, one .txt file per document."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for number in range(documents):
        lines = []
        for _ in range(speeches):
            lines.append(rng.choice(NAMES) + ":")
            for _ in range(rng.randint(1, 3)):
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 9)))
                lines.append(words.capitalize() + rng.choice([",", ".", ";", "!"]))
            lines.append("")
        (folder / f"act{number:02d}.txt").write_text("\n".join(lines), encoding="utf-8")
    return folder


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
