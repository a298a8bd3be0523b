"""A trained model in Python: predict, evaluate, score a folder into a file, serve over HTTP.

A model is the self-describing model.onnx a run writes: its labels and its preprocessing travel in
its metadata, so the file alone predicts what the training job measured (the same decode and
normalization, remote_scripts.imaging). `orchestrate predict`, `evaluate`, `score` and `serve`
are this class behind a command line.

Example:
    >>> from orchestrator import Model
    >>> model = Model("digits-20261123-101500-ab12")     # a run id, a run folder or a model.onnx
    >>> model.labels
    ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']
    >>> [p.label for p in model.predict(["seven.png", "three.png"])]
    ['7', '3']
"""
import os
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from . import events
from .errors import UsageError
from .inference import BATCH_SIZE
from .inference.serve_settings import (DEFAULT_MAX_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PIXELS,
                                       DEFAULT_READ_TIMEOUT)

if TYPE_CHECKING:
    import numpy

# What predict takes: a path (a file, or a folder of images), a PIL image, or a numpy array.
ImageLike = Union[str, os.PathLike, Any]


@dataclass(frozen=True)
class Prediction:
    """What a model says about one image.

    `image` is the file's path, None for an image given in memory. A readable image has `label`,
    its probability `score`, the `top_k` most probable (label, probability) pairs, most probable
    first, and `scores`, every label's probability (they sum to 1). An unreadable image has
    `error`, one line saying why, label and score None and no scores: one bad file never stops
    the others.

    Example:
        >>> p = model.predict("seven.png", top_k=2)[0]
        >>> p.label, round(p.score, 2), p.top_k
        ('7', 0.91, [('7', 0.91), ('1', 0.05)])
    """

    image: str | None
    label: str | None
    score: float | None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict:
        """The JSON object `orchestrate predict --json` prints for this image:
        {image, label, score, top_k: [{label, score}]}, or {image, error} for an unreadable one.

        Example:
            >>> json.dumps([p.to_json() for p in model.predict("./photos")])
        """
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "label": self.label, "score": self.score,
                "top_k": [{"label": label, "score": score} for label, score in self.top_k]}


