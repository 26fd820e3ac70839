"""The command-line programs: `pg-gpt2-train`, `-tokenizer`, `-prepare`, `-generate`, `-evaluate`, `-push`, `-convert`.

Each is a function of `argv` (default: `sys.argv[1:]`) run under `cli.run_cli`, so bad input is one line
on stderr and an exit status. The installed commands (`[project.scripts]` in pyproject.toml) and the
repository's scripts (`python run_clm.py ...`) call the same function; its docstring is the `--help` text.
Every command imports only the module it needs, so `--help` and a bad flag answer without loading the rest
(a run's Trainer, the Hub client, datasets). `parser(name)` is a command's parser, as the command builds it.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..common.errors import command
from .arguments import ArgumentParser, given_fields, make_parser, parse_arguments


@command
def train(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Pre-train pg_gpt2 on a corpus with the transformers Trainer (causal language modelling).

        python run_clm.py configs/shakespeare-cpu.yaml                 # a recipe (YAML/JSON of the flags below)
        python run_clm.py configs/shakespeare-cpu.yaml --max_steps 50  # flags after a recipe override it
        python run_clm.py --dataset_name shakespeare --tokenizer_name tokenizers/shakespeare-8k \\
            --config_name tiny --config_overrides "n_layer=6,n_embd=384" --output_dir outputs/run
        accelerate launch --config_file configs/accelerate/multi-gpu.yaml run_clm.py configs/pg-essays-gpu.yaml

    `pg-gpt2-train` is the same command once the package is installed. The flags are those of transformers'
    examples/pytorch/language-modeling/run_clm.py (`--help` lists them); a corpus flag after a recipe
    replaces the recipe's corpus. Re-running the same command on an output folder resumes from its last
    complete checkpoint, or says the run is complete (a larger --max_steps trains it further);
    `--overwrite_output_dir` starts over. Ctrl-C (or SIGTERM, as a cluster preempting the job sends) saves a
    checkpoint and exits with 130 (143). The output folder ends with the best model, its tokenizer,
    metrics.json, training curves and a model card. See `modeling_pg_gpt2.training.run` and docs/faults.md.
    """
    from ..training.run import train as run_training

    train_parser = parser("train")
    return run_training(*parse_arguments(train_parser, argv), given=given_fields(train_parser, argv))


def _train_parser() -> ArgumentParser:
    from ..data.blocks import DataTrainingArguments
    from ..data.corpus import CorpusArguments
    from ..training.arguments import CLMTrainingArguments
    from ..training.model_init import ModelArguments

    types = (ModelArguments, CorpusArguments, DataTrainingArguments, CLMTrainingArguments)
    return make_parser(types, _usage(train))


@command
def tokenizer(argv: Sequence[str] | None = None) -> None:
    """Train a byte-level BPE tokenizer like GPT-2's on your corpus and save it for `AutoTokenizer`.

        python train_tokenizer.py --dataset_name shakespeare --output_dir tokenizers/shakespeare-8k
        python train_tokenizer.py --train_file essays/ --vocab_size 16384 --output_dir tokenizers/essays
        python train_tokenizer.py --dataset_name sgoel9/paul_graham_essays --output_dir tokenizers/pg

    `pg-gpt2-tokenizer` is the same command once the package is installed. The corpus options are shared
    with run_clm.py (see `modeling_pg_gpt2.data.corpus`); the tokenizer is described in
    `modeling_pg_gpt2.data.tokenizer`. A leading recipe file (YAML/JSON of the flags) works as in run_clm.py.
    """
    from ..data.tokenizer import format_report, train_tokenizer

    corpus_args, tokenizer_args = parse_arguments(parser("tokenizer"), argv)
    report = train_tokenizer(corpus_args, tokenizer_args)
    print(format_report(report, tokenizer_args.output_dir))


def _tokenizer_parser() -> ArgumentParser:
    from ..data.corpus import CorpusArguments
    from ..data.tokenizer import TokenizerArguments

    return make_parser((CorpusArguments, TokenizerArguments), _usage(tokenizer))


