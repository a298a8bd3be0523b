"""int8 models: ONNX Runtime's static quantization of a model.onnx, kept only when it still agrees.

An int8 model runs two to three times faster on a CPU with 8-bit dot products (AVX-512 VNNI,
AMX, ARM dot-product), at the price of small changes in its numbers. How small depends on the
model and on the images its activation ranges were calibrated on, so the result is measured
before it is kept: on a test split the fp32 model never trained on, the int8 model must pick the
fp32 model's label for at least MIN_AGREEMENT of the images and, where the split is large enough
for accuracy to mean something (GATED_ACCURACY_IMAGES), lose at most a given number of points.

The quantization is ONNX Runtime's own: the graph pre-processed (shape inference, constant
folding: quant_pre_process), then quantize_static in QDQ format with per-channel int8 weights and
uint8 activations (U8S8: the fast path of ONNX Runtime's x86 kernels, about 3x fp32 on an AVX-512
VNNI CPU, where int8 activations ran no faster than fp32: benchmarks/int8.py), their ranges
calibrated by min/max (ReduceMin/ReduceMax outputs: memory stays small whatever the number of
images) over a few hundred images decoded exactly as the model's metadata says
(classifier.load_image, the decode of predict and of the training job). The final Softmax
stays in float, so the probabilities keep their resolution (an 8-bit softmax rounds every score
to 1/255 and turns log-loss infinite). The int8 file carries the fp32 file's
metadata (labels, preprocessing) plus QUANTIZED_KEY, the measured agreement and drop, and the
sha256 of the fp32 file it was made from (SOURCE_KEY): a model.onnx replaced since (a resumed
run's, a copied one) no longer has its int8 model, and stale_reason says so.
"""
import copy
import logging
import random
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from remote_scripts.atomic import write_atomically
from remote_scripts.metrics import classification_metrics

from .. import events
from .classifier import ImageRejected, OnnxClassifier, decode_threads, load_image

INT8_SUFFIX = ".int8.onnx"  # model.onnx -> model.int8.onnx, beside it
# The int8 file's own metadata, beside the fp32 file's (orchestrate.labels, orchestrate.preprocess...).
QUANTIZED_KEY = "orchestrate.quantized"      # "int8"
AGREEMENT_KEY = "orchestrate.agreement"      # share of test images where int8 and fp32 pick the same label
DROP_KEY = "orchestrate.accuracy_drop"       # fp32 accuracy - int8 accuracy, in points
SOURCE_KEY = "orchestrate.fp32_sha256"       # sha256 of the fp32 model file the int8 model was made from
MIN_AGREEMENT = 0.97
# Below this many test images one image moves accuracy by half a point or more: the accuracy rule
# would judge noise, so only agreement decides.
GATED_ACCURACY_IMAGES = 200
# Min/max calibration settles within a few hundred images; more cost time and change little.
CALIBRATION_IMAGES = 300
CALIBRATION_BATCH = 16


def int8_path(model):
    """Where the int8 model of the fp32 file `model` goes: model.onnx -> model.int8.onnx."""
    model = Path(model)
    return model.with_name(model.stem + INT8_SUFFIX)


def fp32_path(int8):
    """The fp32 file an int8 model file stands beside: model.int8.onnx -> model.onnx."""
    int8 = Path(int8)
    return int8.with_name(int8.name[:-len(INT8_SUFFIX)] + ".onnx")


def stale_reason(int8, metadata):
    """Why the int8 model file `int8`, whose metadata is `metadata` (read by the session that
    loaded it), must not stand for the model.onnx beside it, or None when it was made from that very
    file: one made from an earlier model.onnx (a resumed run's, a copied one) would predict for a
    model that is no longer the run's; one that records no source (an earlier version wrote none)
    may be of another model, so it is passed over rather than trusted."""
    int8, fp32 = Path(int8), fp32_path(int8)
    source = metadata.get(SOURCE_KEY)
    if source is None:
        return f"{int8.name} does not record which {fp32.name} it was made from"
    if source != model_digest(fp32):
        return f"{int8.name} was made from an earlier {fp32.name}"
    return None


