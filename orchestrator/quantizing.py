"""int8 models from Python: `quantize(run_or_model)` writes model.int8.onnx beside the fp32 model.

What `orchestrate quantize` and `orchestrate train --quantize int8` run. ONNX Runtime's static
quantization (orchestrator.inference.quantize) is calibrated on a few hundred images and kept
only if it passes the gate: on the test split it picks the fp32 model's label for at least 97% of
the images and, on 200 images or more, loses at most `max_accuracy_drop` points of accuracy.

For a run, the images are the run's own: its training split calibrates, its test split gates, both
rebuilt on this machine from the dataset the client trained from (spec.json's data folder, or
its packed copy) with the job's own scan and split (remote_scripts.folder_dataset), and the
figures go to the run's metrics.json under "int8". A model file given by path needs
`calibration`, a labeled folder (DATA/<label>/<images>) whose images both calibrate and gate.
`predict`, `evaluate`, `score`, `serve` and orchestrator.Model then use a run's int8 model when
it was kept (fp32=True chooses the fp32 one), as long as the run's model.onnx is still the file it
was made from (its sha256 is in the int8 file's metadata); quantizing again replaces it.

Example:
    >>> import orchestrator
    >>> result = orchestrator.quantize("digits-20261123-101500-ab12")
    >>> result.kept, round(result.agreement, 3), result.accuracy_drop
    (True, 0.997, 0.0)
    >>> orchestrator.quantize("model.onnx", calibration="./holdout", max_accuracy_drop=0.5).path
    PosixPath('model.int8.onnx')
"""
import os
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .errors import DatasetError, UsageError, dataset_errors
from .events import OnEvent, ignore
from .run_folder import METRICS, MODEL, PREDICTIONS, RunFolder


@dataclass(frozen=True)
class QuantizeResult:
    """What quantize measured, and whether the int8 model was kept.

    `path`: the int8 model (model.int8.onnx), which exists only when `kept`; `reason`: why the gate
    refused it (one line; None when it passed); `agreement`: the share of test images where the
    int8 and fp32 models pick the same label; `accuracy_drop`: fp32 accuracy minus int8 accuracy,
    in points; `int8` and `fp32`: each model's accuracy, macro_f1 and log_loss on the
    `test_images`; `calibration_images`: how many images set the int8 ranges.

    Example:
        >>> result.message
        'kept the int8 model runs/.../model.int8.onnx: same label as fp32 on 99.7% of 353 test images, ...'
    """

    path: Path
    kept: bool
    reason: Optional[str]
    agreement: float
    accuracy_drop: float
    int8: dict
    fp32: dict
    test_images: int
    calibration_images: int

    @property
    def message(self) -> str:
        """One line saying what became of the int8 model and why."""
        figures = (f"same label as fp32 on {self.agreement:.1%} of {self.test_images} test image(s), accuracy "
                   f"{self.int8['accuracy']:.2%} against {self.fp32['accuracy']:.2%}")
        if not self.kept:
            return f"removed the int8 model: {self.reason}"
        if self.reason:
            return f"kept the int8 model {self.path} without the gate (it would be removed: {self.reason})"
        return f"kept the int8 model {self.path}: {figures}"

    def to_json(self) -> dict:
        """The figures as metrics.json records them under "int8" (plus the path)."""
        return {**self.int8, "fp32": self.fp32, "agreement": self.agreement, "accuracy_drop": self.accuracy_drop,
                "test_images": self.test_images, "calibration_images": self.calibration_images,
                "kept": self.kept, "reason": self.reason, "path": str(self.path)}


