"""GPT-2's task heads on pg_gpt2: parity with transformers' GPT-2 head classes at equal weights, Auto classes,
pipelines, a Trainer fine-tune, and conversion to GPT-2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import CONV1D_WEIGHTS, tiny_config
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    GPT2Config,
    GPT2ForQuestionAnswering,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    pipeline,
)

from modeling_pg_gpt2 import (
    PgGPT2ForCausalLM,
    PgGPT2ForQuestionAnswering,
    PgGPT2ForSequenceClassification,
    PgGPT2ForTokenClassification,
)
from modeling_pg_gpt2.cli.commands import convert as convert_main

PAD = 0
HEADS = {
    PgGPT2ForSequenceClassification: GPT2ForSequenceClassification,
    PgGPT2ForTokenClassification: GPT2ForTokenClassification,
    PgGPT2ForQuestionAnswering: GPT2ForQuestionAnswering,
}


def _head(cls, **overrides):
    torch.manual_seed(0)
    return cls(tiny_config(**{"pad_token_id": PAD, "num_labels": 3, **overrides})).eval()


def _gpt2_twin(model):
    """transformers' GPT-2 head class with `model`'s weights, copied by hand (Conv1D weights transposed)."""
    cfg = model.config
    names = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "pad_token_id", "problem_type")
    twin = HEADS[type(model)](GPT2Config(**{n: getattr(cfg, n) for n in names}, num_labels=cfg.num_labels))
    state = {n: t.t() if n.endswith(CONV1D_WEIGHTS) else t for n, t in model.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    return twin.eval()


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens, given to both models: GPT-2 counts them from 0 only when given them."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _batch(padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 211, (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    for row, pads in enumerate([0, 3, 5]):
        if pads:
            cut = slice(None, pads) if padding_side == "left" else slice(9 - pads, None)
            ids[row, cut], mask[row, cut] = PAD, 0
    return ids, mask


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("num_labels", [3, 1])  # classification and regression
def test_sequence_classification_equals_gpt2(padding_side, num_labels):
    model = _head(PgGPT2ForSequenceClassification, num_labels=num_labels)
    twin = _gpt2_twin(model)
    ids, mask = _batch(padding_side)
    positions = _positions(mask)
    labels = torch.tensor([0, 2, 1]) if num_labels > 1 else torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, position_ids=positions, labels=labels)
        theirs = twin(ids, attention_mask=mask, position_ids=positions, labels=labels)
        default = model(ids, attention_mask=mask).logits  # pg_gpt2 counts them from the mask itself
    assert ours.logits.shape == (3, num_labels)
    assert (ours.logits - theirs.logits).abs().max().item() <= 1e-5
    assert abs(ours.loss.item() - theirs.loss.item()) <= 1e-5
    assert model.config.problem_type == ("single_label_classification" if num_labels > 1 else "regression")
    assert (default - ours.logits).abs().max().item() <= 1e-5


def test_sequence_classification_pools_the_last_real_token_with_either_padding():
    model = _head(PgGPT2ForSequenceClassification)
    for side in ("right", "left"):
        ids, mask = _batch(side)
        with torch.no_grad():
            batched = model(ids, attention_mask=mask).logits
            alone = torch.cat([model(row[m.bool()][None]).logits for row, m in zip(ids, mask, strict=True)])
        assert (batched - alone).abs().max().item() <= 1e-5, side
    no_pad = _head(PgGPT2ForSequenceClassification)
    no_pad.config.pad_token_id = None
    with pytest.raises(ValueError, match="needs config.pad_token_id"):
        no_pad(ids)


def test_token_classification_and_question_answering_equal_gpt2():
    ids, mask = _batch()
    token_model = _head(PgGPT2ForTokenClassification)
    labels = torch.randint(0, 3, ids.shape, generator=torch.Generator().manual_seed(3)).masked_fill(mask == 0, -100)
    inputs = dict(input_ids=ids, attention_mask=mask, position_ids=_positions(mask))
    with torch.no_grad():
        ours, theirs = token_model(**inputs, labels=labels), _gpt2_twin(token_model)(**inputs, labels=labels)
    assert ours.logits.shape == (3, 9, 3)
    assert (ours.logits - theirs.logits).abs().max().item() <= 1e-5
    assert abs(ours.loss.item() - theirs.loss.item()) <= 1e-5

    qa_model = _head(PgGPT2ForQuestionAnswering)
    spans = dict(start_positions=torch.tensor([1, 0, 30]), end_positions=torch.tensor([4, 2, 30]))  # 30: outside
    with torch.no_grad():
        ours, theirs = qa_model(**inputs, **spans), _gpt2_twin(qa_model)(**inputs, **spans)
    for name in ("start_logits", "end_logits"):
        assert getattr(ours, name).shape == (3, 9)
        assert (getattr(ours, name) - getattr(theirs, name)).abs().max().item() <= 1e-5
    assert abs(ours.loss.item() - theirs.loss.item()) <= 1e-5


def test_token_type_ids_reach_the_heads_as_in_gpt2():
    model = _head(PgGPT2ForSequenceClassification)
    ids, mask = _batch()
    token_types = torch.ones_like(ids)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, token_type_ids=token_types).logits
        theirs = _gpt2_twin(model)(ids, attention_mask=mask, token_type_ids=token_types).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    """A causal-LM folder as run_clm.py saves it (model.save_pretrained), with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("pg_gpt2_lm")
    vocab = {"[PAD]": PAD} | {f"w{i}": i for i in range(1, 211)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[PAD]")
    torch.manual_seed(0)
    PgGPT2ForCausalLM(tiny_config(pad_token_id=PAD)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def test_auto_classes_load_the_pretrained_body_with_a_new_head_and_run_their_pipelines(lm_folder):
    folder, tokenizer = lm_folder
    lm = PgGPT2ForCausalLM.from_pretrained(folder)
    for auto, cls in (
        (AutoModelForSequenceClassification, PgGPT2ForSequenceClassification),
        (AutoModelForTokenClassification, PgGPT2ForTokenClassification),
        (AutoModelForQuestionAnswering, PgGPT2ForQuestionAnswering),
    ):
        model = auto.from_pretrained(folder, num_labels=2)
        assert type(model) is cls
        body = model.transformer.state_dict()
        assert all(torch.equal(tensor, body[name]) for name, tensor in lm.transformer.state_dict().items())
    text = "w5 w17 w3 w99"
    classified = pipeline("text-classification", model=str(folder), tokenizer=tokenizer)(text)
    assert classified[0]["label"] in {"LABEL_0", "LABEL_1"} and 0 <= classified[0]["score"] <= 1
    tagged = pipeline("token-classification", model=str(folder), tokenizer=tokenizer)(text)
    assert all(entity["entity"] in {"LABEL_0", "LABEL_1"} for entity in tagged)


class _Toy(torch.utils.data.Dataset):
    """Label 1 when the sequence's last token is below 100: learnable from the pooled (last) hidden state."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 200, (n, 8), generator=generator)
        self.labels = (self.ids[:, -1] < 100).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.labels[i]}


def _accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


@pytest.mark.slow
def test_a_short_trainer_fine_tune_learns_a_toy_classification(lm_folder, tmp_path):
    folder, _ = lm_folder
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=16,
        num_train_epochs=3,
        learning_rate=3e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=_Toy(512, 0), eval_dataset=_Toy(128, 1), compute_metrics=_accuracy
    )
    before = trainer.evaluate()["eval_accuracy"]
    trainer.train()
    after = trainer.evaluate()["eval_accuracy"]
    assert before < 0.7 and after >= 0.9, (before, after)


@pytest.mark.parametrize("cls", sorted(HEADS, key=lambda c: c.__name__))
def test_convert_to_gpt2_carries_the_task_head(tmp_path, cls):
    model = _head(cls)
    model.config.id2label, model.config.label2id = {0: "neg", 1: "neu", 2: "pos"}, {"neg": 0, "neu": 1, "pos": 2}
    model.save_pretrained(tmp_path / "pg")
    convert_main([str(tmp_path / "pg"), str(tmp_path / "gpt2"), "--to", "gpt2"])
    converted = HEADS[cls].from_pretrained(tmp_path / "gpt2").eval()
    assert type(converted) is HEADS[cls] and converted.config.model_type == "gpt2"
    ids, mask = _batch()
    inputs = dict(input_ids=ids, attention_mask=mask, position_ids=_positions(mask))
    with torch.no_grad():
        ours, theirs = model(**inputs), converted(**inputs)
    for name in ("logits", "start_logits", "end_logits"):
        if getattr(ours, name, None) is not None:
            assert (getattr(ours, name) - getattr(theirs, name)).abs().max().item() <= 1e-5
    if cls is not PgGPT2ForQuestionAnswering:
        assert converted.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
