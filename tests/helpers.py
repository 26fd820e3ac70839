"""What the tests share besides fixtures (those are in conftest.py): paths, the environment of a subprocess,
tiny models and their transformers twins, a play-like corpus, and the runs of run_clm.py they build on."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import ModelOutput

from modeling_pg_gpt2 import PgGPT2Config, PgGPT2ForCausalLM
from modeling_pg_gpt2.data.corpus import CorpusArguments
from modeling_pg_gpt2.data.tokenizer import TokenizerArguments, train_tokenizer
from modeling_pg_gpt2.training.checkpoints import checkpoint_problem

ROOT = Path(__file__).resolve().parents[1]  # the repository
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
# One thread per process: the tiny models gain nothing from more, and the suite shares 2 cores.
ENV = {**os.environ, **OFFLINE, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
MODEL = "n_layer=2,n_embd=32,n_head=2,n_positions=64"
IMPLEMENTATIONS = ["eager", "sdpa"]  # the attention of every CPU parity test


# GPT-2 stores these as Conv1D (in, out); nn.Linear stores (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

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
        name: tensor.t() if name.endswith(CONV1D_WEIGHTS) else tensor for name, tensor in model.state_dict().items()
    }
    twin.load_state_dict(state, strict=True)
    twin.generation_config = model.generation_config
    return twin.train(model.training)


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


def run_clm(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run_clm.py", *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True, **kwargs
    )


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def kill_at_first_checkpoint(command: list[str], out: Path) -> None:
    """Start the run `command` (`python SCRIPT ARGS`, output folder `out`) and SIGKILL it once checkpoint-10 is saved.

    The run waits at that checkpoint (tests/gated_run.py) until it is killed, so the kill lands at the same step
    on any machine: it can neither finish first nor be killed before its checkpoint.
    """
    gate = out.parent / f"{out.name}-gate"
    gate.mkdir()
    python, script, *args = command
    gated = [python, str(ROOT / "tests" / "gated_run.py"), str(gate), "10", script, *args]
    process = subprocess.Popen(gated, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # a hang guard: a loaded machine can be slow
    try:
        while not (gate / "reached").exists():
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)  # also when the wait failed: no run left behind
    assert process.wait() == -signal.SIGKILL
    assert checkpoint_problem(out / "checkpoint-10") is None and not (out / "model.safetensors").exists()


def assert_same_weights(reference_run: Path, run: Path) -> None:
    """The final model and the last checkpoint (step 30) of `run` equal those of `reference_run`, bit for bit."""
    for folder in ("", "checkpoint-30"):
        reference, result = weights(reference_run / folder), weights(run / folder)
        assert reference.keys() == result.keys()
        for name in reference:
            assert torch.equal(reference[name], result[name]), f"{folder or 'final model'}: {name} differs"


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def base_flags(corpus: Path, tokenizer_dir: Path) -> list[str]:
    """The run every test starts from: 30 steps of a 2-layer, 32-wide model, evaluated every 10 (every value
    given: the automatic recipe is off, tests/training/test_auto_recipe.py runs it)."""
    return [
        "--train_file", str(corpus), "--validation_split_percentage", "10",
        "--tokenizer_name", str(tokenizer_dir), "--config_name", "tiny", "--config_overrides", MODEL,
        "--block_size", "64", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
        "--max_steps", "30", "--eval_steps", "10", "--save_steps", "10", "--logging_steps", "5",
        "--learning_rate", "3e-3", "--warmup_steps", "3", "--lr_scheduler_type", "cosine",
        "--seed", "0", "--early_stopping_patience", "3", "--disable_tqdm", "true", "--auto_recipe", "false",
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_ids(batch: int = 3, length: int = 17, vocab: int = 211, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def left_padded(ids: torch.Tensor, pads: list[int], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = ids.clone(), torch.ones_like(ids)
    for row, n in enumerate(pads):
        ids[row, :n], mask[row, :n] = pad_id, 0
    return ids, mask


def loss_and_grads(model, ids, labels, **kwargs) -> tuple[ModelOutput, dict[str, torch.Tensor]]:
    """One forward and backward; the output and every parameter's gradient, GPT-2's Conv1D ones transposed."""
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=labels, **kwargs)
    out.loss.backward()
    model = getattr(model, "_orig_mod", model)  # a compiled model's parameters are the original's
    conv1d = isinstance(model, GPT2LMHeadModel)
    grads = {n: p.grad.t() if conv1d and n.endswith(CONV1D_WEIGHTS) else p.grad for n, p in model.named_parameters()}
    return out, grads


def worst_relative(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    return max(((ours[n] - theirs[n]).abs().max() / theirs[n].abs().max()).item() for n in theirs)