@command
def prepare(argv: Sequence[str] | None = None) -> None:
    """Tokenize and pack a corpus once into a folder that runs (on any number of nodes) read memory-mapped.

        python prepare_data.py --train_file corpus/ --tokenizer_name tokenizers/essays --block_size 1024 \\
            --preprocessing_num_workers 8 --output_dir data/essays-1024
        python run_clm.py configs/pg-essays-gpu.yaml --prepared_data data/essays-1024

    `pg-gpt2-prepare` is the same command once the package is installed. The corpus options (and the
    train/validation split) are run_clm.py's; the blocks are the ones run_clm.py would cut from that corpus,
    `<|endoftext|>` between documents included. A run on the folder must use the same tokenizer and block
    size (it is refused otherwise). See `modeling_pg_gpt2.data.prepared`.
    """
    from ..data.prepared import format_report, prepare_corpus

    corpus_args, args = parse_arguments(parser("prepare"), argv)
    print(format_report(prepare_corpus(corpus_args, args), args.output_dir))


def _prepare_parser() -> ArgumentParser:
    from ..data.corpus import CorpusArguments
    from ..data.prepared import PrepareArguments

    return make_parser((CorpusArguments, PrepareArguments), _usage(prepare))


@command
def generate(argv: Sequence[str] | None = None) -> list[list[str]]:
    """Generate text with a trained model, streamed to the terminal as it is produced.

        python generate.py outputs/shakespeare "ROMEO:"
        python generate.py outputs/pg-essays "Being a founder" "The best way to" --max_new_tokens 200 --seed 0
        python generate.py me/pg-gpt2 --prompts_file prompts.txt --num_return_sequences 3 --temperature 0.7
        python generate.py shakespeare-onnx "ROMEO:" --backend onnxruntime   # an export: convert --to onnx

    `pg-gpt2-generate` is the same command once the package is installed. MODEL is a folder written by
    run_clm.py (or push_to_hub.py's Hub id). With no prompt, the model starts from <|endoftext|> (an
    unconditional sample). Run with --help for every sampling option.
    """
    from ..generation.sampling import generate_text, read_prompts

    args, positional = parse_arguments(parser("generate"), argv)
    return generate_text(positional.model, read_prompts(positional.prompts, args.prompts_file), args)


def _generate_parser() -> ArgumentParser:
    from ..generation.sampling import GenerationArguments

    built = make_parser(GenerationArguments, _usage(generate))
    built.add_argument("model", help="a run_clm.py output folder or a Hub model id")
    built.add_argument("prompts", nargs="*", help="text(s) to continue")
    return built


