"""Tokenize and pack a corpus once into a folder that runs (on any number of nodes) read memory-mapped.

Usage and flags: `modeling_pg_gpt2.cli.commands.prepare` (`python prepare_data.py --help`).
"""

from modeling_pg_gpt2.cli.commands import prepare

if __name__ == "__main__":
    prepare()
