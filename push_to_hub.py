"""Publish a trained pg-gpt2 folder to the Hugging Face Hub.

Usage and flags: `modeling_pg_gpt2.cli.commands.push` (`python push_to_hub.py --help`).
"""

from modeling_pg_gpt2.cli.commands import push

if __name__ == "__main__":
    push()
