"""orchestrate: train an image classifier on Azure ML or locally and get an ONNX model back."""

__version__ = "0.1.0"
