"""`--optim muon`: Muon for the hidden matrices, AdamW for the rest, in one optimizer that resumes exactly."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import base_flags, run_clm, tiny_config, weights, write_corpus
from transformers import Trainer

from modeling_pg_gpt2 import PgGPT2ForCausalLM
from modeling_pg_gpt2.cli.arguments import make_parser, parse_arguments
from modeling_pg_gpt2.data.corpus import CorpusArguments
from modeling_pg_gpt2.data.tokenizer import TokenizerArguments, train_tokenizer
from modeling_pg_gpt2.training.arguments import CLMTrainingArguments
from modeling_pg_gpt2.training.hardware import native_bf16
from modeling_pg_gpt2.training.optim import Fp32Muon, MuonAdamW, hidden_matrices, muon_adamw_kwargs

HIDDEN = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _trainer(tmp_path: Path, tie_word_embeddings: bool = True) -> Trainer:
    """The Trainer as run_clm.py builds it for `--optim muon`, from the parsed command line."""
    (args,) = parse_arguments(
        make_parser(CLMTrainingArguments),
        ["--optim", "muon", "--muon_learning_rate", "0.05", "--learning_rate", "1e-2", "--weight_decay", "0.1"]
        + ["--output_dir", str(tmp_path), "--report_to", "none", "--use_cpu", "true", "--do_eval", "false"],
    )
    assert args.optim == "muon"
    torch.manual_seed(0)
    no_dropout = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # steps that depend on the weights alone
    model = PgGPT2ForCausalLM(tiny_config(tie_word_embeddings=tie_word_embeddings, **no_dropout))
    return Trainer(model, args, optimizer_cls_and_kwargs=(MuonAdamW, muon_adamw_kwargs(model, args)))


@pytest.mark.parametrize("tied", [True, False])
def test_hidden_matrices_go_to_muon_and_everything_else_to_adamw(tmp_path, tied):
    trainer = _trainer(tmp_path, tie_word_embeddings=tied)
    optimizer = trainer.create_optimizer()
    names = {id(p): name for name, p in trainer.model.named_parameters()}  # a tied head is wte, listed once

    def grouped(groups) -> dict[str, float]:
        return {names[id(p)]: group["weight_decay"] for group in groups for p in group["params"]}

    muon, adamw = grouped(optimizer.muon.param_groups), grouped(optimizer.adamw.param_groups)
    assert set(muon) == {f"transformer.h.{i}.{name}" for i in range(2) for name in HIDDEN}
    assert set(muon) | set(adamw) == set(names.values()) and not set(muon) & set(adamw)
    assert ("lm_head.weight" in adamw) == (not tied)
    # Weight decay as the Trainer groups it: matrices and embeddings decay, biases and LayerNorm do not.
    assert set(muon.values()) == {0.1}
    assert adamw["transformer.wte.weight"] == adamw["transformer.wpe.weight"] == 0.1
    assert adamw["transformer.h.0.ln_1.weight"] == adamw["transformer.h.1.mlp.c_fc.bias"] == 0.0
    assert optimizer.param_groups == [*optimizer.adamw.param_groups, *optimizer.muon.param_groups]
    assert [g["lr"] for g in optimizer.param_groups] == [1e-2, 1e-2, 0.05]  # AdamW's first: the logged rate


def test_the_schedule_scales_both_learning_rates(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.args.warmup_steps = 4
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    optimizer, scheduler = trainer.optimizer, trainer.lr_scheduler
    for step in range(6):
        factor = min(step / 4, 1.0) if step < 4 else (10 - step) / 6  # linear warm-up, then linear decay
        assert [g["lr"] for g in optimizer.muon.param_groups] == pytest.approx([0.05 * factor])
        assert [g["lr"] for g in optimizer.adamw.param_groups] == pytest.approx([1e-2 * factor] * 2)
        optimizer.step()
        scheduler.step()


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 211, (4, 32), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


def _train(model: PgGPT2ForCausalLM, optimizer: torch.optim.Optimizer, steps: int) -> float:
    for _ in range(steps):
        loss = model(**_batch()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return loss.item()


def test_it_trains_and_a_loaded_state_continues_exactly(tmp_path):
    trainer = _trainer(tmp_path)
    model, optimizer = trainer.model.train(), trainer.create_optimizer()
    with torch.no_grad():
        first = model(**_batch()).loss.item()
    hidden, embedding = model.transformer.h[0].mlp.c_fc.weight, model.transformer.wte.weight
    before = hidden.detach().clone(), embedding.detach().clone()
    assert _train(model, optimizer, 10) < first - 1.0  # it memorises the batch
    assert not torch.equal(hidden, before[0]) and not torch.equal(embedding, before[1])  # both optimizers stepped

    # A copy of the model and optimizer state, loaded into a fresh optimizer, continues bit for bit.
    twin = PgGPT2ForCausalLM(model.config).train()
    twin.load_state_dict(model.state_dict())
    kwargs = muon_adamw_kwargs(twin, trainer.args)
    groups = [{"params": [p for p in twin.parameters() if p.ndim == 2], "weight_decay": 0.1}]  # as the Trainer's
    groups.append({"params": [p for p in twin.parameters() if p.ndim == 1], "weight_decay": 0.0})
    restored = MuonAdamW(groups, **kwargs)
    assert [len(g["params"]) for g in restored.param_groups] == [len(g["params"]) for g in optimizer.param_groups]
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as saved: state_dict() holds references
    _train(model, optimizer, 3)
    _train(twin, restored, 3)
    for (name, ours), theirs in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs), name


@pytest.mark.slow
def test_run_clm_with_muon_resumes_to_the_same_weights(tmp_path):
    """A run that stopped after its first checkpoint, resumed, ends with the uninterrupted run's weights."""
    corpus = write_corpus(tmp_path / "corpus", documents=12, speeches=20)
    tokenizer = tmp_path / "tokenizer"
    train_tokenizer(
        CorpusArguments(train_file=str(corpus)), TokenizerArguments(output_dir=str(tokenizer), vocab_size=300)
    )
    flags = base_flags(corpus, tokenizer) + ["--optim", "muon", "--document_masking", "true", "--do_eval", "false"]
    flags += ["--max_steps", "12", "--save_steps", "6", "--early_stopping_patience", "0"]
    full = tmp_path / "uninterrupted"
    result = run_clm(*flags, "--output_dir", full)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((full / "training_info.json").read_text())
    assert info["optim"] == "muon" and info["muon_learning_rate"] == 0.02 and info["document_masking"] is True

    interrupted = tmp_path / "interrupted"  # what a run killed after its first checkpoint leaves
    interrupted.mkdir()
    shutil.copytree(full / "checkpoint-6", interrupted / "checkpoint-6")
    resumed = run_clm(*flags, "--output_dir", interrupted)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {interrupted / 'checkpoint-6'}" in resumed.stderr
    reference, result = weights(full), weights(interrupted)
    assert reference.keys() == result.keys()
    for name in reference:
        assert torch.equal(reference[name], result[name]), name


