"""Zero-shot evaluation as in the GPT-2 paper: perplexity of a text, LAMBADA, multiple choice (CBT, HellaSwag).

Usage and flags: `modeling_pg_gpt2.cli.commands.evaluate` (`python evaluate_lm.py --help`).
"""

from modeling_pg_gpt2.cli.commands import evaluate

if __name__ == "__main__":
    evaluate()
