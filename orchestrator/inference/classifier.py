"""A trained model as the client sees it: an ONNX Runtime session plus labels and preprocessing.

Labels and preprocessing come from the ONNX metadata written by train.py (labels.json beside
the model is the fallback for labels), and images go through remote_scripts.imaging, the code
the training job used, so predictions here match the job's test metrics.
"""
import copy
import io
import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from remote_scripts import imaging

from ..errors import UsageError
from . import BATCH_SIZE

# Batches decoded ahead of the one ONNX Runtime is computing: enough to keep the decode threads
# busy through a batch's inference, few enough that memory stays a few batches of tensors.
DECODE_AHEAD = 2


def decode_threads():
    """Threads for decoding: the CPUs this process may run on (its affinity mask, as `taskset` or
    a container's cpuset leaves it), not the host's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


NO_CAM = ("{path} has no class activation map ({why}); retrain it with this version of orchestrate "
          "(a ResNet or EfficientNet) to get one")

# Why an image was refused (ImageRejected.reason): the HTTP service answers each with its own status.
EMPTY, TOO_LARGE, UNREADABLE = "empty", "too large", "unreadable"


class ImageRejected(Exception):
    """One image the model cannot be fed: `message`, one line, and `reason` (EMPTY, TOO_LARGE, UNREADABLE)."""

    def __init__(self, message, reason):
        super().__init__(message)
        self.message = message
        self.reason = reason


def load_image(source, spec, max_pixels=None):
    """The model's float32 input [3, H, W] for one image, or ImageRejected saying why not.

    source: a file path, (name, bytes) of an image file held in memory (an upload; name may be
    None), or a PIL image (encoded by `encoded`, then decoded as a file is).
    max_pixels: refuse an image whose header claims more pixels before a single one is decoded
    (a 100-byte PNG can claim 100000x100000); PIL's own decompression-bomb limit, which trips as
    that header is read, is named the same way. Decode errors are the job's words ("cannot read
    image: ..."), so predict, score and the job's metrics.json agree, except that an image from
    memory is named by its file name rather than by PIL's repr of a buffer.
    """
    if isinstance(source, Image.Image):
        shown = "(the image in memory)"
        try:
            source = (None, encoded(source))
        except imaging.DECODE_ERRORS as exc:  # a mode no format holds
            raise ImageRejected("cannot read image: " + imaging.describe_decode_error(exc, name=shown),
                                UNREADABLE) from None
    elif isinstance(source, tuple):
        shown = repr(source[0]) if source[0] else "(the uploaded image)"
    else:
        shown = None
    if isinstance(source, tuple):
        data = source[1]
        if not data:
            raise ImageRejected("the image is empty (0 bytes)", EMPTY)

        def opened():
            return io.BytesIO(data)
    else:
        def opened():
            return source
    try:
        if max_pixels is not None:
            try:
                with Image.open(opened()) as header:  # reads the header only
                    width, height = header.size
            except Image.DecompressionBombError as exc:
                raise ImageRejected(f"image too large: {exc}", TOO_LARGE) from None
            if width * height > max_pixels:
                raise ImageRejected(f"image too large: {width}x{height} = {width * height} pixels, "
                                    f"more than the limit of {max_pixels}", TOO_LARGE)
        return imaging.preprocess_file(opened(), spec)
    except imaging.DECODE_ERRORS as exc:
        reason = TOO_LARGE if isinstance(exc, Image.DecompressionBombError) else UNREADABLE
        raise ImageRejected("cannot read image: " + imaging.describe_decode_error(exc, name=shown), reason) from None


def encoded(image):
    """A PIL image as the bytes of a lossless image file, for load_image.

    Why an image in memory is encoded and decoded again rather than fed as it is: its bytes then
    go through the very decode of a file (imaging.load_rgb: transparency composited on white,
    16-bit scaled to 8), so a picture predicts the same from memory as from its PNG file. PNG
    holds the usual modes; the others (CMYK, 32-bit float...) go as TIFF, which holds them all.
    """
    buffer = io.BytesIO()
    try:
        image.save(buffer, format="PNG", compress_level=0)  # lossless; no compression: memory, not disk
    except (OSError, KeyError):  # a mode PNG cannot hold
        buffer = io.BytesIO()
        image.save(buffer, format="TIFF")
    return buffer.getvalue()


class OnnxClassifier:
    """max_pixels: images claiming more pixels by their header are refused unread (see load_image).
    threads: ONNX Runtime's threads for one call, by default one per CPU this process may use.
    """

    def __init__(self, path, max_pixels=None, threads=None):
        import onnxruntime as ort

        self.path = Path(path)
        self.max_pixels = max_pixels
        options = ort.SessionOptions()
        # ONNX Runtime's own default is a thread per physical core of the machine, however few of
        # them this process may use (a container's cpuset, taskset): more threads than CPUs then.
        options.intra_op_num_threads = threads or decode_threads()
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                                providers=ort.get_available_providers())
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise UsageError(f"{self.path} is not a readable ONNX model ({type(exc).__name__})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.labels = self._labels(meta)
        if imaging.PREPROCESS_KEY not in meta:
            raise UsageError(f"{self.path} has no '{imaging.PREPROCESS_KEY}' metadata: not a model made by orchestrate")
        self.preprocess = json.loads(meta[imaging.PREPROCESS_KEY])
        self.input_name = self.session.get_inputs()[0].name
        self.has_cam = imaging.CAM_NAME in [o.name for o in self.session.get_outputs()]
        # why a model has no map: its metadata says, unless it was made before maps existed
        self.no_cam_reason = json.loads(meta.get(imaging.CAM_KEY, "{}")).get("why", "it was made before models had one")

    def _labels(self, meta):
        if imaging.LABELS_KEY in meta:
            return json.loads(meta[imaging.LABELS_KEY])
        fallback = self.path.with_name("labels.json")
        if fallback.exists():
            return json.loads(fallback.read_text())
        raise UsageError(f"{self.path} has no label metadata and no labels.json beside it")

    def probabilities(self, batch):
        """Class probabilities [n, classes] for a preprocessed float32 batch [n, 3, H, W]."""
        return self.session.run([imaging.OUTPUT_NAME], {self.input_name: batch})[0]

    def explain(self, batch):
        """(probabilities [n, classes], class activation maps [n, classes, h, w]) for a
        preprocessed batch: the maps are in logits, each class's averaging to its logit.
        UsageError when the model has no `cam` output (no_cam_reason says why)."""
        self.require_cam()
        return tuple(self.session.run([imaging.OUTPUT_NAME, imaging.CAM_NAME], {self.input_name: batch}))

    def classify(self, paths):
        """(probabilities or None, error or None) per path, in order; a bad image never stops the rest."""
        return list(self.stream(paths))

    def stream(self, paths, batch_size=BATCH_SIZE, workers=None):
        """Yield (probabilities or None, error or None) for each of `paths`, in order, as batches finish.

        Each of `paths` is what load_image takes: a file path, (name, bytes) of an image file in
        memory, or a PIL image.

        Decoding (PIL and numpy, which release the GIL) runs in a thread pool while ONNX Runtime
        computes the batch before them, so neither waits for the other. The decode futures form
        a bounded queue, DECODE_AHEAD batches ahead of the one being computed: memory does not
        grow with the number of images, and a stream abandoned half-way (Ctrl-C, a full disk)
        cancels the decodes still queued.
        """
        paths = iter(paths)
        pool = ThreadPoolExecutor(max_workers=workers or decode_threads())
        try:
            pending = deque(pool.submit(self._load, p) for p in islice(paths, batch_size * DECODE_AHEAD))
            while pending:
                batch = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
                pending.extend(pool.submit(self._load, p) for p in islice(paths, batch_size))
                good = [a for a in batch if not isinstance(a, str)]
                probs = iter(self.probabilities(np.stack(good)) if good else ())
                for a in batch:
                    yield (None, a) if isinstance(a, str) else (next(probs), None)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def limited(self, max_pixels):
        """This classifier, sharing its ONNX Runtime session, refusing images of more than `max_pixels`."""
        bounded = copy.copy(self)
        bounded.max_pixels = max_pixels
        return bounded

    def load(self, source):
        """The model's input for one image (what load_image takes); ImageRejected when it cannot be used."""
        return load_image(source, self.preprocess, self.max_pixels)

    def _load(self, source):
        """The model's input for one image, or the one-line reason it cannot be used (what stream yields)."""
        try:
            return self.load(source)
        except ImageRejected as exc:
            return exc.message

    def require_cam(self):
        """UsageError saying why, when the model has no class activation maps."""
        if not self.has_cam:
            raise UsageError(NO_CAM.format(path=self.path, why=self.no_cam_reason))

    def explain_one(self, source, label=None):
        """(probabilities [classes], class activation map [h, w], its label) for one image (what
        load_image takes): the map of `label`, by default the predicted class. UsageError for a
        label the model does not have, or a model without maps; ImageRejected for a bad image."""
        if label is not None and label not in self.labels:
            raise UsageError(f"{label!r} is not one of the model's labels ({', '.join(map(str, self.labels[:10]))}"
                             f"{', ...' if len(self.labels) > 10 else ''})")
        probs, cams = self.explain(self.load(source)[None])
        index = int(np.argmax(probs[0])) if label is None else self.labels.index(label)
        return probs[0], cams[0, index], self.labels[index]

    def top_k(self, probs, k):
        """The k most probable labels, most probable first: [{label, score}]."""
        order = np.argsort(-probs)[:k]
        return [{"label": self.labels[i], "score": float(probs[i])} for i in order]


