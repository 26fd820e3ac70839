"""A saved pg_gpt2 folder is self-contained remote code: it loads and generates where the package is absent.

The child process runs with `python -I` from an empty directory and with `modeling_pg_gpt2` made
unimportable, so only the files that `save_pretrained` copied can supply the classes. Set
PG_GPT2_REMOTE_PYTHON to another interpreter, and PG_GPT2_REMOTE_TRANSFORMERS to the transformers
version it must have (`make test-oldest` does, with the oldest supported release), to run the same
check under that release.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, pipeline

from modeling_pg_gpt2 import PgGPT2ForCausalLM

REMOTE_PYTHON = os.environ.get("PG_GPT2_REMOTE_PYTHON", sys.executable)
PROMPTS = ["The quick brown fox", "Tomorrow, and tomorrow, and tomorrow"]

CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_pg_gpt2"] = None  # the package must not be importable here
    import torch, transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    folder, prompts = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
        greedy = model.generate(**batch, max_new_tokens=12, do_sample=False)
    generator = pipeline("text-generation", model=folder, trust_remote_code=True)
    texts = [out[0]["generated_text"] for out in generator(prompts, max_new_tokens=12, do_sample=False)]
    print(json.dumps({
        "transformers": transformers.__version__,
        "module": type(model).__module__,
        "logits": logits.tolist(),
        "greedy": greedy.tolist(),
        "texts": texts,
    }))
    """
)


def _tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """A small byte-level BPE built right here with `tokenizers`, saved the way users save theirs."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=64,
    )


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory) -> tuple[Path, PgGPT2ForCausalLM, PreTrainedTokenizerFast]:
    folder = tmp_path_factory.mktemp("pg_gpt2_model")
    tokenizer = _tokenizer([p * 20 for p in PROMPTS] + ["Out, out, brief candle! Life's but a walking shadow."] * 20)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tokenizer), bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    model = PgGPT2ForCausalLM(config).eval()
    model.generation_config.pad_token_id = eot
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


def test_save_pretrained_writes_auto_map_and_exactly_the_two_source_files(saved_folder):
    folder, _, _ = saved_folder
    assert sorted(p.name for p in folder.glob("*.py")) == ["configuration_pg_gpt2.py", "modeling_pg_gpt2.py"]
    package = Path(__file__).parents[1] / "modeling_pg_gpt2"
    for name in ("configuration_pg_gpt2.py", "modeling_pg_gpt2.py"):
        assert (folder / name).read_text() == (package / name).read_text()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "pg_gpt2"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_pg_gpt2.PgGPT2Config",
        "AutoModelForCausalLM": "modeling_pg_gpt2.PgGPT2ForCausalLM",
    }
    assert (folder / "model.safetensors").exists() and (folder / "generation_config.json").exists()


@pytest.mark.slow
def test_fresh_process_loads_with_trust_remote_code_and_generates_the_same(saved_folder, tmp_path):
    folder, model, tokenizer = saved_folder
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [REMOTE_PYTHON, "-I", "-c", CHILD, str(folder), json.dumps(PROMPTS)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    child = json.loads(result.stdout.strip().splitlines()[-1])
    assert child["module"].startswith("transformers_modules."), child["module"]
    assert child["transformers"] == os.environ.get("PG_GPT2_REMOTE_TRANSFORMERS", child["transformers"])

    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
        greedy = model.generate(**batch, max_new_tokens=12, do_sample=False)
    assert (torch.tensor(child["logits"]) - logits).abs().max().item() <= 1e-5
    assert child["greedy"] == greedy.tolist()
    local = pipeline("text-generation", model=model, tokenizer=tokenizer)
    texts = [out[0]["generated_text"] for out in local(PROMPTS, max_new_tokens=12, do_sample=False)]
    assert child["texts"] == texts
    assert all(
        text.startswith(prompt) and len(text) > len(prompt) for text, prompt in zip(texts, PROMPTS, strict=True)
    )
