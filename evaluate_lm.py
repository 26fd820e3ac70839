"""Zero-shot evaluation as in the GPT-2 paper: perplexity of a text, LAMBADA, multiple choice (CBT, HellaSwag).

    python evaluate_lm.py outputs/shakespeare --task perplexity --data_file test.txt --stride 128
    python evaluate_lm.py outputs/shakespeare --task lambada --data_file lambada_test.jsonl
    python evaluate_lm.py my-model-gpt2 --task multiple_choice --data_file hellaswag.jsonl --batch_size 16
    python evaluate_lm.py openai-community/gpt2 --task perplexity --dataset_name wikitext \\
        --dataset_config_name wikitext-2-raw-v1 --dataset_split test --stride 512

MODEL is a run_clm.py output folder, a Hub id, or a transformers GPT-2 checkpoint (the converter's
other direction): the numbers are the same. Each figure is printed with its name, and all of them go to
a JSON file (--output_file). The README ("Zero-shot evaluation") gives the file formats and public
sources of the data. See `modeling_pg_gpt2.zero_shot`.
"""

from modeling_pg_gpt2.arguments import make_parser, parse_arguments
from modeling_pg_gpt2.cli import run_cli
from modeling_pg_gpt2.zero_shot import EvaluationArguments, evaluate_model


def main() -> dict:
    parser = make_parser(EvaluationArguments, __doc__)
    parser.add_argument("model", help="a run_clm.py output folder, a Hub model id or a GPT-2 checkpoint folder")
    args, positional = parse_arguments(parser)
    return evaluate_model(positional.model, args)


if __name__ == "__main__":
    run_cli(main)
