"""The text a model trains on: corpora loaded as documents, the byte-level BPE tokenizer, blocks packed for
training (map-style, streamed or prepared once with `prepare_data.py`) and the collator of `--document_masking`.
"""
