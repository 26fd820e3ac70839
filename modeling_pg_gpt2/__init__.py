"""pg-gpt2: GPT-2 written from scratch as a first-class Hugging Face model.

Importing the package registers `pg_gpt2` with the Auto classes, so `AutoConfig`, `AutoModel`,
`AutoModelForCausalLM` and the task-head classes (`AutoModelForSequenceClassification`,
`AutoModelForTokenClassification`, `AutoModelForQuestionAnswering`) resolve it, and marks the classes
for auto-class saving: `save_pretrained` then writes `auto_map` into `config.json` and copies the
source files (the model's, its relative imports, and `task_heads.py`), so the folder loads anywhere
with `trust_remote_code=True`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_pg_gpt2 import PRESETS, PgGPT2Config
from .modeling_pg_gpt2 import PgGPT2ForCausalLM, PgGPT2Model, PgGPT2PreTrainedModel
from .task_heads import PgGPT2ForQuestionAnswering, PgGPT2ForSequenceClassification, PgGPT2ForTokenClassification

AutoConfig.register(PgGPT2Config.model_type, PgGPT2Config, exist_ok=True)
PgGPT2Config.register_for_auto_class()
for auto_class, model_class in (
    (AutoModel, PgGPT2Model),
    (AutoModelForCausalLM, PgGPT2ForCausalLM),
    (AutoModelForSequenceClassification, PgGPT2ForSequenceClassification),
    (AutoModelForTokenClassification, PgGPT2ForTokenClassification),
    (AutoModelForQuestionAnswering, PgGPT2ForQuestionAnswering),
):
    auto_class.register(PgGPT2Config, model_class, exist_ok=True)
    model_class.register_for_auto_class(auto_class.__name__)

__all__ = [
    "PRESETS",
    "PgGPT2Config",
    "PgGPT2ForCausalLM",
    "PgGPT2ForQuestionAnswering",
    "PgGPT2ForSequenceClassification",
    "PgGPT2ForTokenClassification",
    "PgGPT2Model",
    "PgGPT2PreTrainedModel",
]