@command
def evaluate(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Zero-shot evaluation as in the GPT-2 paper: perplexity of a text, LAMBADA, multiple choice (CBT, HellaSwag).

        python evaluate_lm.py outputs/shakespeare --task perplexity --data_file test.txt --stride 128
        python evaluate_lm.py outputs/shakespeare --task lambada --data_file lambada_test.jsonl
        python evaluate_lm.py my-model-gpt2 --task multiple_choice --data_file hellaswag.jsonl --batch_size 16
        python evaluate_lm.py openai-community/gpt2 --task perplexity --dataset_name wikitext \\
            --dataset_config_name wikitext-2-raw-v1 --dataset_split test --stride 512

    `pg-gpt2-evaluate` is the same command once the package is installed. MODEL is a run_clm.py output
    folder, a Hub id, or a transformers GPT-2 checkpoint (the converter's other direction): the numbers are
    the same. Each figure is printed with its name, and all of them go to a JSON file (--output_file). The
    file formats and public sources of the data: docs/evaluation.md. See
    `modeling_pg_gpt2.evaluation.zero_shot`.
    """
    from ..evaluation.zero_shot import evaluate_model

    args, positional = parse_arguments(parser("evaluate"), argv)
    return evaluate_model(positional.model, args)


def _evaluate_parser() -> ArgumentParser:
    from ..evaluation.zero_shot import EvaluationArguments

    built = make_parser(EvaluationArguments, _usage(evaluate))
    built.add_argument("model", help="a run_clm.py output folder, a Hub model id or a GPT-2 checkpoint folder")
    return built


@command
def push(argv: Sequence[str] | None = None) -> None:
    """Publish a trained pg-gpt2 folder to the Hugging Face Hub.

        python push_to_hub.py OUTPUT_DIR your-username/pg-gpt2-shakespeare [--private] [--revision BRANCH]
            [--commit_message MSG] [--create_pr] [--dry_run] [--as_gpt2] [--include PATTERN ...]

    `pg-gpt2-push` is the same command once the package is installed. The token comes from HF_TOKEN or
    `hf auth login`, the endpoint from HF_ENDPOINT. The folder is validated in a clean process (it must
    load with trust_remote_code and generate) before anything is sent; see `modeling_pg_gpt2.hub.push` for
    what is uploaded.
    """
    from ..hub.push import push_to_hub

    args, paths = parse_arguments(parser("push"), argv)
    push_to_hub(paths.output_dir, paths.repo_id, args)


def _push_parser() -> ArgumentParser:
    from ..hub.push import PushArguments

    built = make_parser(PushArguments, _usage(push))
    built.add_argument("output_dir", help="Folder written by run_clm.py (or save_pretrained).")
    built.add_argument("repo_id", help="Repository on the Hub, as namespace/name.")
    return built


@command
def convert(argv: Sequence[str] | None = None) -> Path:
    """Convert between transformers' GPT-2 checkpoints and pg_gpt2 (same weights, same logits), or export.

        python convert.py openai-community/gpt2 gpt2-pg            # GPT-2 -> pg_gpt2
        python convert.py outputs/shakespeare out --to gpt2       # pg_gpt2 -> native GPT-2
        python convert.py outputs/shakespeare out --to onnx       # or --to gguf

    `pg-gpt2-convert` is the same command once the package is installed. See `modeling_pg_gpt2.export.convert`,
    `modeling_pg_gpt2.export.onnx` and `modeling_pg_gpt2.export.gguf`.
    """
    args, paths = parse_arguments(parser("convert"), argv)

    if args.to == "onnx":
        from ..export.onnx import export_onnx

        dst = export_onnx(paths.src, paths.dst, args.dtype or "float32", args.overwrite, args.revision)
        print(f"wrote an ONNX model to {dst}; decode with: python generate.py {dst} --backend onnxruntime")
        return dst
    if args.to == "gguf":
        from ..export.gguf import export_gguf

        dst = export_gguf(paths.src, paths.dst, args.dtype or "f16", args.overwrite, args.revision)
        print(f"wrote a GGUF model to {dst}; run it with llama.cpp: llama-completion -m {dst} -p 'Once upon a'")
        return dst
    from ..common.outputs import CONFIG_FILE
    from ..export.convert import convert_gpt2_to_pg, convert_pg_to_gpt2

    to_gpt2 = args.to == "gpt2"
    dst = (convert_pg_to_gpt2 if to_gpt2 else convert_gpt2_to_pg)(
        paths.src, paths.dst, overwrite=args.overwrite, revision=args.revision
    )
    if to_gpt2:
        architecture = json.loads((dst / CONFIG_FILE).read_text())["architectures"][0]  # or a task head's class
        print(f"wrote a GPT-2 checkpoint to {dst}; load it with {architecture}.from_pretrained({str(dst)!r})")
    else:
        print(
            f"wrote a pg_gpt2 checkpoint to {dst}; load it with "
            f"AutoModelForCausalLM.from_pretrained({str(dst)!r}, trust_remote_code=True)"
        )
    return dst


def _convert_parser() -> ArgumentParser:
    from ..export.arguments import ConvertArguments

    built = make_parser(ConvertArguments, _usage(convert))
    built.add_argument(
        "src", help="checkpoint folder or Hub model id: GPT-2 (e.g. openai-community/gpt2), or pg_gpt2 with --to gpt2"
    )
    built.add_argument("dst", help="output folder (a .gguf file with --to gguf); must be empty unless --overwrite")
    return built


PARSERS: dict[str, Callable[[], ArgumentParser]] = {
    "train": _train_parser,
    "tokenizer": _tokenizer_parser,
    "prepare": _prepare_parser,
    "generate": _generate_parser,
    "evaluate": _evaluate_parser,
    "push": _push_parser,
    "convert": _convert_parser,
}


def parser(name: str) -> ArgumentParser:
    """The parser of the command `name` (a function of this module): its flags, their types and ranges."""
    return PARSERS[name]()


def _usage(program: Any) -> str:
    """A command's `--help` description: its docstring, dedented."""
    return inspect.getdoc(program) or ""


__all__ = ["PARSERS", "convert", "evaluate", "generate", "parser", "prepare", "push", "tokenizer", "train"]
