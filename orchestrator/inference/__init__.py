"""Prediction and evaluation with ONNX Runtime: the model file alone is enough (no torch)."""
