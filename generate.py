"""Generate text with a trained model, streamed to the terminal as it is produced.

    python generate.py outputs/shakespeare "ROMEO:"
    python generate.py outputs/pg-essays "Being a founder" "The best way to" --max_new_tokens 200 --seed 0
    python generate.py me/pg-gpt2 --prompts_file prompts.txt --num_return_sequences 3 --temperature 0.7
    python generate.py shakespeare-onnx "ROMEO:" --backend onnxruntime   # an export: convert --to onnx

MODEL is a folder written by run_clm.py (or push_to_hub.py's Hub id). With no prompt, the model
starts from <|endoftext|> (an unconditional sample). Run with --help for every sampling option.
"""

from modeling_pg_gpt2.arguments import make_parser, parse_arguments
from modeling_pg_gpt2.cli import run_cli
from modeling_pg_gpt2.generation import GenerationArguments, generate_text, read_prompts


def main() -> list[list[str]]:
    parser = make_parser(GenerationArguments, __doc__)
    parser.add_argument("model", help="a run_clm.py output folder or a Hub model id")
    parser.add_argument("prompts", nargs="*", help="text(s) to continue")
    args, positional = parse_arguments(parser)
    return generate_text(positional.model, read_prompts(positional.prompts, args.prompts_file), args)


if __name__ == "__main__":
    run_cli(main)
