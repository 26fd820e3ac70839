"""The options of `convert.py` (`pg-gpt2-convert`); the source and the destination are positional arguments."""

from __future__ import annotations

from dataclasses import dataclass, field

TARGETS = ("pg_gpt2", "gpt2", "onnx", "gguf")
ONNX_DTYPES = ("float32", "float16")
GGUF_DTYPES = ("f32", "f16", "q8_0")


@dataclass
class ConvertArguments:
    """What to convert to, and how."""

    to: str = field(
        default="pg_gpt2",
        metadata={
            "help": "pg_gpt2: GPT-2 -> pg_gpt2; gpt2: pg_gpt2 -> native GPT-2, loadable without remote code; "
            "onnx: an ONNX Runtime folder; gguf: a llama.cpp file",
            "choices": list(TARGETS),
        },
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": f"onnx: {' or '.join(ONNX_DTYPES)} (default {ONNX_DTYPES[0]}); gguf: {', '.join(GGUF_DTYPES)} "
            "(default f16)",
            "choices": [*ONNX_DTYPES, *GGUF_DTYPES],
        },
    )
    revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of a Hub SRC."})
    overwrite: bool = field(default=False, metadata={"help": "Replace DST if it is not empty."})

    def __post_init__(self) -> None:
        allowed = {"onnx": ONNX_DTYPES, "gguf": GGUF_DTYPES}.get(self.to, ())
        if self.dtype is not None and not allowed:
            raise ValueError(f"--dtype applies to --to onnx and --to gguf only, not to --to {self.to}")
        if self.dtype is not None and self.dtype not in allowed:
            raise ValueError(f"--dtype {self.dtype} is not one of --to {self.to}'s: {', '.join(allowed)}")


__all__ = ["GGUF_DTYPES", "ONNX_DTYPES", "TARGETS", "ConvertArguments"]