def quantize(run_or_model: Union[str, os.PathLike], *, calibration: Union[str, os.PathLike, None] = None,
             max_accuracy_drop: float = 1.0, gate: bool = True, on_event: Optional[OnEvent] = None) -> QuantizeResult:
    """Write the int8 model of a run or of a model file beside its model.onnx, if it passes the gate.

    run_or_model: a run id (or unique prefix), a run folder or its outputs/ folder, or a model
      .onnx file (which needs `calibration`).
    calibration: a labeled folder, DATA/<label>/<images>, whose images calibrate; they also stand
      in for the test split of a model file, and of a run whose data is not on this machine (a run
      whose data is here is always gated on its own test split).
    max_accuracy_drop: the accuracy, in points, the int8 model may lose on a test split of 200
      images or more.
    gate: False keeps the int8 model whatever the comparison says (its figures are still recorded).
    on_event: receives notice events (what is being calibrated, compared).

    A refused model is removed (with an earlier int8 model of the same file) and the result says
    why: no exception. UsageError when there is no model, or a file comes without calibration;
    DatasetError when the images cannot be had (the run's data folder is gone or changed since
    the run, a folder without images).

    Example:
        >>> result = quantize("digits-20261123-101500-ab12", on_event=print)
        >>> print(result.message)
        kept the int8 model runs/digits-20261123-101500-ab12/outputs/model.int8.onnx: ...
    """
    from .inference.quantize import calibration_sample, quantize_model
    from .run_lookup import folder_for

    on_event = on_event or ignore
    if (not isinstance(max_accuracy_drop, (int, float)) or isinstance(max_accuracy_drop, bool)
            or not math.isfinite(max_accuracy_drop)):  # nan would pass every comparison: no gate at all
        raise UsageError(f"max_accuracy_drop must be a number of points, not {max_accuracy_drop!r}")
    given = Path(run_or_model)
    run = None
    if given.is_file():
        model = given
        if calibration is None:
            raise UsageError(f"{model} is a model file: give calibration=DATA (--calibration), a labeled folder whose "
                             "images calibrate the int8 model and stand in for the test split")
    else:
        run = RunFolder.containing(folder_for(run_or_model, wanted=MODEL))
        if run is None:
            raise UsageError(f"{run_or_model} is a folder of outputs without its run's spec.json: quantize its "
                             f"{MODEL} with calibration=DATA")
        model = run.output(MODEL)
    labels = _labels(model)
    split = None
    if run is not None:
        try:  # a run is gated on its own test split whenever its data is here, whatever calibrates it
            split = run_split(run, labels)
        except DatasetError:
            if calibration is None:
                raise
    if calibration is not None:
        given_images, given_truth = labeled_folder(calibration, labels)
        calibrating = calibration_sample(given_images)
        images, truth = (split[1], split[2]) if split else (given_images, given_truth)
    else:
        calibrating, images, truth = split
    figures = quantize_model(model, calibrating, images, truth,
                             max_accuracy_drop=max_accuracy_drop, gate=gate, on_event=on_event)
    result = QuantizeResult(path=Path(figures["path"]), kept=figures["kept"], reason=figures["reason"],
                            agreement=figures["agreement"], accuracy_drop=figures["accuracy_drop"],
                            int8={key: figures[key] for key in ("accuracy", "macro_f1", "log_loss")},
                            fp32=figures["fp32"], test_images=figures["test_images"],
                            calibration_images=figures["calibration_images"])
    if run is not None:
        _record(run, result)
    return result


def _labels(model):
    from .inference.classifier import OnnxClassifier

    return OnnxClassifier(model).labels


def labeled_folder(folder, labels):
    """(image paths, label indices) of DATA/<label>/<images>, each label one of the model's `labels`."""
    from remote_scripts import folder_dataset as fd

    with dataset_errors():
        found = fd.scan(str(folder), min_classes=1)
    unknown = sorted(set(found.classes) - set(labels))
    if unknown:
        raise UsageError(f"folder(s) {', '.join(unknown)} in {folder} are not labels of this model "
                         f"(its labels: {', '.join(labels)})")
    index = {label: i for i, label in enumerate(labels)}
    return ([os.path.join(str(folder), rel) for rel, _ in found.samples],
            [index[found.classes[label]] for _, label in found.samples])