def decode_rgb(source):
    """The 8-bit RGB picture of one image (what load_image takes), decoded as the model's input
    is, for drawing on: the file at full size, not the model's resized input."""
    if isinstance(source, Image.Image):
        source = (None, encoded(source))
    return imaging.load_rgb(io.BytesIO(source[1]) if isinstance(source, tuple) else source)


def overlay(picture, heat, max_side=None):
    """`picture` (PIL RGB) with `heat` ([h, w], a class activation map) over it: the map scaled to
    0..1 over its own range, stretched smoothly over the whole picture (the model's input is the
    whole picture, resized), coloured from dark blue (lowest) to red (highest), blended half and
    half. `max_side`: the picture is first shrunk to fit a square of that side.
    """
    picture = picture.convert("RGB")
    if max_side and max(picture.size) > max_side:
        picture = picture.copy()
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    heat = np.asarray(heat, dtype=np.float32)
    span = float(heat.max() - heat.min())
    scaled = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    level = np.asarray(Image.fromarray(scaled, mode="F").resize(picture.size, Image.Resampling.BILINEAR))
    # the "jet" colour map: blue, cyan, yellow, red as the level rises
    colours = np.clip(1.5 - np.abs(4 * level[..., None] - np.array([3.0, 2.0, 1.0])), 0, 1)
    blended = 0.5 * np.asarray(picture, dtype=np.float32) + 0.5 * 255 * colours
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), "RGB")


def png_bytes(image):
    """A PIL image as the bytes of a PNG file."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
