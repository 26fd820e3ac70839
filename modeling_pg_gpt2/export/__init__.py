"""Other formats of a checkpoint: transformers' GPT-2 (both ways), ONNX and GGUF."""
