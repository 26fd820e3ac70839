"""What every workflow shares: one-line errors, the names and checks of output folders, model and tokenizer sources.

The lowest layer of the tools: it imports nothing else of the package.
"""
