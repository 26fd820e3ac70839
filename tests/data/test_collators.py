"""Document masking (`--document_masking`): a packed block trains as its documents would, each one alone.

The oracle is transformers' GPT2LMHeadModel with the same weights (`gpt2_twin`), run on each document
separately, from position 0.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from helpers import gpt2_twin, tiny_config
from transformers import Trainer, TrainingArguments, default_data_collator

from modeling_pg_gpt2 import PgGPT2ForCausalLM
from modeling_pg_gpt2.data.collators import DocumentMaskingCollator, document_position_ids

EOS = 210  # the last id of the tiny vocabulary stands for <|endoftext|>


def test_positions_restart_after_each_end_of_text():
    ids = torch.tensor([[5, 6, EOS, 7, 8, EOS, EOS, 9], [1, 2, 3, 4, 5, 6, 7, EOS]])
    expected = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7]])
    assert torch.equal(document_position_ids(ids, EOS), expected)


def _segments() -> list[list[torch.Tensor]]:
    """Two blocks of 24 tokens: the tail of a document, a whole one and the head of a third; one document alone."""
    generator = torch.Generator().manual_seed(0)

    def text(n: int) -> torch.Tensor:
        return torch.randint(0, EOS, (n,), generator=generator)

    eos = torch.tensor([EOS])
    return [
        [torch.cat([text(6), eos]), torch.cat([text(10), eos]), text(6)],
        [text(24)],
    ]


def _blocks() -> list[dict[str, list[int]]]:
    blocks = [torch.cat(segments).tolist() for segments in _segments()]
    return [{"input_ids": block, "labels": list(block)} for block in blocks]


def _model() -> PgGPT2ForCausalLM:
    # A wide initialisation: attention then matters enough that crossing a document changes the loss clearly.
    torch.manual_seed(0)
    config = tiny_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3)
    return PgGPT2ForCausalLM(config)


def _loss_of_each_document_alone(model: PgGPT2ForCausalLM, implementation: str) -> float:
    """Token-mean next-token loss over every document of the blocks, each run alone through GPT2LMHeadModel."""
    twin = gpt2_twin(model, implementation)
    total, count = 0.0, 0
    with torch.no_grad():
        for segments in _segments():
            for document in segments:
                logits = twin(document[None], use_cache=False).logits[0].float()
                total += F.cross_entropy(logits[:-1], document[1:], reduction="sum").item()
                count += len(document) - 1
    return total / count


@pytest.mark.parametrize(
    ("implementation", "bf16", "tolerance"),
    [("eager", False, 1e-5), ("sdpa", False, 1e-5), ("eager", True, 5e-3), ("sdpa", True, 5e-3)],
)
def test_masked_block_loss_equals_each_document_alone_in_training(implementation, bf16, tolerance):
    """Training mode, as a Trainer step runs it: the fused head and loss, optionally under bf16 autocast."""
    model = _model().train()
    expected = _loss_of_each_document_alone(model, implementation)
    model.set_attn_implementation(implementation)
    masked = DocumentMaskingCollator(EOS)(_blocks())
    plain = default_data_collator(_blocks(), return_tensors="pt")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        output = model(**masked)
        unmasked = model(**plain).loss.item()
    assert output.logits is None  # the fused loss ran
    assert abs(output.loss.item() - expected) <= tolerance
    assert abs(unmasked - expected) > 10 * tolerance  # without masking the documents see each other


def test_trainer_evaluation_uses_document_masking(tmp_path):
    model = _model()
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to="none", use_cpu=True, disable_tqdm=True
    )
    dataset = Dataset.from_list(_blocks())
    masked = Trainer(model, args, eval_dataset=dataset, data_collator=DocumentMaskingCollator(EOS)).evaluate()
    plain = Trainer(model, args, eval_dataset=dataset).evaluate()
    expected = _loss_of_each_document_alone(model, "sdpa")
    assert abs(masked["eval_loss"] - expected) <= 1e-5
    assert abs(plain["eval_loss"] - expected) > 1e-3
