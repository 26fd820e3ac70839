"""Train a byte-level BPE tokenizer like GPT-2's on your corpus and save it for `AutoTokenizer`.

    python train_tokenizer.py --dataset_name shakespeare --output_dir tokenizers/shakespeare-8k
    python train_tokenizer.py --train_file essays/ --vocab_size 16384 --output_dir tokenizers/essays
    python train_tokenizer.py --dataset_name sgoel9/paul_graham_essays --output_dir tokenizers/pg

The corpus options are shared with run_clm.py (see `modeling_pg_gpt2.corpus`); the tokenizer is
described in `modeling_pg_gpt2.tokenizer`. Run with --help for every option.
"""

from transformers import HfArgumentParser

from modeling_pg_gpt2.cli import run_cli
from modeling_pg_gpt2.corpus import CorpusArguments
from modeling_pg_gpt2.tokenizer import TokenizerArguments, format_report, train_tokenizer


def main() -> None:
    parser = HfArgumentParser((CorpusArguments, TokenizerArguments), description=__doc__.split("\n\n")[0])
    corpus_args, tokenizer_args = parser.parse_args_into_dataclasses()
    report = train_tokenizer(corpus_args, tokenizer_args)
    print(format_report(report, tokenizer_args.output_dir))


if __name__ == "__main__":
    run_cli(main)
