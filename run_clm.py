"""Pre-train pg_gpt2 on a corpus with the transformers Trainer (causal language modelling).

    python run_clm.py configs/shakespeare-cpu.yaml                 # a recipe (YAML/JSON of the flags below)
    python run_clm.py configs/shakespeare-cpu.yaml --max_steps 50  # flags after a recipe override it
    python run_clm.py --dataset_name shakespeare --tokenizer_name tokenizers/shakespeare-8k \\
        --config_name tiny --config_overrides "n_layer=6,n_embd=384" --output_dir outputs/run
    accelerate launch --config_file configs/accelerate/multi-gpu.yaml run_clm.py configs/pg-essays-gpu.yaml

The flags are those of transformers' examples/pytorch/language-modeling/run_clm.py (`--help` lists
them); a corpus flag after a recipe replaces the recipe's corpus. Re-running the same command on an
output folder resumes from its last complete checkpoint, or says the run is complete (a larger
--max_steps trains it further); `--overwrite_output_dir` starts over. Ctrl-C saves a checkpoint and
exits with 130. The output folder ends with the best model, its tokenizer, metrics.json, training
curves and a model card. See `modeling_pg_gpt2.training` and docs/faults.md.
"""

from modeling_pg_gpt2.arguments import make_parser, parse_arguments
from modeling_pg_gpt2.cli import run_cli
from modeling_pg_gpt2.corpus import CorpusArguments
from modeling_pg_gpt2.training import CLMTrainingArguments, DataTrainingArguments, ModelArguments, train


def main() -> dict[str, float]:
    parser = make_parser((ModelArguments, CorpusArguments, DataTrainingArguments, CLMTrainingArguments), __doc__)
    model_args, corpus_args, data_args, training_args = parse_arguments(parser)
    return train(model_args, corpus_args, data_args, training_args)


if __name__ == "__main__":
    run_cli(main)
