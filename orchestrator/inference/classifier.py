"""A trained model as the client sees it: an ONNX Runtime session plus labels and preprocessing.

Labels and preprocessing come from the ONNX metadata written by train.py (labels.json beside
the model is the fallback for labels), and images go through remote_scripts.imaging, the code
the training job used, so predictions here match the job's test metrics.
"""
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from remote_scripts import imaging

from ..errors import UserError

BATCH_SIZE = 32


class OnnxClassifier:
    def __init__(self, path):
        import onnxruntime as ort

        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(self.path), providers=ort.get_available_providers())
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise UserError(f"{self.path} is not a readable ONNX model ({type(exc).__name__})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.labels = self._labels(meta)
        if imaging.PREPROCESS_KEY not in meta:
            raise UserError(f"{self.path} has no '{imaging.PREPROCESS_KEY}' metadata: not a model made by orchestrate")
        self.preprocess = json.loads(meta[imaging.PREPROCESS_KEY])
        self.input_name = self.session.get_inputs()[0].name

    def _labels(self, meta):
        if imaging.LABELS_KEY in meta:
            return json.loads(meta[imaging.LABELS_KEY])
        fallback = self.path.with_name("labels.json")
        if fallback.exists():
            return json.loads(fallback.read_text())
        raise UserError(f"{self.path} has no label metadata and no labels.json beside it")

    def probabilities(self, batch):
        """Class probabilities [n, classes] for a preprocessed float32 batch [n, 3, H, W]."""
        return self.session.run(None, {self.input_name: batch})[0]

    def classify(self, paths):
        """(probabilities or None, error or None) per path, in order; a bad image never stops the rest."""
        results = [None] * len(paths)
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 1)) as pool:
            for start in range(0, len(paths), BATCH_SIZE):
                chunk = paths[start:start + BATCH_SIZE]
                arrays = list(pool.map(self._load, chunk))
                good = [i for i, a in enumerate(arrays) if not isinstance(a, str)]
                if good:
                    probs = self.probabilities(np.stack([arrays[i] for i in good]))
                    for row, i in enumerate(good):
                        results[start + i] = (probs[row], None)
                for i, a in enumerate(arrays):
                    if isinstance(a, str):
                        results[start + i] = (None, a)
        return results

    def _load(self, path):
        try:
            return imaging.preprocess_file(path, self.preprocess)
        except imaging.DECODE_ERRORS as exc:
            return "cannot read image: " + imaging.describe_decode_error(exc)

    def top_k(self, probs, k):
        order = np.argsort(-probs)[:k]
        return [{"label": self.labels[i], "score": float(probs[i])} for i in order]
