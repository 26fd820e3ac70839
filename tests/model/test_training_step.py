"""Training steps against GPT2LMHeadModel's: loss and gradients, the fused head loss, the Trainer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    gpt2_twin,
    loss_and_grads,
    random_ids,
    tiny_config,
    worst_relative,
)
from transformers import (
    Trainer,
    TrainingArguments,
)

from modeling_pg_gpt2 import PgGPT2ForCausalLM
from modeling_pg_gpt2 import modeling_pg_gpt2 as pg_modeling


def test_activation_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    model = PgGPT2ForCausalLM(tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).train()
    ids = random_ids(batch=2, length=16)

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
    enable()
    assert model.transformer.h[0].gradient_checkpointing
    checkpointed = grads()
    for name, grad in plain.items():
        assert torch.equal(grad, checkpointed[name]), name


@pytest.mark.parametrize("num_items_in_batch", [None, 1000])
def test_training_loss_and_gradients_equal_gpt2_without_the_logits(num_items_in_batch):
    """In training the loss comes from the hidden states chunk by chunk (1280 tokens: two chunks, one
    partial), with ignored labels and the Trainer's token count: the same loss and gradients as GPT-2's
    logits + cross-entropy, and no (B, T, V) logits returned."""
    torch.manual_seed(0)
    model = PgGPT2ForCausalLM(tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).train()
    twin = gpt2_twin(model)
    ids = random_ids(batch=20, length=64)
    labels = ids.clone()
    labels[0, :40] = -100
    labels[19] = -100  # a whole row of the second, partial chunk ignored
    kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": torch.tensor(num_items_in_batch)}
    ours, our_grads = loss_and_grads(model, ids, labels, **kwargs)
    theirs, their_grads = loss_and_grads(twin, ids, labels, **kwargs)
    assert ours.logits is None and theirs.logits is not None
    assert ours.loss.item() == pytest.approx(theirs.loss.item(), rel=1e-6)
    assert worst_relative(our_grads, their_grads) <= 1e-5
    with_logits, grads_with_logits = loss_and_grads(model, ids, labels, skip_logits=False, **kwargs)
    assert with_logits.logits.shape == (20, 64, model.config.vocab_size)
    assert worst_relative(grads_with_logits, their_grads) <= 1e-5


def test_fused_loss_under_bf16_autocast_is_as_close_to_gpt2_as_the_logits_path():
    """Under autocast the head's products run in bf16 and the softmax in fp32, as GPT2LMHeadModel's do."""
    torch.manual_seed(0)
    model = PgGPT2ForCausalLM(tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).train()
    twin = gpt2_twin(model)
    ids = random_ids(batch=20, length=64)
    reference, reference_grads = loss_and_grads(twin, ids, ids)  # fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, fused_grads = loss_and_grads(model, ids, ids)
        logits_path, logits_grads = loss_and_grads(model, ids, ids, skip_logits=False)
        theirs, their_grads = loss_and_grads(twin, ids, ids)
    assert fused.logits is None and logits_path.logits.dtype == torch.bfloat16
    assert fused.loss.item() == pytest.approx(theirs.loss.item(), rel=1e-3)
    assert worst_relative(fused_grads, their_grads) <= 2e-2
    # bf16 moves the fused path from fp32 no further than it moves transformers' own head
    assert worst_relative(fused_grads, reference_grads) <= 2 * worst_relative(logits_grads, reference_grads)
    assert worst_relative(fused_grads, reference_grads) > 0  # the products did run in bf16


def test_skip_logits_without_gradients_and_without_labels(tiny_model):
    ids = random_ids(batch=2, length=16)
    with torch.no_grad():
        fused = tiny_model(ids, labels=ids, skip_logits=True)
        plain = tiny_model(ids, labels=ids)  # eval mode: logits and the loss on them
    assert fused.logits is None and plain.logits is not None
    assert fused.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)
    with pytest.raises(ValueError, match="needs labels"):
        tiny_model(ids, skip_logits=True)


def _training_model(**overrides) -> PgGPT2ForCausalLM:
    torch.manual_seed(0)
    config = tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **overrides)
    return PgGPT2ForCausalLM._from_config(config, attn_implementation="eager").train()


def test_fused_loss_edge_cases_equal_the_logits_path():
    """Whatever the loss is given, the fused path computes what the logits path does, gradients included."""
    model = _training_model()
    ids = random_ids(batch=4, length=32)
    labels = ids.clone()
    labels[1, 5:] = -100
    cases = {
        "an int num_items_in_batch": {"labels": labels, "num_items_in_batch": 77},
        "shift_labels given": {"labels": labels, "shift_labels": F.pad(labels[:, 1:], (0, 1), value=-100)},
        "another ignore_index": {"labels": labels.masked_fill(labels == -100, 7), "ignore_index": 7},
    }
    for case, kwargs in cases.items():
        fused, fused_grads = loss_and_grads(model, ids, **kwargs)
        plain, plain_grads = loss_and_grads(model, ids, skip_logits=False, **kwargs)
        assert fused.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6), case
        assert worst_relative(fused_grads, plain_grads) <= 1e-5, case

    # a batch without a single label token: NaN loss (0 / 0) as in transformers, but zero gradients, so an
    # optimizer step leaves the weights as they are instead of turning them into NaN
    fused, fused_grads = loss_and_grads(model, ids, torch.full_like(ids, -100))
    assert math.isnan(fused.loss.item()) and math.isnan(model(ids, labels=torch.full_like(ids, -100)).loss.item())
    assert all(torch.equal(g, torch.zeros_like(g)) for g in fused_grads.values())

    # a scaled loss (GradScaler, DDP) scales the stored gradients; a frozen embedding gets none
    _, once = loss_and_grads(model, ids, labels)
    model.zero_grad(set_to_none=True)
    (3 * model(ids, labels=labels).loss).backward()
    assert (
        worst_relative({n: p.grad for n, p in model.named_parameters()}, {n: 3 * g for n, g in once.items()}) <= 1e-6
    )
    model.transformer.wte.weight.requires_grad_(False)
    _, frozen = loss_and_grads(model, ids, labels, skip_logits=True)
    assert frozen["transformer.wte.weight"] is None
    assert (
        worst_relative(
            {n: g for n, g in frozen.items() if g is not None}, {n: once[n] for n in frozen if "wte" not in n}
        )
        <= 1e-5
    )


def test_fused_loss_in_bf16_sums_the_weight_gradient_over_chunks_in_fp32():
    """bf16 hidden states and head (a bf16 model, no autocast), 16 chunks: the head's gradient is as close to
    fp32's as the logits path's (summed in bf16 across the chunks, it was 1.7x as far)."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(16, 1024, 32, generator=generator)
    weight = torch.randn(211, 32, generator=generator) * 0.3
    labels = torch.randint(0, 211, (16, 1024), generator=generator)

    def head_grad(h: torch.Tensor, w: torch.Tensor, fused: bool) -> torch.Tensor:
        h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
        if fused:
            loss = pg_modeling.fused_head_loss(h, w, labels)
        else:
            logits = (h @ w.t()).float()[:, :-1]
            loss = F.cross_entropy(logits.reshape(-1, 211), labels[:, 1:].reshape(-1))
        loss.backward()
        return w.grad.float()

    reference = head_grad(hidden, weight, fused=False)
    assert (head_grad(hidden, weight, fused=True) - reference).norm() <= 1e-6 * reference.norm()

    def error(fused: bool) -> float:
        return ((head_grad(hidden.bfloat16(), weight.bfloat16(), fused) - reference).norm() / reference.norm()).item()

    assert 0 < error(fused=True) <= 1.25 * error(fused=False)


