"""GPT-2's task heads on the pg_gpt2 body: sequence classification, token classification, question answering.

Each is transformers' GPT-2 head (`GPT2ForSequenceClassification`, `GPT2ForTokenClassification`,
`GPT2ForQuestionAnswering`) on `PgGPT2Model`: same layer names (`score`, `classifier`, `qa_outputs`), same
pooling and losses, so the logits and losses equal GPT-2's at equal weights. Loading a causal-LM folder
with one of them keeps the pre-trained body and initialises the new head:

    >>> model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, trust_remote_code=True)

Part of the remote code: every auto-class save of a pg_gpt2 model ships this file and names these classes
in `auto_map` (`modeling_pg_gpt2.TASK_HEADS`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import (
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)

# Older transformers releases (5.5 among them) copy, from a local folder, only the files that the loaded module
# imports itself, not the ones those import in turn: so this file names every module the model file needs.
from .batched_matvec import BatchedMatvecLinear  # noqa: F401
from .configuration_pg_gpt2 import PgGPT2Config
from .fused_loss import fused_head_loss  # noqa: F401
from .model_inputs import check_inputs  # noqa: F401
from .modeling_pg_gpt2 import PgGPT2Model, PgGPT2PreTrainedModel


class PgGPT2ForSequenceClassification(PgGPT2PreTrainedModel):
    """Classifies a sequence from the hidden state of its last token (GPT-2 has no [CLS] token).

    The last token is the last one that is not `config.pad_token_id`, so right and left padding both work;
    without a pad token only batches of one sequence can be classified. The loss follows `config.problem_type`
    (regression for num_labels == 1, else single- or multi-label classification), as in transformers.
    """

    def __init__(self, config: PgGPT2Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = PgGPT2Model(config)
        self.score = nn.Linear(config.n_embd, self.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutputWithPast | tuple:
        r"""Logits (B, num_labels) of each sequence's last non-pad token; the loss when `labels` (B,) are given."""
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)  # (B, T, num_labels)
        B = logits.shape[0]
        pad = self.config.pad_token_id
        if pad is None and B != 1:
            raise ValueError(
                f"Classifying {B} sequences at once needs config.pad_token_id, to find where each one ends; "
                "set it to the tokenizer's pad token id (model.config.pad_token_id = tokenizer.pad_token_id)."
            )
        if pad is None or input_ids is None:  # inputs_embeds: padding cannot be seen, the last position is used
            last = torch.full((B,), -1, device=logits.device)
        else:
            # The rightmost token that is not padding, for right and left padding alike (-> (B,) indices).
            not_pad = (input_ids != pad).to(logits.device, torch.int32)
            last = (torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32) * not_pad).argmax(-1)
        pooled_logits = logits[torch.arange(B, device=logits.device), last]  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=pooled_logits, config=self.config, **kwargs)
        output = SequenceClassifierOutputWithPast(
            loss=loss, logits=pooled_logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict is not False else output.to_tuple()


class PgGPT2ForTokenClassification(PgGPT2PreTrainedModel):
    """Labels every token from its hidden state (NER-style tagging); dropout `config.classifier_dropout` (0.1)."""

    def __init__(self, config: PgGPT2Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = PgGPT2Model(config)
        dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(dropout if dropout is not None else 0.1)  # GPT-2's default
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> TokenClassifierOutput | tuple:
        r"""Logits (B, T, num_labels); the mean cross-entropy when `labels` (B, T) are given (-100 ignored)."""
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (B, T, num_labels)
        loss = self.loss_function(logits, labels, self.config, **kwargs) if labels is not None else None
        output = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict is not False else output.to_tuple()


class PgGPT2ForQuestionAnswering(PgGPT2PreTrainedModel):
    """Extractive question answering: a start and an end logit for every token (SQuAD-style spans)."""

    def __init__(self, config: PgGPT2Config) -> None:
        super().__init__(config)
        self.transformer = PgGPT2Model(config)
        self.qa_outputs = nn.Linear(config.n_embd, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.LongTensor | None = None,
        end_positions: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> QuestionAnsweringModelOutput | tuple:
        r"""Start and end logits (B, T); with `start_positions` and `end_positions` (B,), the mean of both losses.

        Positions outside the input are clamped to T and ignored, as in transformers.
        """
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).unbind(dim=-1)  # two (B, T)
        start_logits, end_logits = start_logits.contiguous(), end_logits.contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = self.loss_function(start_logits, end_logits, start_positions, end_positions, **kwargs)
        output = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict is not False else output.to_tuple()


__all__ = ["PgGPT2ForQuestionAnswering", "PgGPT2ForSequenceClassification", "PgGPT2ForTokenClassification"]
