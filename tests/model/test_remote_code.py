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
from helpers import tiny_config
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, pipeline

from modeling_pg_gpt2 import PgGPT2ForCausalLM, PgGPT2ForSequenceClassification
from modeling_pg_gpt2.hub.push import remote_code_files

REMOTE_PYTHON = os.environ.get("PG_GPT2_REMOTE_PYTHON", sys.executable)
PROMPTS = ["The quick brown fox", "Tomorrow, and tomorrow, and tomorrow"]

CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_pg_gpt2"] = None  # the package must not be importable here
    import torch, transformers
    from transformers import (
        AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer, pipeline,
    )

    folder, prompts = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
        greedy = model.generate(**batch, max_new_tokens=12, do_sample=False)
    generator = pipeline("text-generation", model=folder, trust_remote_code=True)
    texts = [out[0]["generated_text"] for out in generator(prompts, max_new_tokens=12, do_sample=False)]

    # The task heads: from the causal-LM folder (pre-trained body, new head) and from a saved classifier.
    # transformers 5 has no question-answering pipeline: that head answers through its forward.
    heads = {}
    for auto, task in (
        (AutoModelForSequenceClassification, "text-classification"),
        (AutoModelForTokenClassification, "token-classification"),
        (AutoModelForQuestionAnswering, None),
    ):
        head_model = auto.from_pretrained(folder, num_labels=2, trust_remote_code=True).eval()
        with torch.no_grad():
            body = head_model.transformer(**batch).last_hidden_state
            if task:
                result = repr(pipeline(task, model=head_model, tokenizer=tokenizer)(prompts[0]))
            else:
                out = head_model(**batch)
                result = [list(out.start_logits.shape), list(out.end_logits.shape)]
        heads[type(head_model).__name__] = {"body": body.tolist(), "result": result}
    # The bare model, built the way vLLM's and SGLang's Transformers backends build it, then given the weights.
    bare = AutoModel.from_config(AutoConfig.from_pretrained(folder, trust_remote_code=True), trust_remote_code=True)
    bare.load_state_dict(AutoModel.from_pretrained(folder, trust_remote_code=True).state_dict())
    with torch.no_grad():
        heads[type(bare).__name__] = {"body": bare.eval()(**batch).last_hidden_state.tolist(), "result": None}
    classifier = AutoModelForSequenceClassification.from_pretrained(sys.argv[3], trust_remote_code=True)
    with torch.no_grad():
        classifier_logits = classifier(**batch).logits
    print(json.dumps({
        "heads": heads,
        "classifier_logits": classifier_logits.tolist(),
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


# The remote code: the model file, the files it imports relatively, and the task heads.
SOURCE_FILES = [
    "batched_matvec.py",
    "configuration_pg_gpt2.py",
    "fused_loss.py",
    "model_inputs.py",
    "modeling_pg_gpt2.py",
    "task_heads.py",
]
HEADS_AUTO_MAP = {
    "AutoModelForSequenceClassification": "task_heads.PgGPT2ForSequenceClassification",
    "AutoModelForTokenClassification": "task_heads.PgGPT2ForTokenClassification",
    "AutoModelForQuestionAnswering": "task_heads.PgGPT2ForQuestionAnswering",
}


def test_save_pretrained_writes_auto_map_and_exactly_the_source_files(saved_folder):
    folder, _, _ = saved_folder
    assert sorted(p.name for p in folder.glob("*.py")) == SOURCE_FILES
    package = Path(__file__).parents[2] / "modeling_pg_gpt2"
    for name in SOURCE_FILES:
        assert (folder / name).read_text() == (package / name).read_text()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "pg_gpt2"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_pg_gpt2.PgGPT2Config",
        "AutoModel": "modeling_pg_gpt2.PgGPT2Model",
        "AutoModelForCausalLM": "modeling_pg_gpt2.PgGPT2ForCausalLM",
        **HEADS_AUTO_MAP,
    }
    assert remote_code_files(config, folder) == SOURCE_FILES  # what push_to_hub.py uploads
    assert (folder / "model.safetensors").exists() and (folder / "generation_config.json").exists()


@pytest.fixture(scope="module")
def classifier_folder(saved_folder, tmp_path_factory) -> tuple[Path, PgGPT2ForSequenceClassification]:
    """A sequence classifier saved on its own: its auto_map names the head, the files come with it."""
    folder, _, _ = saved_folder
    torch.manual_seed(1)
    classifier = PgGPT2ForSequenceClassification.from_pretrained(folder, num_labels=3).eval()
    classifier_folder = tmp_path_factory.mktemp("pg_gpt2_classifier")
    classifier.save_pretrained(classifier_folder)
    assert sorted(p.name for p in classifier_folder.glob("*.py")) == SOURCE_FILES
    auto_map = json.loads((classifier_folder / "config.json").read_text())["auto_map"]
    assert {"AutoConfig": "configuration_pg_gpt2.PgGPT2Config", **HEADS_AUTO_MAP}.items() <= auto_map.items()
    return classifier_folder, classifier


@pytest.mark.slow
def test_fresh_process_loads_with_trust_remote_code_and_generates_the_same(saved_folder, classifier_folder, tmp_path):
    folder, model, tokenizer = saved_folder
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [REMOTE_PYTHON, "-I", "-c", CHILD, str(folder), json.dumps(PROMPTS), str(classifier_folder[0])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
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

    # The heads load the pre-trained body from the causal-LM folder and run in their pipelines.
    with torch.no_grad():
        body = model.transformer(**batch).last_hidden_state
    heads = child["heads"]
    assert set(heads) == {
        "PgGPT2Model",
        *(f"PgGPT2For{task}" for task in ("SequenceClassification", "TokenClassification", "QuestionAnswering")),
    }
    for name, head in heads.items():
        assert (torch.tensor(head["body"]) - body).abs().max().item() <= 1e-5, name
    assert "'label': 'LABEL_" in heads["PgGPT2ForSequenceClassification"]["result"]
    assert "'entity': 'LABEL_" in heads["PgGPT2ForTokenClassification"]["result"]
    assert heads["PgGPT2ForQuestionAnswering"]["result"] == [list(batch["input_ids"].shape)] * 2
    with torch.no_grad():
        classifier_logits = classifier_folder[1](**batch).logits
    assert (torch.tensor(child["classifier_logits"]) - classifier_logits).abs().max().item() <= 1e-5


TOKENIZER_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_pg_gpt2"] = None
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder, prompts = sys.argv[1], json.loads(sys.argv[2])
    loaded = {
        "PreTrainedTokenizerFast": PreTrainedTokenizerFast.from_pretrained(folder),
        "AutoTokenizer, trust_remote_code": AutoTokenizer.from_pretrained(folder, trust_remote_code=True),
    }
    print(json.dumps({form: tokenizer(prompts)["input_ids"] for form, tokenizer in loaded.items()}))
    """
)


@pytest.mark.slow
def test_tokenizer_alone_loads_in_a_terminal_without_a_question_or_a_warning(saved_folder, tmp_path):
    """docs/using.md's two ways to load only the tokenizer of a model folder, run with a pseudo-terminal as stdin
    (where transformers would ask "Do you wish to run the custom code?" and wait): nothing is asked or warned."""
    import pty

    folder, _, tokenizer = saved_folder
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    command = [REMOTE_PYTHON, "-I", "-c", TOKENIZER_CHILD, str(folder), json.dumps(PROMPTS)]
    terminal, child_side = pty.openpty()
    try:
        result = subprocess.run(
            command, cwd=tmp_path, env=env, stdin=child_side, stdout=subprocess.PIPE, stderr=child_side, timeout=120
        )
        os.close(child_side)
        child_side = None
        terminal_output = b""
        while True:  # what the child wrote to the terminal (stderr): the question and the warnings go there
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # the child's side is closed and everything was read
                break
            if not chunk:
                break
            terminal_output += chunk
    finally:
        os.close(terminal)
        if child_side is not None:
            os.close(child_side)
    assert result.returncode == 0, terminal_output.decode(errors="replace")[-3000:]
    # transformers' warnings go to the terminal (stderr); input() writes its question to stdout.
    said = terminal_output.decode(errors="replace") + result.stdout.decode(errors="replace")
    assert "Do you wish to run the custom code" not in said, said
    assert "You are using a model of type" not in said, said
    expected = tokenizer(PROMPTS)["input_ids"]
    assert json.loads(result.stdout.decode().strip().splitlines()[-1]) == dict.fromkeys(
        ("PreTrainedTokenizerFast", "AutoTokenizer, trust_remote_code"), expected
    )
