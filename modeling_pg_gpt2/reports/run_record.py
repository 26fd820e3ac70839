"""How a run was made, as one typed record: what `training_info.json` holds, `run_clm.py` writes and the model
card reads.

`training.run_info.training_info` builds a [`RunInfo`] at the end of a run; [`RunInfo.to_json`] writes it as
`training_info.json` (the keys are the field names, in this order) and [`RunInfo.read`] reads it back, for
the model card and for a re-run that finds the run finished. Writer and readers agree through attributes:
a renamed field fails where it is read (tests/reports/test_run_record.py checks each one the card reads)
instead of silently dropping a row of the card. Every field defaults to `None`, "not recorded": an older
`training_info.json` that lacks a newer field still loads, and a card can be written for a folder that has
none. Keys that are no field (a newer or hand-edited file) are left out when read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.outputs import TRAINING_INFO_FILE
from ..data.corpus import CorpusArguments

# Corpus options that say how the text was read, not which text it is: not recorded.
_UNRECORDED_CORPUS_FIELDS = ("preprocessing_num_workers",)
# The held-out percentage and its seed, which a stream does not use (it holds out its first documents instead).
_SPLIT_FIELDS = ("validation_split_percentage", "split_seed")


@dataclass
class RunInfo:
    """What the model card and later readers need to know about a run, beyond config.json and metrics.json."""

    model_source: str | None = None  # where the model came from: "from scratch (gpt2)", "checkpoint DIR", ...
    tokenizer: str | None = None
    corpus: CorpusArguments | None = None
    block_size: int | None = None
    streaming: bool | None = None
    train_blocks: int | None = None  # None when streamed: a stream has no length (see tokens_seen)
    validation_blocks: int | None = None
    streaming_validation_documents: int | None = None
    world_size: int | None = None
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    tokens_per_step: int | None = None
    global_step: int | None = None
    tokens_seen: int | None = None
    best_global_step: int | None = None
    learning_rate: float | None = None
    lr_scheduler_type: str | None = None
    warmup_steps: float | None = None
    weight_decay: float | None = None
    adam_betas: list[float] | None = None
    max_grad_norm: float | None = None
    optim: str | None = None
    muon_learning_rate: float | None = None
    document_masking: bool | None = None
    max_steps: int | None = None
    num_train_epochs: float | None = None
    max_train_minutes: float | None = None
    plateau_patience: int | None = None
    seed: int | None = None
    bf16: bool | None = None
    fp16: bool | None = None
    torch_compile: bool | None = None
    reuse_freed_memory: bool | None = None
    attn_implementation: str | None = None
    device: str | None = None
    versions: dict[str, str] | None = None
    recipe: dict[str, dict[str, Any]] | None = None  # the automatic recipe: {field: {"value", "reason"}}
    finished: str | None = None  # what ended training ("max_steps", "time budget", "plateau", "early stopping"): last

    def to_dict(self) -> dict[str, Any]:
        """The record as `training_info.json` holds it: the fields in order, the corpus as the options it was
        read with (those set, without the held-out percentage of a stream)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.corpus is not None:
            skip = _UNRECORDED_CORPUS_FIELDS + (_SPLIT_FIELDS if self.streaming else ())
            corpus = dataclasses.asdict(self.corpus)
            values["corpus"] = {key: value for key, value in corpus.items() if value is not None and key not in skip}
        return values

    def to_json(self) -> str:
        """The text of `training_info.json`."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunInfo:
        """The record of a `training_info.json` object: missing fields are `None`, unknown keys are left out."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {key: value for key, value in values.items() if key in names}
        corpus = known.get("corpus")
        if isinstance(corpus, dict):
            options = {f.name for f in dataclasses.fields(CorpusArguments)}
            known["corpus"] = CorpusArguments(**{key: value for key, value in corpus.items() if key in options})
        return cls(**known)

    @classmethod
    def from_json(cls, text: str) -> RunInfo:
        """The record of the text of a `training_info.json` (`ValueError` if it is not a JSON object)."""
        values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError(f"{TRAINING_INFO_FILE} must hold a JSON object, not {type(values).__name__}")
        return cls.from_dict(values)

    @classmethod
    def read(cls, folder: str | os.PathLike) -> RunInfo | None:
        """The record in `folder`'s `training_info.json`, or `None` when it has none (or one that cannot be read)."""
        try:
            return cls.from_json((Path(folder) / TRAINING_INFO_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write(self, folder: str | os.PathLike) -> Path:
        """Write the record as `folder`'s `training_info.json`; returns its path."""
        path = Path(folder) / TRAINING_INFO_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path


__all__ = ["RunInfo"]
