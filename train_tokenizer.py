"""Train a byte-level BPE tokenizer like GPT-2's on your corpus and save it for `AutoTokenizer`.

Usage and flags: `modeling_pg_gpt2.cli.commands.tokenizer` (`python train_tokenizer.py --help`).
"""

from modeling_pg_gpt2.cli.commands import tokenizer

if __name__ == "__main__":
    tokenizer()