def test_fused_loss_refuses_what_it_cannot_do():
    model = _training_model()
    ids = random_ids(batch=2, length=16)
    with pytest.raises(ValueError, match="Label -1 is outside the vocabulary"):
        model(ids, labels=torch.full_like(ids, -1))
    loss = model(ids, labels=ids).loss
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(loss, model.transformer.ln_f.weight, create_graph=True)


def test_an_adapter_on_the_head_keeps_the_logits_path():
    """PEFT replaces lm_head; the fused loss would multiply by the bare weight and leave the adapter out."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_training_model(), peft.LoraConfig(r=4, target_modules=["lm_head", "c_attn"]))
    ids = random_ids(batch=2, length=16)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert out.logits is not None
    assert all(p.grad is not None for n, p in model.named_parameters() if "lm_head.lora_" in n)
    with pytest.raises(ValueError, match="bypassing the adapter"):
        model(input_ids=ids, labels=ids, skip_logits=True)


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def test_trainer_gradient_accumulation_equals_one_big_batch(tmp_path):
    """Uneven numbers of label tokens per micro-batch: only a token-weighted loss (num_items_in_batch) matches."""
    ids = random_ids(batch=4, length=16)
    labels = ids.clone()
    labels[0, :12] = -100  # micro-batch 1 has far fewer label tokens than micro-batch 2
    labels[1, :10] = -100

    def train(batch_size: int, accumulation: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = PgGPT2ForCausalLM(tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        args = TrainingArguments(
            output_dir=str(tmp_path / f"run{batch_size}"),
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            learning_rate=1e-2,
            optim="sgd",
            lr_scheduler_type="constant",
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            use_cpu=True,
            dataloader_drop_last=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=_Blocks(ids, labels))
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
        trainer.train()
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    whole, accumulated = train(4, 1), train(2, 2)
    worst = max((whole[n] - accumulated[n]).abs().max().item() for n in whole)
    assert worst <= 1e-6


def test_trainer_evaluation_gets_the_logits_while_training_steps_skip_them(tmp_path):
    """Training steps return logits=None (the fused loss); evaluation runs in eval mode and gets them:
    `prediction_loss_only=False`, `compute_metrics` and `predict` work as with GPT2LMHeadModel."""
    ids = random_ids(batch=4, length=16)
    model = _training_model()
    assert model(ids, labels=ids).logits is None  # training mode with labels: the fused loss

    def next_token_accuracy(prediction) -> dict[str, float]:
        logits, labels = prediction.predictions, prediction.label_ids
        return {"accuracy": float((logits[:, :-1].argmax(-1) == labels[:, 1:]).mean())}

    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        max_steps=2,
        prediction_loss_only=False,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Blocks(ids, ids),
        eval_dataset=_Blocks(ids, ids),
        compute_metrics=next_token_accuracy,
    )
    trainer.train()
    metrics = trainer.evaluate()
    predictions = trainer.predict(_Blocks(ids, ids)).predictions
    with torch.no_grad():
        expected = model.eval()(ids, labels=ids)
    assert predictions.shape == (4, 16, 211)
    assert abs(metrics["eval_loss"] - expected.loss.item()) <= 1e-5
    assert (torch.from_numpy(predictions) - expected.logits).abs().max().item() <= 1e-5
    accuracy = (expected.logits[:, :-1].argmax(-1) == ids[:, 1:]).float().mean().item()
    assert metrics["eval_accuracy"] == pytest.approx(accuracy)
