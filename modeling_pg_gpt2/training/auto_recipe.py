"""The automatic recipe in a run: measure, choose, train the tokenizer, and hand run_clm.py its arguments.

When a run trains from scratch and `--auto_recipe` is on (the default), [`apply_auto_recipe`] runs before
the model is built:

1. the corpus's training split is measured (UTF-8 bytes), and with a time budget the machine's training
   speed is timed on two shapes for a few steps each (a few seconds, reported in the log);
2. `recipe.choose_recipe` picks every value the user did not give (a flag or a recipe field wins);
3. without `--tokenizer_name`, a byte-level BPE of the chosen size is trained on the training split and
   saved in `OUTPUT_DIR/tokenizer` (a corpus with fewer merges to make gives a smaller one, recorded as such);
4. the choices and their reasons go to the log and to `OUTPUT_DIR/recipe.json`, which a re-run of the same
   command reads instead of choosing again, so a resumed run continues the same model with the same tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any

import torch

from ..common.outputs import RECIPE_FILE, RUN_TOKENIZER_DIR
from ..configuration_pg_gpt2 import PgGPT2Config
from ..data.blocks import DataTrainingArguments
from ..data.corpus import CorpusArguments, corpus_bytes, load_corpus
from ..data.tokenizer import TokenizerArguments, load_tokenizer, train_tokenizer
from ..modeling_pg_gpt2 import PgGPT2ForCausalLM
from .arguments import CLMTrainingArguments
from .hardware import native_bf16
from .model_init import ModelArguments, named_config, parse_config_overrides
from .optim import MuonAdamW, hidden_matrices
from .recipe import (
    BATCH_SEQUENCES,
    FIELDS,
    REFERENCE,
    SMALL,
    TRAINING_FIELDS,
    Recipe,
    Speed,
    choose_recipe,
    flops_per_token,
)

logger = logging.getLogger(__name__)

SHAPE = ("n_layer", "n_embd", "n_head", "n_positions")
DROPOUTS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")


def auto_recipe_applies(model_args: ModelArguments, training_args: CLMTrainingArguments) -> bool:
    """Whether the run chooses its own recipe: `--auto_recipe` (on by default) for a model trained from scratch."""
    return training_args.auto_recipe and model_args.model_name_or_path is None and training_args.do_train


def apply_auto_recipe(
    model_args: ModelArguments,
    corpus_args: CorpusArguments,
    data_args: DataTrainingArguments,
    training_args: CLMTrainingArguments,
    given: Set[str],
) -> tuple[ModelArguments, DataTrainingArguments, CLMTrainingArguments, Recipe | None]:
    """The run's arguments with the automatic recipe's choices for every field not in `given`, and the recipe.

    Returns the arguments unchanged (and no recipe) when the recipe does not apply.
    """
    if not auto_recipe_applies(model_args, training_args):
        return model_args, data_args, training_args, None
    output_dir = Path(training_args.output_dir)
    saved = output_dir / RECIPE_FILE
    if training_args.overwrite_output_dir:
        saved.unlink(missing_ok=True)
        shutil.rmtree(output_dir / RUN_TOKENIZER_DIR, ignore_errors=True)
    tokenizer_dir = output_dir / RUN_TOKENIZER_DIR
    if saved.is_file():
        recipe = Recipe(**json.loads(saved.read_text(encoding="utf-8")))
        logger.info("Automatic recipe: the one chosen when this run started (%s).", saved)
    else:
        recipe = _choose(model_args, corpus_args, data_args, training_args, given)
        if model_args.tokenizer_name is None:
            _train_tokenizer(corpus_args, tokenizer_dir, recipe)
        output_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(dataclasses.asdict(recipe), indent=2) + "\n", encoding="utf-8")
    for line in describe(recipe):
        logger.info("Automatic recipe: %s", line)
    for note in recipe.notes:
        logger.warning("Automatic recipe: %s.", note)
    if model_args.tokenizer_name is None:
        model_args = dataclasses.replace(model_args, tokenizer_name=str(tokenizer_dir))
    return (*_with_recipe(model_args, data_args, training_args, recipe, given), recipe)


def describe(recipe: Recipe) -> list[str]:
    """One line per choice, `name value (reason)`; the user's own values say `given`."""
    return [f"{name} {recipe.values[name]} ({recipe.reasons[name]})" for name in recipe.values]


