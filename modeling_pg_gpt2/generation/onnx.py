"""Decode with an ONNX export (`convert --to onnx`) on onnxruntime: no torch model, same text as `generate()`.

    >>> from modeling_pg_gpt2.generation.onnx import OnnxCausalLM
    >>> model = OnnxCausalLM.from_pretrained("shakespeare-onnx")  # doctest: +SKIP
    >>> ids = model.generate(torch.tensor([[464, 3290]]), max_new_tokens=20)  # doctest: +SKIP

`OnnxCausalLM.generate` takes the decoding options `generate.py` passes to transformers' `generate()`
(greedy or sampled, temperature, top-k, top-p, repetition penalty, several samples, a streamer) and
applies them with transformers' own logits processors, so greedy decoding gives the same tokens as the
torch model. The graph runs once over the prompt (empty past) and then once per new token, feeding each
step's `present.*` tensors back as the next step's `past_key_values.*`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig, GPT2Config
from transformers.generation import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ..common.errors import UserError

# An export's file and its cache tensors' names (`export.onnx` writes them; optimum's and transformers.js's names).
ONNX_FILE = "model.onnx"


def past_names(n_layer: int, prefix: str = "past_key_values") -> list[str]:
    """The cache tensors' names, key before value, layer by layer: `past_key_values.0.key`, ...`"""
    return [f"{prefix}.{layer}.{kind}" for layer in range(n_layer) for kind in ("key", "value")]


def ort_session(path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None):
    """An onnxruntime session over the graph at `path`, all graph optimisations on; `providers` default: CPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("the onnxruntime backend needs onnxruntime: pip install 'pg-gpt2[onnx]'") from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=chosen)


class OnnxCausalLM:
    """An ONNX export of pg_gpt2 run by onnxruntime, with a `generate()` for the options of generate.py.

    config: the export's `GPT2Config` (hyper-parameters); generation_config: its defaults (eos, pad).
    """

    def __init__(self, session, config: GPT2Config, generation_config: GenerationConfig) -> None:
        self.session = session
        self.config = config
        self.generation_config = generation_config
        self.device = torch.device("cpu")  # where generate() returns its tensors
        self.input_names = [i.name for i in session.get_inputs()]
        self.past_names = past_names(config.n_layer)
        past = {i.name: i for i in session.get_inputs()}[self.past_names[0]]
        self.kv_dtype = np.float16 if past.type == "tensor(float16)" else np.float32
        self.kv_shape = (config.n_head, config.n_embd // config.n_head)  # (H, D) of each (B, H, P, D) tensor

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None
    ) -> OnnxCausalLM:
        """Open a folder written by `convert --to onnx`; `providers`: onnxruntime's, default the CPU one."""
        folder = Path(folder).expanduser()
        if not (folder / ONNX_FILE).is_file():
            raise UserError(
                f"{folder} has no {ONNX_FILE}; export the model first: python convert.py MODEL {folder} --to onnx"
            )
        config = GPT2Config.from_pretrained(folder)
        try:
            generation_config = GenerationConfig.from_pretrained(folder)
        except OSError:  # no generation_config.json: the model config's ids
            generation_config = GenerationConfig.from_model_config(config)
        return cls(ort_session(folder / ONNX_FILE, providers, threads), config, generation_config)

    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, past: list[np.ndarray] | None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One run of the graph: (logits (B, T, V), present key/value tensors (B, H, P+T, D) per layer).

        input_ids (B, T) int64; attention_mask (B, P+T) int64, 0 for left padding; past: the previous
        call's present tensors, or None for a prompt. Positions count real tokens only, as the torch model's.
        """
        B, T = input_ids.shape
        if past is None:
            heads, head_dim = self.kv_shape
            past = [np.zeros((B, heads, 0, head_dim), self.kv_dtype)] * len(self.past_names)
        position_ids = np.clip(attention_mask.cumsum(-1) - 1, 0, None)[:, -T:]
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        feed.update(zip(self.past_names, past, strict=True))
        logits, *present = self.session.run(None, feed)
        return logits, present

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        num_return_sequences: int = 1,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        streamer: Any = None,
    ) -> torch.Tensor:
        """Continue (B, T) `input_ids` (left-padded when `attention_mask` says so) by up to `max_new_tokens`.

        Returns (B * num_return_sequences, T + new) ids, prompt included; a sequence that produced
        `eos_token_id` (default: the generation config's) continues with `pad_token_id`, and decoding
        stops when every sequence has, as in transformers. Sampling draws from torch's generator
        (`transformers.set_seed` makes it reproducible).
        """
        if eos_token_id is None:
            eos_token_id = self.generation_config.eos_token_id
        eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
        pad = pad_token_id if pad_token_id is not None else self.generation_config.pad_token_id
        if pad is None:
            pad = int(eos[0]) if len(eos) else 0
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ids = input_ids.cpu().repeat_interleave(num_return_sequences, dim=0)
        mask = attention_mask.cpu().long().repeat_interleave(num_return_sequences, dim=0)
        processors = LogitsProcessorList()
        if repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
        if do_sample:  # the order of transformers' generate()
            if temperature != 1.0:
                processors.append(TemperatureLogitsWarper(temperature))
            if top_k:
                processors.append(TopKLogitsWarper(top_k))
            if top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p))
        if streamer is not None:
            streamer.put(ids)

        unfinished = torch.ones(ids.shape[0], dtype=torch.bool)
        step_ids, past = ids, None
        for _ in range(max_new_tokens):
            logits, past = self.forward(step_ids.numpy(), mask.numpy(), past)
            scores = processors(ids, torch.from_numpy(logits[:, -1]).float())  # (B, V)
            if do_sample:
                next_tokens = torch.multinomial(scores.softmax(dim=-1), num_samples=1).squeeze(1)
            else:
                next_tokens = scores.argmax(dim=-1)
            next_tokens = torch.where(unfinished, next_tokens, pad)
            ids = torch.cat([ids, next_tokens[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step_ids = next_tokens[:, None]
            if streamer is not None:
                streamer.put(next_tokens)
            unfinished &= ~torch.isin(next_tokens, eos)
            if not unfinished.any():
                break
        if streamer is not None:
            streamer.end()
        return ids


__all__ = ["ONNX_FILE", "OnnxCausalLM", "ort_session"]
