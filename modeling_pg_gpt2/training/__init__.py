"""Pre-training with the transformers `Trainer` (`run_clm.py`): arguments, the run, checkpoints and resuming,
callbacks, the model to train, hardware set-up, optimizers, throughput and what a finished run writes.
"""
