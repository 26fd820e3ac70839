"""Using a trained model: loading a folder for use, sampling streamed to the terminal (torch), and decoding an
ONNX export on onnxruntime.
"""
