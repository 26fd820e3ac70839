"""push_to_hub.py end to end, against a local Hub (tests/hub_server.py) on 127.0.0.1.

The real huggingface_hub and transformers clients run in subprocesses whose environment points them at
the local server (HF_ENDPOINT, a fresh HF_HOME, HF_HUB_DISABLE_XET=1) before they are imported. Loading
happens in a fresh process where `modeling_pg_gpt2` cannot be imported, so the model can only come from
the files on the (local) Hub. The oracle is the local folder loaded in this process with the package's
own classes, and transformers' `GPT2LMHeadModel` for the `--as_gpt2` export.

Independent pushes run concurrently (one process each) to keep the file within its time budget.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from hub_server import READ_TOKEN, USER, WRITE_TOKEN, HubServer
from huggingface_hub import ModelCard
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, pipeline

from modeling_pg_gpt2 import PgGPT2Config, PgGPT2ForCausalLM
from modeling_pg_gpt2.common.outputs import read_config
from modeling_pg_gpt2.data.corpus import CorpusArguments
from modeling_pg_gpt2.hub.push import human_size, serving_note
from modeling_pg_gpt2.reports.model_card import write_model_card
from modeling_pg_gpt2.reports.plots import PLOTS
from modeling_pg_gpt2.reports.run_record import RunInfo

pytestmark = pytest.mark.slow  # every test pushes or loads through push_to_hub.py and transformers in subprocesses

SCRIPT = ROOT / "push_to_hub.py"
REPO = f"{USER}/tiny-pg-gpt2"
GPT2_REPO = f"{USER}/tiny-pg-gpt2-native"
PROMPT = "To be, or not to be"
PLOT_FILES = tuple(PLOTS)  # the plots run_clm.py writes
# What a model user needs, and nothing else from a training folder.
EXPECTED_FILES = {
    "model.safetensors",
    "config.json",
    "configuration_pg_gpt2.py",
    "modeling_pg_gpt2.py",
    "batched_matvec.py",
    "fused_loss.py",
    "model_inputs.py",
    "task_heads.py",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "metrics.json",
    "README.md",
    *PLOT_FILES,
}
# What run_clm.py leaves next to the model that must stay local by default.
TRAINING_LEFTOVERS = {
    "checkpoint-4/model.safetensors": b"stale weights",
    "checkpoint-4/optimizer.pt": b"optimizer state " * 64,
    "checkpoint-4/trainer_state.json": b"{}",
    "runs/Jan01_00-00-00/events.out.tfevents.1.host": b"tensorboard",
    "trainer_state.json": b'{"log_history": []}',
    "training_args.bin": b"pickled arguments",
    "all_results.json": b"{}",
}
CORPUS = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles",
] * 8


def client_env(hub_url: str, home: Path, token: str | None = WRITE_TOKEN) -> dict[str, str]:
    """The environment of a client process: the local Hub, an empty HF_HOME, and no real credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    env.update(
        HF_ENDPOINT=hub_url,
        HF_HOME=str(home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
        TRANSFORMERS_VERBOSITY="error",
    )
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def push(folder: Path, repo_id: str, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(folder), repo_id, *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def run_all(*calls):
    """Run `(function, *args)` calls concurrently (each one spawns processes); return their results."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(fn, *args) for fn, *args in calls]
        return [future.result() for future in futures]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def hub():
    server = HubServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A folder laid out like run_clm.py's output, with an untrained tiny model.

    Its BPE tokenizer, metrics, plots and model card (written by the project's card writer), plus the
    checkpoints and logs that must not be uploaded.
    """
    folder = tmp_path_factory.mktemp("run") / "tiny-shakespeare"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    eot = tokenizer.eos_token_id
    config = PgGPT2Config.from_preset(
        "tiny",
        vocab_size=len(tokenizer),
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=64,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    PgGPT2ForCausalLM(config).save_pretrained(folder)
    metrics = {"eval_loss": 5.64, "eval_perplexity": 281.3, "eval_accuracy": 0.02, "eval_bits_per_byte": 2.9}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    for name in PLOT_FILES:
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + name.encode() + bytes(32))
    for path, data in TRAINING_LEFTOVERS.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    write_model_card(folder, run=RunInfo(corpus=CorpusArguments(dataset_name="shakespeare")))
    assert {p.name for p in folder.iterdir() if p.is_file()} >= EXPECTED_FILES
    return folder


def reference(folder: Path) -> dict:
    """What the local folder computes, with the package's own classes: logits, greedy ids and greedy text."""
    model = PgGPT2ForCausalLM.from_pretrained(folder).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
        greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = generator(PROMPT, max_new_tokens=12, do_sample=False)[0]["generated_text"]
    return {"ids": ids, "logits": logits, "greedy": greedy, "text": text}


# Runs in a fresh `python -I` process, fresh HF_HOME, with the package made unimportable: everything it
# loads comes from the local Hub.
FRESH_LOAD = r"""
import re, sys
sys.modules["modeling_pg_gpt2"] = None
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, pipeline

repo, gpt2_repo, prompt, out = sys.argv[1:5]
tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True).eval()
ids = tokenizer(prompt, return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(ids).logits
    greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
generator = pipeline("text-generation", model=repo, trust_remote_code=True)
text = generator(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]

gpt2 = GPT2LMHeadModel.from_pretrained(gpt2_repo).eval()
auto_gpt2 = AutoModelForCausalLM.from_pretrained(gpt2_repo)  # no trust_remote_code
with torch.no_grad():
    gpt2_logits = gpt2(ids).logits

# The usage snippets of both model cards, run as a reader would copy them.
snippets = 0
for card_repo in (repo, gpt2_repo):
    for code in re.findall(r"```python\n(.*?)```", ModelCard.load(card_repo).text, re.DOTALL):
        exec(code, {})
        snippets += 1

torch.save(
    {
        "ids": ids, "logits": logits, "greedy": greedy, "text": text, "gpt2_logits": gpt2_logits,
        "model_module": type(model).__module__, "pipeline_module": type(generator.model).__module__,
        "auto_gpt2_class": type(auto_gpt2).__name__, "snippets": snippets,
        "imported": sorted(m for m in sys.modules if m.startswith("modeling_pg_gpt2") and sys.modules[m]),
    },
    out,
)
"""


@pytest.fixture(scope="module")
def published(hub, model_dir, tmp_path_factory) -> dict:
    """Push the folder; then, concurrently, push it again, push a changed copy to a branch, push the export.

    Returns the processes' results and the number of commits on main right after the first push.
    """
    work = tmp_path_factory.mktemp("clients")
    env = client_env(hub.url, work / "hf_home")
    card = (model_dir / "README.md").read_bytes()
    first = push(model_dir, REPO, env)
    assert first.returncode == 0, first.stderr
    commits_after_first = len(hub.repo(REPO).log("main"))

    changed = work / "changed"
    shutil.copytree(model_dir, changed)
    metrics = json.loads((changed / "metrics.json").read_text())
    (changed / "metrics.json").write_text(json.dumps({**metrics, "eval_perplexity": 99.0}))
    again, branch, gpt2 = run_all(
        (push, model_dir, REPO, env),
        (push, changed, REPO, env, "--revision", "dev", "--commit_message", "Better perplexity"),
        (push, model_dir, GPT2_REPO, env, "--as_gpt2"),
    )
    for result in (first, again, branch, gpt2):
        assert result.returncode == 0, result.stderr
        assert "serving support" not in result.stdout
    return {
        "first": first, "again": again, "branch": branch, "gpt2": gpt2, "commits": commits_after_first, "card": card
    }  # fmt: skip


def test_a_folder_saved_before_serving_support_is_pushed_with_a_note(tmp_path):
    """Its code would serve NaN in vLLM if its config gained the AutoModel entry, so it is published as it is
    (transformers loads it), with a note; a folder saved now gets none (the pushes below print none)."""
    PgGPT2ForCausalLM(PgGPT2Config(vocab_size=64, n_positions=16, n_embd=8, n_layer=1, n_head=2)).save_pretrained(
        tmp_path
    )
    config = read_config(tmp_path)
    assert serving_note(config, tmp_path) is None
    del config["auto_map"]["AutoModel"]
    note = serving_note(config, tmp_path)
    assert note.startswith(f"note: {tmp_path} was saved before serving support") and "docs/serving.md" in note


def test_uploads_exactly_the_model_files(hub, model_dir, published):
    head = hub.repo(REPO).resolve("main")
    # `.gitattributes` is the file the Hub itself creates with every repository.
    assert set(head.files) == EXPECTED_FILES | {".gitattributes"}
    for name in EXPECTED_FILES - {"README.md"}:
        assert hub.read(REPO, name) == (model_dir / name).read_bytes(), name
    # The card is published pointing at the repository; the folder's own card is left as it was.
    assert (model_dir / "README.md").read_bytes() == published["card"]
    assert head.files["model.safetensors"].sha256 is not None, "weights must be stored with LFS"

    card = ModelCard(hub.read(REPO, "README.md").decode())
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert "custom_code" in card.data.tags
    assert card.data.license
    perplexity = [r for r in card.data.eval_results if r.metric_type == "perplexity"]
    assert [r.metric_value for r in perplexity] == [281.3]
    assert perplexity[0].dataset_type == "shakespeare"
    for name in PLOT_FILES:
        assert f"]({name})" in card.text, f"the card does not show {name}"
    assert f'model="{REPO}"' in card.text and f'from_pretrained("{REPO}"' in card.text
    assert f"vllm serve {REPO} --model-impl transformers --trust-remote-code --dtype float32" in card.text
    assert str(model_dir) not in card.text


def test_fresh_process_loads_the_same_model_from_the_hub(hub, model_dir, published, tmp_path):
    expected = reference(model_dir)
    out = tmp_path / "loaded.pt"
    env = client_env(hub.url, tmp_path / "fresh_hf_home", token=None)
    proc = subprocess.run(
        [sys.executable, "-I", "-c", FRESH_LOAD, REPO, GPT2_REPO, PROMPT, str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = torch.load(out)

    assert loaded["imported"] == [], "the package must not be importable in the fresh process"
    assert loaded["model_module"].startswith("transformers_modules"), loaded["model_module"]
    assert loaded["pipeline_module"].startswith("transformers_modules"), loaded["pipeline_module"]
    assert torch.equal(loaded["ids"], expected["ids"])
    torch.testing.assert_close(loaded["logits"], expected["logits"], rtol=0, atol=1e-6)
    assert torch.equal(loaded["greedy"], expected["greedy"])
    assert loaded["text"] == expected["text"]
    # The native export: transformers' own GPT-2 computes the same function, without remote code.
    assert loaded["auto_gpt2_class"] == "GPT2LMHeadModel"
    torch.testing.assert_close(loaded["gpt2_logits"], expected["logits"], rtol=1e-5, atol=1e-5)
    assert loaded["snippets"] >= 4


def test_generate_loads_a_hub_id_and_names_a_missing_one_at_once(hub, published, tmp_path):
    """generate.py looks a Hub id up once: a pushed model generates; a missing repository is one line."""
    env = client_env(hub.url, tmp_path / "hf_home", token=None)

    def generate(model: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(ROOT / "generate.py"), model, PROMPT, "--max_new_tokens", "4", "--seed", "0"]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)

    found, missing = run_all((generate, REPO), (generate, f"{USER}/no-such-model"))
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith(PROMPT) and len(found.stdout.strip()) > len(PROMPT)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert (
        missing.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: no such folder: {USER}/no-such-model, and {hub.url.rstrip('/')} has no repository")
    ), missing.stderr


def test_repush_of_an_unchanged_folder_makes_no_commit(hub, published):
    assert len(hub.repo(REPO).log("main")) == published["commits"] == 2
    assert "up to date" in published["again"].stdout
    assert "no new commit" in published["again"].stdout


def test_revision_pushes_one_commit_to_a_branch(hub, published):
    repo = hub.repo(REPO)
    main, dev = repo.log("main"), repo.log("dev")
    assert [c.sha for c in dev[1:]] == [c.sha for c in main], "dev is main plus one commit"
    new, parent = dev[0], dev[1]
    assert new.title == "Better perplexity"
    changed = {path for path in new.files if new.files[path] != parent.files.get(path)}
    assert changed == {"metrics.json"}
    assert json.loads(hub.read(REPO, "metrics.json", "dev"))["eval_perplexity"] == 99.0
    assert json.loads(hub.read(REPO, "metrics.json", "main"))["eval_perplexity"] == 281.3


def test_as_gpt2_pushes_a_native_gpt2_repository(hub, published):
    files = set(hub.repo(GPT2_REPO).resolve("main").files)
    assert not any(name.endswith(".py") for name in files)
    assert {"model.safetensors", "config.json", "tokenizer.json", "metrics.json", "README.md"} <= files
    config = json.loads(hub.read(GPT2_REPO, "config.json"))
    assert config["model_type"] == "gpt2" and "auto_map" not in config
    card = ModelCard(hub.read(GPT2_REPO, "README.md").decode())
    assert "custom_code" not in card.data.tags
    assert "trust_remote_code=True" not in card.text
    assert f'model="{GPT2_REPO}"' in card.text
    assert f"vllm serve {GPT2_REPO} --dtype float32\n" in card.text  # vLLM's own GPT-2, no remote code


@pytest.fixture
def oversized_tokenizer_dir(model_dir, tmp_path) -> Path:
    """A folder whose tokenizer has more tokens than the model has embeddings."""
    folder = tmp_path / "broken"
    shutil.copytree(model_dir, folder)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(5)])
    tokenizer.save_pretrained(folder)
    return folder


def test_refusals_are_one_line_and_dry_run_sends_nothing(hub, model_dir, oversized_tokenizer_dir, tmp_path):
    quiet_dry, quiet_broken = HubServer().start(), HubServer().start()
    home = tmp_path / "hf_home"
    vocab_size = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    commits_before = {repo_id: len(repo.commits) for repo_id, repo in hub.state.repos.items()}
    try:
        results = run_all(
            (push, model_dir, REPO, client_env(quiet_dry.url, home), "--dry_run", "--include", "runs/*"),
            (push, oversized_tokenizer_dir, REPO, client_env(quiet_broken.url, home)),
            (push, model_dir, REPO, client_env(hub.url, home, token=None)),
            (push, model_dir, "no-namespace", client_env(hub.url, home)),
            (push, model_dir, REPO, client_env(hub.url, home, token="hf_not_a_real_token")),
            (push, model_dir, REPO, client_env(hub.url, home, token=READ_TOKEN)),
            (push, model_dir, REPO, client_env(f"http://127.0.0.1:{free_port()}", home)),
        )
        dry, broken, no_token, bad_id, bad_token, read_only, offline = results
        dry_requests, broken_requests = quiet_dry.requests, quiet_broken.requests
    finally:
        quiet_dry.stop()
        quiet_broken.stop()

    assert dry.returncode == 0, dry.stderr
    assert dry_requests == [], "--dry_run must not contact the Hub"
    listed = {path: size for size, path in re.findall(r"^\s+(\d+(?:\.\d)? [KMG]?B)\s+(\S+)$", dry.stdout, re.M)}
    tensorboard = next(path for path in TRAINING_LEFTOVERS if path.startswith("runs/"))
    assert set(listed) == EXPECTED_FILES | {tensorboard}, "the model files plus what --include asked for"
    for path, size in listed.items():
        if path != "README.md":  # the card listed is the one published, which names the repository
            assert size == human_size((model_dir / path).stat().st_size), path
    not_uploaded = dry.stdout.split("not uploaded")[1]
    assert "checkpoint-4/" in not_uploaded and "trainer_state.json" in not_uploaded

    expected_errors = {
        "broken": (broken, f"tokenizer has {vocab_size + 5} tokens but the model only {vocab_size}"),
        "no token": (no_token, "no Hugging Face token: set HF_TOKEN or run `hf auth login`"),
        "bad repo id": (bad_id, "must be 'namespace/name'"),
        "bad token": (bad_token, "rejected your token (401 Unauthorized)"),
        "read-only token": (read_only, f"no write access to {REPO} (403 Forbidden"),
        "network down": (offline, "is unreachable"),
    }
    for case, (result, message) in expected_errors.items():
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, f"{case}: {result.stderr}"
        assert lines[-1].startswith("error: ") and message in lines[-1], f"{case}: {result.stderr}"
        assert "Traceback" not in result.stderr, case
    assert "connection" not in read_only.stderr.lower(), "a 403 is not a network problem"
    assert broken_requests == [], "a folder that fails validation must not reach the Hub"
    assert {repo_id: len(repo.commits) for repo_id, repo in hub.state.repos.items()} == commits_before


@pytest.mark.online
def test_real_hub_smoke(model_dir, tmp_path):
    """Opt-in: PG_GPT2_HUB_SMOKE_REPO=you/scratch-repo and a write token (HF_TOKEN or `hf auth login`)."""
    repo_id = os.environ.get("PG_GPT2_HUB_SMOKE_REPO")
    if not repo_id:
        pytest.skip("set PG_GPT2_HUB_SMOKE_REPO=namespace/name (and a write token) to push to the real Hub")
    from huggingface_hub import get_token

    if get_token() is None:
        pytest.skip("no Hugging Face token")
    try:
        socket.create_connection(("huggingface.co", 443), timeout=5).close()
    except OSError:
        pytest.skip("huggingface.co is unreachable")
    env = {k: v for k, v in os.environ.items() if k != "HF_ENDPOINT"}
    result = push(model_dir, repo_id, env, "--private")
    assert result.returncode == 0, result.stderr
    expected = reference(model_dir)
    env["HF_HOME"] = str(tmp_path / "hf_home")
    env.setdefault("HF_TOKEN", get_token())
    load = (
        "import sys, torch; sys.modules['modeling_pg_gpt2'] = None\n"
        "from transformers import AutoModelForCausalLM\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "torch.save(model(torch.load(sys.argv[2])).logits.detach(), sys.argv[3])\n"
    )
    torch.save(expected["ids"], tmp_path / "ids.pt")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", load, repo_id, str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected["logits"], rtol=0, atol=1e-6)
