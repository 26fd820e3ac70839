"""Convert between transformers' GPT-2 checkpoints and pg_gpt2 (both ways), or export to ONNX or GGUF.

Usage and flags: `modeling_pg_gpt2.cli.commands.convert` (`python convert.py --help`).
"""

from modeling_pg_gpt2.cli.commands import convert

if __name__ == "__main__":
    convert()