def model_digest(path):
    """The sha256 of a model file, remembered in the hash cache of dataset uploads by (path, size,
    mtime_ns): hashing a ResNet50 model.onnx (94 MB) takes about 0.1 s, which every predict of a
    run with an int8 model would otherwise add to its 0.7 s (a cache hit: 0.2 ms)."""
    from ..dataset.manifest import file_digest, hash_cache
    from ..errors import UsageError

    try:
        with hash_cache() as cache:
            return file_digest(path, cache)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def calibration_sample(images, seed=0):
    """At most CALIBRATION_IMAGES of `images`, chosen by a seeded RNG (the same ones every time)."""
    images = list(images)
    if len(images) <= CALIBRATION_IMAGES:
        return images
    return random.Random(f"int8 calibration {seed}").sample(images, CALIBRATION_IMAGES)


def quantize_model(fp32_path, calibration, test_images, test_labels, *, out=None, max_accuracy_drop=1.0,
                   gate=True, on_event=events.ignore):
    """Quantize the model file `fp32_path` to int8, compare it with fp32 on the test images, and
    keep it at `out` (default: int8_path) only when it passes the gate (or `gate` is False).

    calibration: the images (what load_image takes: paths, or (name, bytes)) whose activations set
    the int8 ranges. test_images / test_labels: the images the two models are compared on and
    their true labels' indices (an iterable, read once: a packed dataset's bytes come as needed).
    Returns the figures metrics.json records: the int8 model's accuracy, macro_f1 and log_loss,
    the fp32 model's under "fp32", agreement, accuracy_drop (points), test_images,
    calibration_images, kept, reason (why it was removed; None when kept) and path.
    """
    out = Path(out) if out is not None else int8_path(fp32_path)
    digest = model_digest(fp32_path)  # before reading the model: a file replaced meanwhile makes the int8 stale
    fp32 = OnnxClassifier(fp32_path)
    with tempfile.TemporaryDirectory(prefix="orchestrate-int8-") as work:
        candidate = Path(work) / "model.int8.onnx"
        used = _quantize(fp32, calibration, candidate, Path(work), on_event)
        int8 = OnnxClassifier(candidate)
        truth, fp32_probs, int8_probs = _compare(fp32, int8, test_images, test_labels, on_event)
        figures = compare_models(fp32.labels, truth, fp32_probs, int8_probs)
        figures.update(calibration_images=used)
        reason = gate_refusal(figures, max_accuracy_drop)
        figures.update(kept=reason is None or not gate, reason=reason, path=str(out))
        if figures["kept"]:
            _write_with_metadata(candidate, fp32_path, out, figures, digest)
        else:
            out.unlink(missing_ok=True)  # an earlier int8 model of this file no longer stands
    return figures


def _quantize(fp32, calibration, target, work, on_event):
    """Write the int8 model of `fp32` (an OnnxClassifier) to `target`; returns how many images calibrated it."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = _calibration_batches(fp32, calibration)
    if not batches:
        from ..errors import DatasetError

        raise DatasetError("no readable calibration image: the int8 ranges need at least one")
    used = sum(len(batch) for batch in batches)
    on_event(events.notice(f"int8: calibrating on {used} image(s)"))
    prepared = work / "prepared.onnx"
    with _quiet_quantization_logs():
        # skip_symbolic_shape: sympy is no client dependency, and ONNX's own inference covers these CNNs
        quant_pre_process(str(fp32.path), str(prepared), skip_symbolic_shape=True)
        softmax = [node.name for node in onnx.load(str(prepared), load_external_data=False).graph.node
                   if node.op_type == "Softmax"]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter(batches)

            def get_next(self):
                batch = next(self.batches, None)
                return None if batch is None else {fp32.input_name: batch}

        quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=softmax)
    return used


def _calibration_batches(classifier, calibration):
    """The calibration images as the model's input, CALIBRATION_BATCH per array; unreadable ones left out."""
    def load(source):
        try:
            return load_image(source, classifier.preprocess)
        except ImageRejected:
            return None

    with ThreadPoolExecutor(max_workers=decode_threads()) as pool:
        inputs = [x for x in pool.map(load, calibration) if x is not None]
    return [np.stack(inputs[i:i + CALIBRATION_BATCH]) for i in range(0, len(inputs), CALIBRATION_BATCH)]