def _choose(
    model_args: ModelArguments,
    corpus_args: CorpusArguments,
    data_args: DataTrainingArguments,
    training_args: CLMTrainingArguments,
    given: Set[str],
) -> Recipe:
    corpus = load_corpus(corpus_args)
    train_bytes = corpus_bytes(corpus["train"])
    fixed = _fixed_values(model_args, data_args, training_args, given)
    bytes_per_token = None
    if model_args.tokenizer_name is not None:
        tokenizer = load_tokenizer(model_args.tokenizer_name)
        fixed["vocab_size"] = len(tokenizer)
        bytes_per_token = _bytes_per_token(tokenizer, corpus["train"])
    speed = None
    if training_args.max_train_minutes:
        vocab = fixed.get("vocab_size") or choose_recipe(train_bytes, None, None, fixed).values["vocab_size"]
        device = training_args.device
        bf16 = training_args.bf16 or ("auto_bf16" not in given and native_bf16(device.type))  # as the run will
        speed = measure_speed(vocab, bf16, device, fixed.get("attn_implementation"))
    held_out = corpus_bytes(corpus["validation"])
    return choose_recipe(train_bytes, training_args.max_train_minutes, speed, fixed, bytes_per_token, held_out)


def _fixed_values(
    model_args: ModelArguments,
    data_args: DataTrainingArguments,
    training_args: CLMTrainingArguments,
    given: Set[str],
) -> dict[str, Any]:
    """The recipe fields the user set: flags and recipe-file fields, the shape of a given config, given dropout."""
    fixed = {name: getattr(training_args, name) for name in given & set(FIELDS) if hasattr(training_args, name)}
    if "block_size" in given and data_args.block_size:
        fixed["block_size"] = data_args.block_size
    if "attn_implementation" in given and model_args.attn_implementation:
        fixed["attn_implementation"] = model_args.attn_implementation
    if "lr_scheduler_kwargs" in given:
        fixed["decay_fraction"] = None  # the user's schedule settings are theirs: the recipe adds none
    if model_args.config_name is not None:  # a preset or config file: its shape is the user's
        config = named_config(model_args.config_name)
        fixed.update({name: getattr(config, name) for name in SHAPE})
    overrides = parse_config_overrides(model_args.config_overrides or "")
    fixed.update({name: overrides[name] for name in SHAPE if name in overrides})
    if any(name in overrides for name in DROPOUTS):
        fixed["dropout"] = overrides.get("resid_pdrop", 0.0)
    return fixed


def _with_recipe(
    model_args: ModelArguments,
    data_args: DataTrainingArguments,
    training_args: CLMTrainingArguments,
    recipe: Recipe,
    given: Set[str],
) -> tuple[ModelArguments, DataTrainingArguments, CLMTrainingArguments]:
    """The arguments with the recipe's values wherever the user gave none (their config overrides win too)."""
    values = recipe.values
    chosen = {name: values[name] for name in SHAPE}
    chosen.update({name: values["dropout"] for name in DROPOUTS})
    overrides = {**chosen, **parse_config_overrides(model_args.config_overrides or "")}
    model_args = dataclasses.replace(
        model_args,
        config_name=model_args.config_name or "gpt2",
        config_overrides=",".join(f"{name}={value}" for name, value in overrides.items()),
        # a run folder of an earlier release resumes with what it recorded (the recipe chose no attention then)
        attn_implementation=values.get("attn_implementation", model_args.attn_implementation),
    )
    if "block_size" not in given:
        data_args = dataclasses.replace(data_args, block_size=values["block_size"])
    training: dict[str, Any] = {name: values[name] for name in TRAINING_FIELDS if name in values and name not in given}
    if "eval_steps" not in given and "save_steps" not in given:
        training["save_steps"] = values["eval_steps"]
    if values.get("decay_fraction") and "lr_scheduler_kwargs" not in given:
        decay = max(1, round(values["decay_fraction"] * values["max_steps"]))
        training["lr_scheduler_kwargs"] = {"num_decay_steps": decay, "min_lr_ratio": 0.0}
    return model_args, data_args, dataclasses.replace(training_args, **training)


def _train_tokenizer(corpus_args: CorpusArguments, folder: Path, recipe: Recipe) -> None:
    """Train the recipe's byte-level BPE on the training split into `folder`; a corpus too small for the size
    asked gives fewer tokens, which the recipe then records."""
    asked = recipe.values["vocab_size"]
    logger.info("Automatic recipe: training a %d-token byte-level BPE on the training split (%s).", asked, folder)
    report = train_tokenizer(corpus_args, TokenizerArguments(output_dir=str(folder), vocab_size=asked))
    if report["vocab_size"] < asked:
        recipe.values["vocab_size"] = report["vocab_size"]
        recipe.reasons["vocab_size"] += f"; the corpus allowed {report['vocab_size']} of the {asked} asked"


