"""Generate text with a trained model, streamed to the terminal as it is produced.

Usage and flags: `modeling_pg_gpt2.cli.commands.generate` (`python generate.py --help`).
"""

from modeling_pg_gpt2.cli.commands import generate

if __name__ == "__main__":
    generate()