def _compare(fp32, int8, images, labels, on_event):
    """(true labels, fp32 probabilities, int8 probabilities) of the readable `images`.

    Each image is decoded once for both models: classifier.stream's pipeline (decode threads
    ahead of inference) runs a copy of the fp32 classifier whose probabilities are the two
    models' side by side."""
    classes = len(fp32.labels)
    both = copy.copy(fp32)
    both.probabilities = lambda batch: np.concatenate([fp32.probabilities(batch), int8.probabilities(batch)], axis=1)
    labels = list(labels)
    on_event(events.notice(f"int8: comparing with the fp32 model on {len(labels)} test image(s)"))
    truth, rows = [], []
    for label, (probs, error) in zip(labels, both.stream(images)):
        if error is None:
            truth.append(label)
            rows.append(probs)
    if not rows:
        from ..errors import DatasetError

        raise DatasetError("no readable test image: the int8 model cannot be compared with the fp32 one")
    rows = np.stack(rows)
    return np.array(truth), rows[:, :classes], rows[:, classes:]


def compare_models(labels, truth, fp32_probs, int8_probs):
    """The comparison's figures: the int8 model's accuracy, macro F1, log-loss, the fp32 model's,
    the agreement of their labels and the accuracy drop in points."""
    def headline(probs):
        found = classification_metrics(truth, probs, labels)
        return {key: found[key] for key in ("accuracy", "macro_f1", "log_loss")}

    fp32, int8 = headline(fp32_probs), headline(int8_probs)
    agreement = float((fp32_probs.argmax(axis=1) == int8_probs.argmax(axis=1)).mean())
    # rounded: 0.97 - 0.96 is 0.010000000000000009, which must not count as more than 1.0 point
    drop = round((fp32["accuracy"] - int8["accuracy"]) * 100, 6)
    return {**int8, "fp32": fp32, "agreement": agreement, "accuracy_drop": drop, "test_images": len(truth)}


def gate_refusal(figures, max_accuracy_drop):
    """Why the gate refuses the int8 model of `figures`, in one line; None when it passes."""
    n, agreement = figures["test_images"], figures["agreement"]
    if agreement < MIN_AGREEMENT:
        return (f"it picks the fp32 model's label for {agreement:.1%} of the {n} test image(s), "
                f"less than the {MIN_AGREEMENT:.0%} required")
    if n >= GATED_ACCURACY_IMAGES and figures["accuracy_drop"] > max_accuracy_drop:
        return (f"its accuracy is {figures['accuracy_drop']:.2f} point(s) below the fp32 model's on {n} test "
                f"images, more than the {max_accuracy_drop:g} allowed")
    return None


def _write_with_metadata(candidate, fp32_path, out, figures, digest):
    """Write the int8 model to `out` (atomically) with the fp32 model's metadata and its own
    (`digest`: the sha256 of the fp32 file it was made from)."""
    import onnx

    model = onnx.load(str(candidate))
    source = {prop.key: prop.value for prop in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    source.update({QUANTIZED_KEY: "int8", AGREEMENT_KEY: f"{figures['agreement']:.6g}",
                   DROP_KEY: f"{figures['accuracy_drop']:.6g}", SOURCE_KEY: digest})
    del model.metadata_props[:]
    for key, value in source.items():
        model.metadata_props.add(key=key, value=value)
    write_atomically(out, model.SerializeToString())


@contextmanager
def _quiet_quantization_logs():
    """ONNX Runtime's quantization tools log advice on Python's root logger ("please consider
    pre-processing", a bias that is no initializer): no part of what a user asked for, so those
    records are held back while they run (a library prints nothing; its caller renders events).
    Only records from onnxruntime's files below ERROR: another thread's (a server's) pass."""
    def from_quantization(record):
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname

    root = logging.getLogger()
    root.addFilter(from_quantization)
    try:
        yield
    finally:
        root.removeFilter(from_quantization)
