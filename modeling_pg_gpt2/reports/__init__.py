"""What a run reports about itself: the training curves and the model card."""