def _bytes_per_token(tokenizer: Any, documents: Any, sample_bytes: int = 1_000_000) -> float:
    """The tokenizer's compression on up to `sample_bytes` of the training documents."""
    text, size = [], 0
    for document in documents["text"]:
        text.append(document)
        size += len(document.encode("utf-8"))
        if size >= sample_bytes:
            break
    tokens = sum(len(ids) for ids in tokenizer(text)["input_ids"])
    return size / max(tokens, 1)


def measure_speed(
    vocab_size: int, bf16: bool, device: torch.device, attention: str | None = None, steps: int = 6
) -> Speed:
    """This machine's training speed, from a few optimizer steps of a small and of the reference shape.

    The model, optimizer and precision are a real run's (fused AdamW, the fused head loss, bf16 autocast when
    the run uses it, no dropout); the data is random, which costs the same. Without an `attention` given, the
    reference shape is timed with eager and with sdpa attention and the faster is kept (`Speed.attention`);
    it is timed with Muon (`Speed.muon_cost`) and with dropout (`Speed.dropout_cost`) too. Two warm-up steps
    of each timing are not counted.
    """
    reference, small = {**REFERENCE, "vocab_size": vocab_size}, {**SMALL, "vocab_size": vocab_size}
    candidates = [attention] if attention else ["eager", "sdpa"]
    by_attention = {name: _time_steps(reference, name, bf16, device, steps) for name in candidates}
    attention = min(by_attention, key=lambda name: by_attention[name][1])
    timings = [_time_steps(small, attention, bf16, device, steps), by_attention[attention]]
    _, muon_seconds = _time_steps(reference, attention, bf16, device, steps, muon=True)
    _, dropout_seconds = _time_steps(reference, attention, bf16, device, steps, dropout=0.1)
    speed = dataclasses.replace(
        Speed.from_timings(*timings),
        muon_cost=muon_seconds / timings[1][1],
        dropout_cost=dropout_seconds / timings[1][1],
        attention=attention,
    )
    logger.info(
        "Automatic recipe: timed %d steps of two shapes (%s): %.0f ms a step whatever the model, then %.1f "
        "GFLOP/s (%s, %s attention%s); the larger shape's step takes %.2fx as long with Muon, %.2fx with dropout.",
        steps,
        ", ".join(f"{seconds * 1000:.0f} ms a step" for _, seconds in timings),
        speed.step_seconds * 1000,
        speed.flops_per_second / 1e9,
        "bf16" if bf16 else "fp32",
        attention,
        "".join(f"; {name} {seconds * 1000:.0f} ms" for name, (_, seconds) in by_attention.items())
        if len(by_attention) > 1
        else "",
        speed.muon_cost,
        speed.dropout_cost,
    )
    return speed


def _time_steps(
    shape: Mapping[str, int],
    attention: str,
    bf16: bool,
    device: torch.device,
    steps: int,
    muon: bool = False,
    dropout: float = 0.0,
) -> tuple[float, float]:
    """`(FLOPs, median seconds)` of one optimizer step of `shape` on 16 blocks, with AdamW or with Muon."""
    config = PgGPT2Config(**shape, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    config._attn_implementation = attention
    model = PgGPT2ForCausalLM(config).to(device).train()
    fused = True if device.type in ("cpu", "cuda") else None  # as the run's optimizer (optim.py)
    if muon:
        optimizer = MuonAdamW(model.parameters(), muon_params=hidden_matrices(model), lr=1e-4, fused=fused)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    batch = torch.randint(shape["vocab_size"], (BATCH_SEQUENCES, shape["n_positions"]), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        with autocast:
            loss = model(batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= 2:
            times.append(time.perf_counter() - start)
    per_token = flops_per_token(shape["n_layer"], shape["n_embd"], shape["vocab_size"], shape["n_positions"])
    return per_token * batch.numel(), sorted(times)[len(times) // 2]


def recorded(recipe: Recipe | None) -> Mapping[str, Any] | None:
    """The recipe as training_info.json and the model card record it: `{field: {"value", "reason"}}`."""
    if recipe is None:
        return None
    return {name: {"value": recipe.values[name], "reason": recipe.reasons[name]} for name in recipe.values}


__all__ = ["apply_auto_recipe", "auto_recipe_applies", "describe", "measure_speed", "recorded"]
