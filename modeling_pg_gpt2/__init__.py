"""pg-gpt2: GPT-2 written from scratch as a first-class Hugging Face model.

Importing the package registers `pg_gpt2` with the Auto classes, so `AutoConfig`,
`AutoModel` and `AutoModelForCausalLM` resolve it, and marks the classes for auto-class saving:
`save_pretrained` then writes `auto_map` into `config.json` and copies the two source files, so the
folder loads anywhere with `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_pg_gpt2 import PRESETS, PgGPT2Config
from .modeling_pg_gpt2 import PgGPT2ForCausalLM, PgGPT2Model, PgGPT2PreTrainedModel

AutoConfig.register(PgGPT2Config.model_type, PgGPT2Config, exist_ok=True)
AutoModel.register(PgGPT2Config, PgGPT2Model, exist_ok=True)
AutoModelForCausalLM.register(PgGPT2Config, PgGPT2ForCausalLM, exist_ok=True)
PgGPT2Config.register_for_auto_class()
PgGPT2Model.register_for_auto_class("AutoModel")
PgGPT2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["PRESETS", "PgGPT2Config", "PgGPT2ForCausalLM", "PgGPT2Model", "PgGPT2PreTrainedModel"]
