"""`pg-gpt2-serve` (transformers serve) answers over its OpenAI API what `generate()` gives, and stops cleanly.

A small random pg_gpt2 folder, saved with a run_clm-style generation config (sampling by default), is served
on 127.0.0.1 with `--trust-remote-code`, once with `generate()` and once with continuous batching, and asked
through the `openai` client: greedy completions of several prompts sent at once equal `generate()`'s, a seed
repeats a sample, a prompt longer than the context is one 400 error, and SIGTERM stops the server and the
model's process.
"""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import torch
from helpers import NAMES, WORDS, free_port, tiny_config
from openai import BadRequestError, OpenAI
from openai_server import running_server, stop_server
from transformers import AutoTokenizer

from modeling_pg_gpt2 import PgGPT2ForCausalLM
from modeling_pg_gpt2.training.model_init import set_generation_defaults

pytestmark = pytest.mark.slow

PROMPTS = [f"{name}:\n{' '.join(WORDS[i : i + 1 + i % 4]).capitalize()}" for i, name in enumerate(NAMES * 2)]
NEW_TOKENS = 10
CONTEXT = 64
# Continuous batching with a cache and batches sized for a tiny model (the defaults size them from the memory).
CB_FLAGS = ["--continuous-batching", "--cb-num-blocks", "32", "--cb-block-size", "16", "--cb-max-batch-tokens", "64"]


@pytest.fixture(scope="module")
def served_folder(tmp_path_factory, tokenizer_dir) -> tuple[Path, PgGPT2ForCausalLM]:
    folder = tmp_path_factory.mktemp("served")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eot = tokenizer.eos_token_id
    torch.manual_seed(0)
    config = tiny_config(
        vocab_size=len(tokenizer), n_positions=CONTEXT, initializer_range=0.3, bos_token_id=eot, eos_token_id=eot
    )  # a wide init: greedy continuations vary, so a wrong token shows
    model = PgGPT2ForCausalLM(config).eval()
    set_generation_defaults(model, tokenizer)  # as run_clm.py saves a model: sampling (top-k 50) by default
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


def serve_command(folder: Path, port: int, how: str) -> list[str]:
    """The installed `pg-gpt2-serve` command, or `python -m modeling_pg_gpt2.cli.serve`: the model's process, which
    transformers starts with "spawn", imports the main module of either, where the classes are made to resolve."""
    program = [str(Path(sys.executable).with_name("pg-gpt2-serve"))]
    if how == "module":
        program = [sys.executable, "-m", "modeling_pg_gpt2.cli.serve"]
    return [*program, str(folder), "--trust-remote-code", "--host", "127.0.0.1", "--port", str(port)]


@pytest.mark.parametrize(
    ("how", "flags"), [("script", []), ("module", CB_FLAGS)], ids=["generate", "continuous-batching"]
)
def test_served_completions_equal_generate(served_folder, tmp_path, how, flags):
    folder, model = served_folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    expected = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1] :]
            expected.append(tokenizer.decode(tokens, skip_special_tokens=True))
    assert len(set(expected)) == len(PROMPTS)

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "server.log"
    with running_server([*serve_command(folder, port, how), *flags], port, log, env) as (base_url, server):
        client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)

        def complete(prompt: str, **sampling) -> str:
            settings = sampling or {"temperature": 0}
            answer = client.completions.create(model=str(folder), prompt=prompt, max_tokens=NEW_TOKENS, **settings)
            return answer.choices[0].text

        with ThreadPoolExecutor(len(PROMPTS)) as pool:  # all at once: with continuous batching, batched together
            assert list(pool.map(complete, PROMPTS)) == expected

        samples = [complete(PROMPTS[0], temperature=1.0, seed=seed) for seed in (1, 1, 2)]
        assert samples[0] == samples[1]
        assert samples[0] != expected[0] or samples[2] != expected[0]  # sampling, not the greedy text

        with pytest.raises(BadRequestError) as error:
            complete(" ".join(WORDS * 5))
        assert f"but the model takes at most {CONTEXT}" in error.value.response.json()["detail"]

        assert psutil.Process(server.pid).children()  # transformers runs the model in a process of its own
        assert stop_server(server) == (-signal.SIGTERM, [])  # and it stops them all
    output = log.read_text()
    assert "Application shutdown complete." in output and "Traceback" not in output
