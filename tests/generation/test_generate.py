"""generate.py: streaming, sampling options, prompts, context limits, against transformers' GPT-2 as oracle."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, gpt2_twin, saved_small_model
from transformers import AutoTokenizer

from modeling_pg_gpt2 import PgGPT2ForCausalLM
from modeling_pg_gpt2.common.errors import UserError
from modeling_pg_gpt2.generation.sampling import GenerationArguments, generate_text, read_prompts

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
CONTEXT = 32
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"


class Recorder(io.StringIO):
    """A text stream that remembers each write, to see the text arrive piece by piece."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A small random pg_gpt2 saved like run_clm.py saves one, with a tokenizer trained here."""
    return saved_small_model(tmp_path_factory.mktemp("generate"), TEXT, CONTEXT)


def test_text_is_streamed_as_it_is_generated(model_dir):
    stream = Recorder()
    [[text]] = generate_text(model_dir, ["ROMEO:"], GenerationArguments(max_new_tokens=25, seed=0), stream=stream)
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")
    assert len(stream.writes) > 2  # pieces, not one print at the end
    assert "".join(stream.writes) == text + "\n"


def test_greedy_decoding_matches_transformers_gpt2(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    twin = gpt2_twin(PgGPT2ForCausalLM.from_pretrained(model_dir).eval())
    prompt = "But soft, what"
    args = GenerationArguments(max_new_tokens=12, do_sample=False)
    [[text]] = generate_text(model_dir, [prompt], args, stream=io.StringIO())
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    expected = twin.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert text == tokenizer.decode(expected[0], skip_special_tokens=True)


def test_seed_makes_samples_reproducible(model_dir):
    def sample(seed: int) -> str:
        args = GenerationArguments(max_new_tokens=20, seed=seed, temperature=1.5, top_k=0)
        return generate_text(model_dir, ["It is"], args, stream=io.StringIO())[0][0]

    assert sample(0) == sample(0)
    assert sample(0) != sample(1)


def test_several_prompts_and_samples(model_dir):
    stream = io.StringIO()
    args = GenerationArguments(max_new_tokens=8, num_return_sequences=3, seed=0, repetition_penalty=1.3, top_p=0.9)
    results = generate_text(model_dir, ["ROMEO:", "JULIET:"], args, stream=stream)
    assert [len(samples) for samples in results] == [3, 3]
    assert all(s.startswith("ROMEO:") for s in results[0]) and all(s.startswith("JULIET:") for s in results[1])
    assert stream.getvalue().count("--- sample 3/3 ---") == 2


def test_prompts_file_text_and_json(tmp_path):
    lines = tmp_path / "prompts.txt"
    lines.write_text("ROMEO:\n\nJULIET:\n")
    assert read_prompts(["First"], str(lines)) == ["First", "ROMEO:", "JULIET:"]
    multi_line = tmp_path / "prompts.json"
    multi_line.write_text(json.dumps(["ROMEO:\nBut soft,"]))
    assert read_prompts([], str(multi_line)) == ["ROMEO:\nBut soft,"]
    assert read_prompts([], None) == [""]  # unconditional sample
    multi_line.write_text('{"prompt": "x"}')
    with pytest.raises(UserError, match="JSON list of strings"):
        read_prompts([], str(multi_line))


def test_unconditional_sample_starts_from_end_of_text(model_dir):
    [[text]] = generate_text(model_dir, [""], GenerationArguments(max_new_tokens=10, seed=0), stream=io.StringIO())
    assert text and "<|endoftext|>" not in text


def test_context_limits(model_dir, caplog):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    too_long = "the sun " * CONTEXT
    with pytest.raises(UserError, match=f"tokens long, but the model's context is {CONTEXT} tokens"):
        generate_text(model_dir, [too_long], GenerationArguments(), stream=io.StringIO())
    prompt = "the sun " * 5
    prompt_tokens = len(tokenizer(prompt)["input_ids"])
    with caplog.at_level(logging.WARNING, logger="modeling_pg_gpt2.generation.sampling"):
        generate_text(model_dir, [prompt], GenerationArguments(max_new_tokens=100, do_sample=False), io.StringIO())
    assert f"Generating {CONTEXT - prompt_tokens} tokens instead of 100" in caplog.text
    with pytest.raises(UserError, match="no such folder"):
        generate_text(str(model_dir.parent / "missing"), ["x"], GenerationArguments(), stream=io.StringIO())


@pytest.mark.slow
def test_command_line_error_is_one_line(model_dir):
    """(The command line's success path runs in test_run_clm.py, on a trained model.)"""
    bad = subprocess.run(
        [sys.executable, "generate.py", str(model_dir), "word " * 100],
        cwd=ROOT, env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the prompt")