class Model:
    """A trained classifier: its ONNX file loaded once into ONNX Runtime, on the CPU or a GPU.

    `path_or_run` is a model.onnx file, a run folder or its outputs/ folder, or a run id or a
    unique prefix of one; a run id's outputs are downloaded first when they are not on this
    machine yet (a completed Azure run). UsageError when there is no model there, or the file is
    not a model made by orchestrate (it lacks the labels and preprocessing metadata).

    A run's int8 model (orchestrator.quantize: two to three times faster on a CPU) is used when
    it was kept, unless `fp32`, and only if it was made from the run's current model.onnx;
    `quantized` says which one this is and `chosen_for` why. A file is used as it is.

    Example:
        >>> model = Model("runs/digits-20261123-101500-ab12/outputs/model.onnx")
        >>> model.preprocessing["size"]
        [224, 224]
        >>> Model("digits-20261123-101500-ab12").quantized, Model("digits-20261123-101500-ab12", fp32=True).quantized
        ('int8', None)
    """

    def __init__(self, path_or_run: str | os.PathLike, fp32: bool = False):
        from .inference.classifier import OnnxClassifier
        from .inference.quantize import fp32_path, stale_reason
        from .run_lookup import model_path

        path = model_path(path_or_run, fp32=fp32)
        self._classifier = OnnxClassifier(path)
        self._passed_over = None
        if path != Path(path_or_run) and self.quantized:  # a run's int8 model, chosen for its name
            self._passed_over = stale_reason(path, self._classifier.session.get_modelmeta().custom_metadata_map)
            if self._passed_over:
                path = fp32_path(path)
                self._classifier = OnnxClassifier(path)
        self.path: Path = path.resolve()

    def __repr__(self):
        return f"Model({str(self.path)!r})"

    @property
    def labels(self) -> list[str]:
        """The labels, in the order of the model's output (the dataset's class folders, sorted).

        Example:
            >>> model.labels
            ['cat', 'dog']
        """
        return list(self._classifier.labels)

    @property
    def quantized(self) -> str | None:
        """"int8" for a model made by orchestrator.quantize (its metadata says so), None for an fp32 one.

        Example:
            >>> Model("digits-20261123-101500-ab12").quantized
            'int8'
        """
        from .inference.quantize import QUANTIZED_KEY

        return self._classifier.session.get_modelmeta().custom_metadata_map.get(QUANTIZED_KEY)

    def chosen_for(self, given) -> str | None:
        """The line to tell a user who named a run (`given`) and got its int8 model, whose numbers
        differ slightly from the fp32 model's, or its fp32 model because the int8 file beside it
        was made from an earlier model.onnx (slower than expected, and fixed by quantizing again);
        None when there is nothing to tell (an fp32 model asked for, or a file named by its path).

        Example:
            >>> Model("digits-20261123-101500-ab12").chosen_for("digits-20261123-101500-ab12")
            'model.int8.onnx was made from an earlier model.onnx: using runs/.../model.onnx (run ...'
        """
        if self._passed_over:
            from .run_folder import RunFolder

            # a folder of outputs without its run's spec.json is quantized as a model file
            target = (shlex.quote(str(given)) if RunFolder.containing(self.path.parent)
                      else f"{shlex.quote(str(self.path))} --calibration DATA")
            return f"{self._passed_over}: using {self.path} (run `orchestrate quantize {target}` again)"
        if self.quantized == "int8" and not Path(given).is_file():
            return f"using the int8 model {self.path} (--fp32 for the fp32 one)"
        return None

    @property
    def preprocessing(self) -> dict:
        """How an image becomes the model's input, as its metadata records it: `size` [height,
        width], `resize`, `scale`, `mean`, `std`, `channel_order`, `layout`, `jpeg_draft`.

        Example:
            >>> model.preprocessing["mean"]
            [0.485, 0.456, 0.406]
        """
        return dict(self._classifier.preprocess)

    def predict(self, images: ImageLike | Iterable[ImageLike], top_k: int = 1, *, batch_size: int = BATCH_SIZE,
                workers: int | None = None) -> list[Prediction]:
        """One Prediction per image, in the order given; an image file named twice (or found in two
        folders given) is predicted once: pair results with inputs by `Prediction.image`.

        `images` is one image or a list of them, each:
        - a path (str or Path) of an image file, whatever its name, or of a folder, whose images
          are taken recursively (the training job's extensions, in any case; hidden files and
          folders skipped), as `orchestrate predict` takes them;
        - a PIL image, in any mode (transparency is composited on white, as for files);
        - a numpy array of uint8 pixels, H x W x 3 (RGB) or H x W (gray).
        Images in memory go through the same decode as files, so an array predicts what its PNG
        file predicts. An unreadable file is a Prediction with `error` set; a path that does not
        exist, a folder without images or an array of another shape or type is a UsageError.
        `batch_size` images go to ONNX Runtime at once while `workers` threads (default: this
        process's CPUs) decode the next ones.

        Example:
            >>> import numpy as np
            >>> model.predict(np.zeros((64, 64, 3), dtype=np.uint8))[0].label
            'black'
            >>> for p in model.predict(["a.jpg", "./more-photos"], top_k=3):
            ...     print(p.image, p.error or p.top_k)
        """
        if not isinstance(top_k, int) or top_k < 1:
            raise UsageError(f"top_k must be a whole number of at least 1, not {top_k!r}")
        names, sources = self._sources(images)
        classifier = self._classifier
        k = min(top_k, len(classifier.labels))
        predictions = []
        for name, (probs, error) in zip(names, classifier.stream(sources, batch_size, workers)):
            if error:
                predictions.append(Prediction(image=name, label=None, score=None, error=error))
                continue
            ranked = [(t["label"], t["score"]) for t in classifier.top_k(probs, k)]
            predictions.append(Prediction(image=name, label=ranked[0][0], score=ranked[0][1], top_k=ranked,
                                          scores={label: float(p) for label, p in zip(classifier.labels, probs)}))
        return predictions

    @staticmethod
    def _sources(images):
        """(names, sources) of predict's `images`: the path of each file (None for an image in
        memory) and what the classifier's stream takes for it (a path or a PIL image)."""
        from PIL import Image

        from .inference.score import images_of

        import numpy as np

        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            images = [images]
        names, sources, seen = [], [], set()
        for index, item in enumerate(images):
            if isinstance(item, (str, os.PathLike)):
                for path in images_of(item):
                    key = os.path.normpath(path)
                    if key not in seen:  # a file named twice, or also by its folder, is predicted once
                        seen.add(key)
                        names.append(str(path))
                        sources.append(path)
            elif isinstance(item, Image.Image):
                names.append(None)
                sources.append(item)
            elif isinstance(item, np.ndarray):
                names.append(None)
                sources.append(_array_image(item, index))
            else:
                raise UsageError(f"image {index}: a path, a PIL image or a numpy array, not {type(item).__name__}")
        return names, sources

    @property
    def has_cam(self) -> bool:
        """Whether the model carries class activation maps (its ONNX output `cam`): models of the
        ResNets and EfficientNet do, unless too many classes would make the map costly; MobileNetV3's,
        whose head is not linear in its feature map, and models made before maps existed do not.

        Example:
            >>> model.has_cam
            True
        """
        return self._classifier.has_cam

    def require_cam(self) -> None:
        """A UsageError saying why the model has no class activation maps (explain would fail): a
        caller that predicts and explains asks before it does either.

        Example:
            >>> Model("mobilenet-run").require_cam()
            UsageError: ... has no class activation map (...); retrain it ...
        """
        self._classifier.require_cam()

    def explain(self, image: ImageLike, label: str | None = None) -> "numpy.ndarray":
        """The class activation map of one image: float32 [h, w], the model's last feature map
        (the input's height and width over 32 for a ResNet or EfficientNet), for `label`, by
        default the predicted class. Each cell is how much that part of the image adds to the
        class's logit (the map's mean is the logit); cell (i, j) covers the input's rows i*H/h to
        (i+1)*H/h, the whole image resized. Why: to see what the model looked at.

        `image` is what predict takes, one image. UsageError for an unreadable image, a label the
        model does not have, or a model without maps (has_cam: retrain it with this version).

        Example:
            >>> heat = model.explain("seven.png")
            >>> heat.shape, np.unravel_index(heat.argmax(), heat.shape)
            ((7, 7), (3, 4))
            >>> model.explain("seven.png", label="1").mean()   # the logit of "1"
        """
        from .inference.classifier import ImageRejected

        names, sources = self._sources(image)
        if len(sources) != 1:
            raise UsageError(f"explain takes one image, not {len(sources)}")
        try:
            return self._classifier.explain_one(sources[0], label)[1]
        except ImageRejected as exc:
            raise UsageError(f"{names[0] or 'the image'}: {exc.message}") from None

    def explain_to(self, images: ImageLike | Iterable[ImageLike], folder: str | os.PathLike, *,
                   max_side: int = 640) -> list[Path | None]:
        """Write, for each image, a PNG of the predicted class's heat map over the picture into
        `folder` (made if missing), named after the image (<name>.explain.png; image-<n> for one
        in memory), and return their paths in order (None for an unreadable image). Pictures larger
        than `max_side` pixels are shrunk first. What `orchestrate predict --explain DIR` writes.
        UsageError before anything is written when the model has no maps.

        Example:
            >>> model.explain_to(["seven.png", "./more"], "heat")[0]
            PosixPath('heat/seven.explain.png')
        """
        from .inference.classifier import ImageRejected, decode_rgb, overlay

        self._classifier.require_cam()
        names, sources = self._sources(images)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written, taken = [], set()
        for index, (name, source) in enumerate(zip(names, sources)):
            try:
                _, heat, _ = self._classifier.explain_one(source)
                picture = decode_rgb(source)
            except ImageRejected:
                written.append(None)
                continue
            stem = Path(name).stem if name else f"image-{index}"
            target, n = folder / f"{stem}.explain.png", 1
            while target in taken:  # the same name in two folders
                n += 1
                target = folder / f"{stem}-{n}.explain.png"
            taken.add(target)
            overlay(picture, heat, max_side).save(target, format="PNG")
            written.append(target)
        return written

    def evaluate(self, folder: str | os.PathLike) -> dict:
        """The model's metrics on a labeled folder, FOLDER/<label>/<images>: what
        `orchestrate evaluate --json` prints, in the shape of a run's metrics.json (accuracy, macro
        accuracy, log-loss, per-class precision and recall, confusion matrix), plus `skipped`,
        the unreadable images. A sub-folder that is not one of the model's labels is a UsageError;
        a folder without labeled images a DatasetError.

        Example:
            >>> model.evaluate("./holdout")["accuracy"]
            0.94
        """
        from .inference.evaluate import evaluate_folder

        return evaluate_folder(self._classifier, folder)

    def score(self, source: str | os.PathLike | Iterable[str | os.PathLike], out: str | os.PathLike, *,
              top_k: int = 1, batch_size: int = BATCH_SIZE, workers: int | None = None, force: bool = False,
              on_progress: Callable[[int, int], None] | None = None) -> dict:
        """Score every image of `source` (a folder, recursively, an image, or a list of them) into
        `out`, a .csv or .jsonl file with one row per image (path, label, score, top_k, error).

        For many images: memory stays bounded whatever their number, an unreadable image gets an
        error row and the rest go on, and `out` appears only once every image has its row (an
        interrupted run leaves the previous file as it was). An existing `out` is replaced only
        with `force`. on_progress(done, total) is called at the start and after each image.
        Returns the summary `orchestrate score --json` prints: {images, scored, errors, seconds,
        images_per_second, out}.

        Example:
            >>> model.score("./new-photos", "scores.csv")["scored"]
            1200
        """
        from .inference.score import check_out, list_images, score_to_file

        out = check_out(out, force)
        images = list_images([source] if isinstance(source, (str, os.PathLike)) else source)
        report = on_progress or (lambda done, total: None)
        report(0, len(images))
        return score_to_file(self._classifier, images, out, top_k, batch_size, workers,
                             on_progress=lambda done: report(done, len(images)))

    def serve(self, host: str = "127.0.0.1", port: int = 8000, *, workers: int = 1,
              max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
              allowed_hosts: Iterable[str] = (), max_connections: int = DEFAULT_MAX_CONNECTIONS,
              read_timeout: float = DEFAULT_READ_TIMEOUT,
              on_event: Callable[[dict], None] = events.ignore) -> None:
        """Serve the model over HTTP until interrupted (it blocks): what `orchestrate serve` runs.

        Endpoints: POST /predict (a multipart `file`, or JSON {"data": "<base64>"}), POST
        /predict/batch, GET /labels, GET /health, GET /docs, and a page at / to try it. Only the
        Host names of this machine are answered, plus `allowed_hosts` ("*.example.com", "*"):
        another name gets 400, so no web page can reach the service through a name of its own.
        Requests are capped at `max_bytes`, images at `max_pixels` (by their header), open
        connections per process at `max_connections`, and a client has `read_timeout` seconds to
        send a request. A port in use or a bad host name is a UsageError before anything starts;
        then a notice event says where the model is served.

        Example:
            >>> Model("digits-20261123-101500-ab12").serve(port=9000, on_event=print)
        """
        from .inference.serve import run_server

        run_server(self._classifier, host, port, workers=workers, max_bytes=max_bytes, max_pixels=max_pixels,
                   allowed_hosts=tuple(allowed_hosts), max_connections=max_connections,
                   read_timeout=read_timeout, on_event=on_event)


def _array_image(array, index):
    """The PIL image of a numpy array of uint8 pixels, H x W x 3 (RGB) or H x W (gray)."""
    from PIL import Image

    import numpy as np

    if array.dtype != np.uint8 or not array.size or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise UsageError(f"image {index}: a numpy array of uint8 pixels, H x W x 3 (RGB) or H x W (gray), "
                         f"not {array.dtype} of shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array), "RGB" if array.ndim == 3 else "L")
