"""GPT-2 <-> pg_gpt2 conversion. The oracle is transformers' own GPT2LMHeadModel holding the same random weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from modeling_pg_gpt2 import PgGPT2Config, PgGPT2ForCausalLM
from modeling_pg_gpt2.cli.commands import convert as main
from modeling_pg_gpt2.common.errors import UserError, run_cli
from modeling_pg_gpt2.export.convert import (
    convert_gpt2_checkpoint,
    convert_gpt2_to_pg,
    convert_pg_to_gpt2,
    resolve_checkpoint,
)
from modeling_pg_gpt2.export.layout import gpt2_state_dict_to_pg, pg_config_to_gpt2, pg_state_dict_to_gpt2

SHAPE = dict(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=299, eos_token_id=299)


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Random values in every parameter, biases and LayerNorms included (they start as constants), so that a
    swapped, dropped or untransposed tensor changes the logits."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return model.eval()


def random_gpt2(**overrides) -> GPT2LMHeadModel:
    return randomize(GPT2LMHeadModel(GPT2Config(**{**SHAPE, **overrides})))


def save_tokenizer(folder: Path) -> None:
    """A small byte-level BPE plus a generation config: the files a conversion must carry along."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(["to be, or not to be, that is the question"] * 20, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(folder)
    GenerationConfig(max_new_tokens=7, do_sample=True, top_k=5).save_pretrained(folder)


def save_original_format(model: GPT2LMHeadModel, folder: Path) -> None:
    """The layout of OpenAI's checkpoints as the Hub's `gpt2` repo serves them: no `transformer.` prefix,
    causal-mask buffers `attn.bias` / `attn.masked_bias`, no lm_head, `pytorch_model.bin`, an old config.json."""
    folder.mkdir(parents=True)
    config = model.config
    state = {k.removeprefix("transformer."): v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    n = config.n_positions
    for i in range(config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.uint8)).view(1, 1, n, n)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, folder / "pytorch_model.bin")
    old_config = {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_ctx": n,
        "summary_type": "cls_index",
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        **{key: getattr(config, key) for key in SHAPE},
    }
    (folder / "config.json").write_text(json.dumps(old_config))