def run_split(run, labels):
    """(calibration images, test images, test label indices) of a run: a sample of its training
    split (inference.quantize.calibration_sample) and the split its metrics.json was measured on, rebuilt from its data folder as the job built them.

    The job scanned the data (a folder, or a packed copy's index), kept its --sample-fraction,
    left out the images it could not decode (metrics.json "skipped") and split the rest by its
    --seed and fractions; the same functions here give the same split. When the job had no test
    split it measured on validation (or training) images, and so does the gate. The split is
    checked against predictions.csv, the job's list of those images: a data folder changed since
    the run is a DatasetError rather than a gate on other images.
    """
    from remote_scripts import folder_dataset as fd
    from remote_scripts import packed_dataset
    from remote_scripts.options import BY_DEST, from_arguments

    from .inference.quantize import calibration_sample

    spec = run.spec() or {}
    data = spec.get("data")
    if not data or not os.path.isdir(data):
        raise DatasetError(f"the run's data folder {data} is not on this machine: give calibration=DATA "
                           "(--calibration), a labeled folder")
    given = from_arguments(spec.get("train_args") or [])

    def arg(name):
        return given.get(name, BY_DEST[name].default)

    val_fraction, test_fraction = arg("val_fraction"), arg("test_fraction")
    try:
        packed = packed_dataset.PackedDataset(data) if packed_dataset.is_packed(data) else None
        found = packed.scan() if packed else fd.scan(data, labels=arg("labels"))
        samples = fd.sample_fraction(found.samples, arg("sample_fraction"), arg("seed"), val_fraction, test_fraction)
        skipped = {entry.get("path") for entry in (run.metrics() or {}).get("skipped") or []}
        usable = [sample for sample in samples if sample[0] not in skipped]
        train, val, test = fd.stratified_split(usable, found.classes, val_fraction, test_fraction, arg("seed"))
    except fd.DatasetError as exc:
        raise DatasetError(f"the run's data folder {data}: {exc}") from None
    if list(found.classes) != list(labels):
        raise DatasetError(f"the classes of {data} ({', '.join(found.classes)}) are no longer the model's labels "
                           f"({', '.join(labels)}): give calibration=DATA")
    evaluated = test or val or train  # the job's rule (train.py finish)
    _check_against_predictions(run, data, evaluated)

    def images(part):
        if packed is None:
            return [os.path.join(data, rel) for rel, _ in part]
        return ((rel, packed.open(rel).read()) for rel, _ in part)  # the bytes as the stream asks for them

    return (list(images(calibration_sample(sorted(train), arg("seed")))), images(evaluated),
            [label for _, label in evaluated])


def _check_against_predictions(run, data, evaluated):
    """DatasetError when the rebuilt split is not the images of the run's predictions.csv."""
    import csv

    path = run.output(PREDICTIONS)
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as rows:
            listed = {row["path"] for row in csv.DictReader(rows)}
    except FileNotFoundError:
        return  # an older run: the split is trusted as rebuilt
    except (OSError, KeyError, ValueError) as exc:
        raise UsageError(f"{path} is unreadable: {exc}") from None
    rebuilt = {rel for rel, _ in evaluated}
    if rebuilt != listed:
        missing = sorted(listed - rebuilt)
        raise DatasetError(f"{data} changed since the run: its test split is no longer the {len(listed)} image(s) "
                           f"of {path}" + (f" (e.g. {missing[0]} is missing)" if missing else "")
                           + "; give calibration=DATA")


def _record(run, result):
    """Add the figures to the run's metrics.json under "int8", atomically."""
    from remote_scripts.atomic import write_atomically
    from remote_scripts.progress import dumps

    metrics = run.metrics(strict=True)
    if metrics is None:
        raise UsageError(f"run folder {run.path} has no {METRICS}")
    write_atomically(run.output(METRICS), dumps({**metrics, "int8": result.to_json()}, indent=2) + "\n")
