"""`pg-gpt2-serve`: `transformers serve` (an OpenAI-compatible HTTP server) for pg_gpt2 folders.

    pg-gpt2-serve outputs/shakespeare --trust-remote-code --port 8000
    pg-gpt2-serve outputs/shakespeare --trust-remote-code --continuous-batching --cb-num-blocks 256
    python -m modeling_pg_gpt2.cli.serve outputs/shakespeare --trust-remote-code     # the same

Every option is `transformers serve`'s (`--help` lists them). Why a command of its own: `transformers serve`
loads a model's class as `getattr(transformers, config.architectures[0])`, which fails for a model whose code
comes with its folder, `--trust-remote-code` or not (it never reads `auto_map`). It would load the folder through
`AutoModelForCausalLM` only if config.json named no architecture, and vLLM needs that name. So this command makes
the name `PgGPT2ForCausalLM` resolve, on the transformers module, to `AutoModelForCausalLM`, and runs
transformers' own CLI: the folder loads exactly as `AutoModelForCausalLM.from_pretrained(folder, ...)` loads it,
with the folder's own code under `--trust-remote-code` (what vLLM and the Hub run), with this package's otherwise.

The model runs in a process that `transformers serve` starts with multiprocessing's "spawn": that process
imports the main module again (this module, or the `pg-gpt2-serve` script that imports it), which is why the
name is made to resolve when this module is imported. See docs/serving.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import transformers
from transformers import AutoModelForCausalLM

from ..modeling_pg_gpt2 import PgGPT2ForCausalLM

# The config.json `architectures` entries of the pg_gpt2 models that generate text.
SERVED_ARCHITECTURES = (PgGPT2ForCausalLM.__name__,)


def resolve_architectures_for_transformers_serve() -> None:
    """Make `getattr(transformers, "PgGPT2ForCausalLM")` (how `transformers serve` finds a model's class) give
    `AutoModelForCausalLM`, unless transformers has a class of that name itself."""
    for name in SERVED_ARCHITECTURES:
        if not hasattr(transformers, name):
            setattr(transformers, name, AutoModelForCausalLM)


resolve_architectures_for_transformers_serve()  # here, not in main(): the model's spawned process only imports us


def main(argv: Sequence[str] | None = None) -> None:
    """Run `transformers serve` with `argv` (default: the command line's arguments); see the module docstring."""
    import typer
    from transformers.cli.serve import Serve

    app = typer.Typer(add_completion=False)
    app.command()(Serve)  # the only command: `pg-gpt2-serve [OPTIONS] FOLDER`, as `transformers serve` takes it
    app(args=sys.argv[1:] if argv is None else list(argv), prog_name="pg-gpt2-serve")


if __name__ == "__main__":
    main()
