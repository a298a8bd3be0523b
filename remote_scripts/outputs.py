"""The job's outputs (DESIGN.md 4.1): what lands in --output, and the artifact events naming them.

model.onnx (labels and preprocessing in its metadata), labels.json, metrics.json, history.jsonl
and predictions.csv: every file replaced atomically, so a follower or a resumed run reads the old
file or the new one, never half of one; each announced by an artifact event with its size and
sha256 once written.
"""
import hashlib
import os
import tempfile

from . import metrics, progress
from .atomic import write_atomically
from .lifecycle import UsageError

OUTPUT_FILES = ("model.onnx", "labels.json", "metrics.json", "history.jsonl", "predictions.csv")


def write_json(path, obj):
    """`obj` as indented JSON in `path`, replaced atomically (progress.dumps: NaN as null)."""
    write_atomically(path, progress.dumps(obj, indent=2) + "\n")


def write_history(output, history):
    """history.jsonl: one line per epoch, rewritten after each so a follower sees every epoch."""
    write_atomically(os.path.join(output, "history.jsonl"), "".join(progress.dumps(row) + "\n" for row in history))


def sha256_of(path):
    """The artifact event's digest, so the client can tell a download is whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def writable_folder(path, flag):
    """Create folder `path` and write a file in it; UsageError naming `flag` when that fails."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path} is not a writable folder ({exc.strerror or exc})") from None


def write_outputs(out, dataset, indices, probabilities, result, history, report, export_model=None):
    """Write the outputs of a run scored on dataset `indices` (`probabilities`, metrics `result`,
    epochs `history`); export_model(path) writes model.onnx, None when the run keeps no model."""
    if export_model is not None:
        export_model(os.path.join(out, "model.onnx"))
    write_json(os.path.join(out, "labels.json"), list(dataset.classes))
    write_json(os.path.join(out, "metrics.json"), result)
    write_atomically(os.path.join(out, "predictions.csv"), metrics.predictions_csv(
        [dataset.paths[i] for i in indices], dataset.labels[indices], probabilities, dataset.classes))
    write_history(out, history)
    written = [name for name in OUTPUT_FILES if export_model is not None or name != "model.onnx"]
    for name in written:
        path = os.path.join(out, name)
        report.event("artifact", name=name, path=path, bytes=os.path.getsize(path), sha256=sha256_of(path))
    report.log(f"wrote {', '.join(written)} to {out}")
