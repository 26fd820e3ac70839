"""The command-line programs (`pg-gpt2-*` and the scripts at the top of the repository) and their argument
parsing: each parses its flags or a recipe, then makes one call into the package.
"""
