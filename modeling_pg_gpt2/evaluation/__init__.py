"""Measuring a model: the metrics of every evaluation during training (loss, perplexity, accuracy, bits per
byte), multiple-choice tasks and samples at each evaluation, and `evaluate_lm.py`'s zero-shot evaluation.
"""