def _muon_steps(muon: type[torch.optim.Muon], adjust_lr_fn: str | None, nesterov: bool) -> tuple[torch.Tensor, ...]:
    """(start, end): three Muon steps on a tall and a wide matrix (the Gram matrix built either way)."""
    generator = torch.Generator().manual_seed(3)
    matrices = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in ((48, 16), (16, 48))]
    start = torch.cat([matrix.detach().flatten() for matrix in matrices])
    optimizer = muon(matrices, lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    for _ in range(3):
        for matrix in matrices:
            matrix.grad = torch.randn(matrix.shape, generator=generator)
        optimizer.step()
    return start, torch.cat([matrix.detach().flatten() for matrix in matrices])


@pytest.mark.parametrize(("adjust_lr_fn", "nesterov"), [(None, True), ("match_rms_adamw", False)])
def test_fp32_muon_makes_torchs_update(adjust_lr_fn, nesterov):
    """Fp32Muon against torch's Muon: the same updates, up to the bf16 rounding of torch's iterations."""
    start, ours = _muon_steps(Fp32Muon, adjust_lr_fn, nesterov)
    _, theirs = _muon_steps(torch.optim.Muon, adjust_lr_fn, nesterov)
    moved = (theirs - start).abs().max()
    assert moved > 0.01  # the steps moved the weights
    assert (ours - theirs).abs().max() < 0.03 * moved  # bf16 keeps 8 bits: differences of ~1% of a step


def test_fp32_muon_where_bf16_is_emulated_and_checkpoints_load_across(tmp_path):
    """MuonAdamW takes torch's Muon where the CPU multiplies bf16 natively, Fp32Muon elsewhere; their state is one."""
    trainer = _trainer(tmp_path)
    model, optimizer = trainer.model.train(), trainer.create_optimizer()
    native = native_bf16("cpu")
    assert type(optimizer.muon) is (torch.optim.Muon if native else Fp32Muon)
    _train(model, optimizer, 2)
    # A checkpoint of this machine's kind resumes on the other kind: the state loads and the steps go on.
    kwargs = {**muon_adamw_kwargs(model, trainer.args), "fp32_newton_schulz": native}
    groups = [{**group, "params": list(group["params"])} for group in optimizer.adamw.param_groups]
    groups += [{**group, "params": list(group["params"])} for group in optimizer.muon.param_groups]
    other = MuonAdamW(groups, **kwargs)
    assert type(other.muon) is (Fp32Muon if native else torch.optim.Muon)
    other.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for matrix in hidden_matrices(model):
        assert torch.equal(other.state[matrix]["momentum_buffer"], optimizer.state[matrix]["momentum_buffer"])
    before = model.transformer.h[0].mlp.c_fc.weight.detach().clone()
    _train(model, other, 1)
    assert not torch.equal(model.transformer.h[0].mlp.c_fc.weight, before)