def assert_same_logits(model: torch.nn.Module, oracle: torch.nn.Module) -> None:
    """Equal logits (<= 1e-5) on a left-padded batch (attention_mask + position_ids) and on an unpadded one."""
    ids = torch.randint(0, SHAPE["vocab_size"], (3, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    mask[1, :2] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        want = oracle(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        real = mask.bool()
        assert (got[real] - want[real]).abs().max() <= 1e-5
        assert (model(input_ids=ids).logits - oracle(input_ids=ids).logits).abs().max() <= 1e-5


@pytest.fixture(scope="module")
def gpt2_sources(tmp_path_factory) -> Path:
    """One random GPT-2 saved three ways: transformers' format, the same sharded, and the original format."""
    root = tmp_path_factory.mktemp("gpt2")
    model = random_gpt2()
    model.save_pretrained(root / "hf")
    model.save_pretrained(root / "sharded", max_shard_size="40KB")
    save_original_format(model, root / "original")
    for layout in ("hf", "sharded", "original"):
        save_tokenizer(root / layout)
    assert len(list((root / "sharded").glob("model-*.safetensors"))) > 1
    return root


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("layout", ["hf", "sharded", "original"])
def test_gpt2_to_pg_gives_gpt2s_logits(gpt2_sources: Path, layout: str, attn: str, tmp_path: Path) -> None:
    src = gpt2_sources / layout
    dst = convert_gpt2_to_pg(src, tmp_path / "pg")

    oracle = GPT2LMHeadModel.from_pretrained(gpt2_sources / "hf", attn_implementation=attn)
    assert_same_logits(PgGPT2ForCausalLM.from_pretrained(dst, attn_implementation=attn), oracle)
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "pg_gpt2" and config["n_layer"] == 2 and "auto_map" in config
    assert (dst / "modeling_pg_gpt2.py").is_file() and (dst / "configuration_pg_gpt2.py").is_file()
    # Tokenizer and generation settings travel along.
    assert (dst / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    text = "to be or not to be"
    assert AutoTokenizer.from_pretrained(dst)(text).input_ids == AutoTokenizer.from_pretrained(src)(text).input_ids
    assert GenerationConfig.from_pretrained(dst).max_new_tokens == 7


def test_pg_to_gpt2_and_back_is_exact(tmp_path: Path) -> None:
    pg = randomize(PgGPT2ForCausalLM(PgGPT2Config(**SHAPE)))
    pg.save_pretrained(tmp_path / "pg")
    save_tokenizer(tmp_path / "pg")

    gpt2_dir = convert_pg_to_gpt2(tmp_path / "pg", tmp_path / "gpt2")
    config = json.loads((gpt2_dir / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert "auto_map" not in config and not list(gpt2_dir.glob("*.py"))
    assert (gpt2_dir / "tokenizer.json").is_file() and GenerationConfig.from_pretrained(gpt2_dir).top_k == 5
    # Native GPT-2: the Auto classes load it without remote code.
    assert type(AutoModelForCausalLM.from_pretrained(gpt2_dir)) is GPT2LMHeadModel
    for attn in ("eager", "sdpa"):
        assert_same_logits(
            PgGPT2ForCausalLM.from_pretrained(tmp_path / "pg", attn_implementation=attn),
            GPT2LMHeadModel.from_pretrained(gpt2_dir, attn_implementation=attn),
        )

    back = convert_gpt2_to_pg(gpt2_dir, tmp_path / "back")
    before, after = load_file(tmp_path / "pg" / "model.safetensors"), load_file(back / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert PgGPT2Config.from_pretrained(back).to_diff_dict() == pg.config.to_diff_dict()


def test_state_dict_functions_round_trip_in_memory() -> None:
    pg = randomize(PgGPT2ForCausalLM(PgGPT2Config(**SHAPE)))
    gpt2 = GPT2LMHeadModel(pg_config_to_gpt2(pg.config)).eval()
    gpt2.load_state_dict(pg_state_dict_to_gpt2(pg.state_dict()), strict=True)
    assert_same_logits(pg, gpt2)
    back = gpt2_state_dict_to_pg(gpt2.state_dict(), pg.config)
    assert back.keys() == pg.state_dict().keys()
    assert all(torch.equal(tensor, back[name]) for name, tensor in pg.state_dict().items())


@pytest.mark.parametrize(
    "overrides",
    [
        {"tie_word_embeddings": False},
        {"reorder_and_upcast_attn": True},
        {"n_inner": 96, "activation_function": "gelu"},
    ],
    ids=["untied", "reorder_and_upcast", "n_inner"],
)
def test_gpt2_variants_convert(overrides: dict, tmp_path: Path) -> None:
    random_gpt2(**overrides).save_pretrained(tmp_path / "gpt2")
    oracle = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2", attn_implementation="eager")
    pg = convert_gpt2_checkpoint(tmp_path / "gpt2")
    assert_same_logits(pg, oracle)
    tied = pg.lm_head.weight is pg.transformer.wte.weight
    assert tied == oracle.config.tie_word_embeddings


def test_dtype_is_kept(tmp_path: Path) -> None:
    random_gpt2().half().save_pretrained(tmp_path / "gpt2")
    dst = convert_gpt2_to_pg(tmp_path / "gpt2", tmp_path / "pg")
    assert {t.dtype for t in load_file(dst / "model.safetensors").values()} == {torch.float16}
    assert json.loads((dst / "config.json").read_text())["dtype"] == "float16"


def _write_config(folder: Path, **values) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(values))
    return folder


@pytest.mark.parametrize(
    "flag",
    [
        {"add_cross_attention": True},
        {"scale_attn_by_inverse_layer_idx": True},
        {"scale_attn_weights": False},
    ],
)
def test_unsupported_gpt2_features_are_refused(flag: dict, tmp_path: Path) -> None:
    random_gpt2(**flag).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UserError, match=f"{next(iter(flag))}=.*pg_gpt2 does not implement"):
        convert_gpt2_to_pg(tmp_path / "gpt2", tmp_path / "pg")
    assert not (tmp_path / "pg").exists()


def test_bad_sources_are_refused_with_one_line(gpt2_sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = {
        "no such folder": tmp_path / "missing",
        "found model_type 'llama', expected 'gpt2'": _write_config(tmp_path / "llama", model_type="llama"),
        "has no config.json": tmp_path / "empty",
        "no weights in .* expected model.safetensors or pytorch_model.bin": _write_config(
            tmp_path / "no-weights", model_type="gpt2"
        ),
    }
    (tmp_path / "empty").mkdir()
    # Weights that do not fit their config: one layer too few, and a different context length.
    (tmp_path / "deeper").mkdir()
    (tmp_path / "deeper" / "config.json").write_text(GPT2Config(**{**SHAPE, "n_layer": 3}).to_json_string())
    (tmp_path / "deeper" / "model.safetensors").symlink_to(gpt2_sources / "hf" / "model.safetensors")
    cases["lacks weights its config.json implies: h.2.attn.c_attn.bias"] = tmp_path / "deeper"
    (tmp_path / "longer").mkdir()
    (tmp_path / "longer" / "config.json").write_text(GPT2Config(**{**SHAPE, "n_positions": 128}).to_json_string())
    (tmp_path / "longer" / "model.safetensors").symlink_to(gpt2_sources / "hf" / "model.safetensors")
    cases[r"wpe.weight has shape \(64, 64\) but .* implies \(128, 64\)"] = tmp_path / "longer"
    # A task head that is not part of a language model.
    random_gpt2().save_pretrained(tmp_path / "head")
    state = load_file(tmp_path / "head" / "model.safetensors")
    torch.save({**state, "score.weight": torch.zeros(2, 64)}, tmp_path / "head" / "pytorch_model.bin")
    (tmp_path / "head" / "model.safetensors").unlink()
    cases["not part of a GPT-2 language model: score.weight"] = tmp_path / "head"
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text(GPT2Config(**SHAPE).to_json_string())
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"not a safetensors file")
    cases["cannot read .*model.safetensors"] = tmp_path / "corrupt"

    for message, src in cases.items():
        with pytest.raises(UserError, match=message) as caught:
            convert_gpt2_to_pg(src, out)
        assert "\n" not in str(caught.value)
        assert not out.exists()


def test_wrong_direction_says_which_flag(gpt2_sources: Path, tmp_path: Path) -> None:
    pg_dir = convert_gpt2_to_pg(gpt2_sources / "hf", tmp_path / "pg")
    with pytest.raises(UserError, match="found model_type 'pg_gpt2', expected 'gpt2'.*use --to gpt2"):
        convert_gpt2_to_pg(pg_dir, tmp_path / "again")
    with pytest.raises(UserError, match="found model_type 'gpt2', expected 'pg_gpt2'.*leave out --to gpt2"):
        convert_pg_to_gpt2(gpt2_sources / "hf", tmp_path / "again")


def test_destination_is_never_clobbered(gpt2_sources: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty.*--overwrite"):
        convert_gpt2_to_pg(gpt2_sources / "hf", dst)
    assert [p.name for p in dst.iterdir()] == ["notes.txt"]

    # --overwrite replaces the folder as a whole: no stale file stays next to the new checkpoint.
    main([str(gpt2_sources / "hf"), str(dst), "--overwrite"])
    assert not (dst / "notes.txt").exists() and (dst / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["dst"]  # no staging folder left behind

    # Not even --overwrite may replace a folder that holds the source.
    source = tmp_path / "outer" / "pg"
    main([str(dst), str(source), "--to", "gpt2"])
    with pytest.raises(UserError, match="would replace the source checkpoint"):
        convert_gpt2_to_pg(source, tmp_path / "outer", overwrite=True)
    assert (source / "model.safetensors").is_file()


# -- the Hub ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(gpt2_sources: Path):
    """The local test Hub serving `tester/tiny-gpt2`: the weights in both formats, plus the tokenizer files."""
    from hub_server import HubServer, Repo

    server = HubServer().start()
    uploads = [*(gpt2_sources / "hf").iterdir(), gpt2_sources / "original" / "pytorch_model.bin"]
    files = {p.name: server.state.store(p.read_bytes(), lfs=p.suffix in (".safetensors", ".bin")) for p in uploads}
    with server.state.lock:
        repo = server.state.repos["tester/tiny-gpt2"] = Repo("tester/tiny-gpt2", private=False)
        server.state.new_commit(repo, "main", "upload", "", files)
    yield server
    server.stop()


@pytest.mark.slow
def test_cli_converts_a_hub_id(hub, gpt2_sources: Path, tmp_path: Path) -> None:
    """The command line end to end, in a fresh process: huggingface_hub reads HF_ENDPOINT when imported."""
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, str(ROOT / "convert.py"), "tester/tiny-gpt2", "pg"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "trust_remote_code=True" in done.stdout

    oracle = GPT2LMHeadModel.from_pretrained(gpt2_sources / "hf")
    assert_same_logits(PgGPT2ForCausalLM.from_pretrained(tmp_path / "pg"), oracle)
    assert (tmp_path / "pg" / "tokenizer.json").is_file()
    downloads = [r.path for r in hub.requests if "/resolve/" in r.path]
    assert any(path.endswith("/model.safetensors") for path in downloads)
    assert not any("pytorch_model.bin" in path for path in downloads)  # one weights format is enough


def test_hub_errors_are_one_line(hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # read by the API client when created
    with pytest.raises(
        UserError, match=f"no such folder: tester/nothing, and {hub.url} has no repository tester/nothing"
    ):
        resolve_checkpoint("tester/nothing", cache_dir=tmp_path)
    with pytest.raises(UserError, match="tester/tiny-gpt2 has no revision 'v9'"):
        resolve_checkpoint("tester/tiny-gpt2", revision="v9", cache_dir=tmp_path)

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(
        UserError, match=r"the Hub at http://127.0.0.1:9 is unreachable \(ConnectError.*pass an existing"
    ):
        resolve_checkpoint("tester/tiny-gpt2", cache_dir=tmp_path)


def test_cli_offline_hub_id_fails_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))  # nothing cached
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        run_cli(lambda: main(["openai-community/gpt2", "out"]))
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no such folder: openai-community/gpt2, and the Hub is ")
    assert "switched off (HF_HUB_OFFLINE is set)" in lines[0] and "pass an existing checkpoint folder" in lines[0]
    assert not (tmp_path / "out").exists()


def test_local_folder_wins_over_hub_id(gpt2_sources: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder named like a repo id is read locally, without asking the Hub."""
    monkeypatch.chdir(gpt2_sources)
    assert resolve_checkpoint("hf") == Path("hf")
