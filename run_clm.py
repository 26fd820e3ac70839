"""Pre-train pg_gpt2 on a corpus with the transformers Trainer (causal language modelling).

Usage and flags: `modeling_pg_gpt2.cli.commands.train` (`python run_clm.py --help`).
"""

from modeling_pg_gpt2.cli.commands import train

if __name__ == "__main__":
    train()
