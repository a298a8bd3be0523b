"""Prediction and evaluation with ONNX Runtime: the model file alone is enough (no torch).

BATCH_SIZE lives here, not in classifier.py, so that the SDK's signatures and the CLI's option
table can show it without loading numpy, PIL and ONNX Runtime.
"""

# Images per ONNX Runtime call. On the 2-core AVX2 build machine ResNet50 at 224 px runs about 15%
# faster per image at 8 than at 1, and slightly slower again at 16 and 32 (benchmarks/score.py);
# a GPU wants larger batches (`score --batch-size`).
BATCH_SIZE = 8
