"""The entry script of `orchestrate score` on Azure ML: a parallel job's init()/run() contract.

Azure ML's parallel runtime starts max_concurrency_per_instance worker processes on each node,
imports this file in each, calls init() once, then run(mini_batch) with lists of file paths (the
files of the mounted data folder) until every mini-batch is done, and appends what run() returns
to one predictions file (append_row). Why the model is loaded in init(): an ONNX Runtime session
costs far more to build than a mini-batch costs to score, so each process builds it once.

Each row is one JSON object with the columns of `orchestrate predict --out` and local `score`
(orchestrator.inference.score.COLUMNS: path, label, score, top_k, error), one line per row, so
labels with commas, quotes or spaces survive the append-row file unchanged; the client turns
the file into the user's .csv or .jsonl. Every file of a mini-batch gets its row: the runtime
counts a file without one as failed (error_threshold), so a corrupt image gets an error row
instead of failing its mini-batch, and a file that is not an image by name (imaging's rule)
gets one too, which the client drops as local scoring skips such files.

Preprocessing and labels come from the model's own metadata, decoded by imaging.py exactly as
in training and in the client's OnnxClassifier, so a node scores what `orchestrate predict` would.
Program arguments (after the runtime's own): --model FILE, --data FOLDER (the mounted input,
so rows name files relative to it), --top-k K, --threads N.
"""
import argparse
import json
import os

import numpy as np

if not (__spec__ and __spec__.parent):  # loaded as a file by the parallel runtime: this folder becomes the package
    import job_package  # noqa: F401
from remote_scripts import imaging

BATCH_SIZE = 32  # images per session.run, as the client's OnnxClassifier batches them

_model = None  # the worker process's loaded model (init)


class Model:
    """An ONNX Runtime session with the labels and preprocessing of its metadata."""

    def __init__(self, path, data_root=None, top_k=1, threads=None):
        """threads: ONNX Runtime's intra-op threads; the node's CPUs shared by its worker processes
        (None: ONNX Runtime's default, one per core, right for one process alone)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), options, providers=ort.get_available_providers())
        meta = self.session.get_modelmeta().custom_metadata_map
        if imaging.LABELS_KEY not in meta or imaging.PREPROCESS_KEY not in meta:
            raise ValueError(f"{path} lacks the orchestrate label and preprocessing metadata")
        self.labels = json.loads(meta[imaging.LABELS_KEY])
        self.preprocess = json.loads(meta[imaging.PREPROCESS_KEY])
        self.input_name = self.session.get_inputs()[0].name
        self.data_root = data_root
        self.top_k = max(1, min(int(top_k), len(self.labels)))

    def name_of(self, path):
        """The row's path: relative to the data folder (the mount point differs per node)."""
        if self.data_root:
            relative = os.path.relpath(path, self.data_root)
            if not relative.startswith(".."):
                return relative.replace(os.sep, "/")
        return str(path)

    def rows(self, paths):
        """One row per path, in order; an unreadable image or a non-image file gets its error."""
        rows, decoded = [], []
        for path in paths:
            row = {"path": self.name_of(path), "label": None, "score": None, "top_k": None, "error": None}
            rows.append(row)
            if not imaging.is_image_name(os.path.basename(str(path))):
                row["error"] = "not an image file"
                continue
            try:
                decoded.append((row, imaging.preprocess_file(path, self.preprocess)))
            except imaging.DECODE_ERRORS as exc:
                row["error"] = "cannot read image: " + imaging.describe_decode_error(exc)
        for start in range(0, len(decoded), BATCH_SIZE):
            chunk = decoded[start:start + BATCH_SIZE]
            probs = self.session.run([imaging.OUTPUT_NAME], {self.input_name: np.stack([a for _, a in chunk])})[0]
            for (row, _), p in zip(chunk, probs):
                order = np.argsort(-p)[:self.top_k]
                row["top_k"] = [{"label": self.labels[i], "score": float(p[i])} for i in order]
                row["label"], row["score"] = row["top_k"][0]["label"], row["top_k"][0]["score"]
        return rows


def parse_arguments(argv=None):
    """Our program arguments among the parallel runtime's own (which it also passes)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data")
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--threads", type=int)
    known, _ = parser.parse_known_args(argv)
    return known


def init(argv=None):
    """Load the model once per worker process (the parallel contract's init)."""
    global _model
    args = parse_arguments(argv)
    _model = Model(args.model, args.data, args.top_k, args.threads)


def run(mini_batch):
    """The rows of one mini-batch (a list of file paths), one JSON line per file."""
    return [json.dumps(row) for row in _model.rows(list(mini_batch))]
