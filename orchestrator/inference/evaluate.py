"""Evaluation of a model on a labeled folder: the same metrics as the job's metrics.json."""
import os

import numpy as np

from remote_scripts.folder_dataset import scan
from remote_scripts.metrics import classification_metrics

from ..errors import DatasetError, UsageError, dataset_errors


def evaluate_folder(classifier, data_dir):
    """Metrics dict (remote_scripts.metrics) plus `skipped` files, for DATA/<label>/<images>.

    `skipped` lists, as the job's metrics.json does, the unreadable images and the links that
    lead outside DATA, which the scan leaves out (each {"path", "reason"})."""
    with dataset_errors():
        found = scan(str(data_dir), min_classes=1)  # one labeled class is enough to evaluate on
    unknown = sorted(set(found.classes) - set(classifier.labels))
    if unknown:
        raise UsageError(f"folder(s) {', '.join(unknown)} in {data_dir} are not labels of this model "
                        f"(its labels: {', '.join(classifier.labels)})")
    index = {label: i for i, label in enumerate(classifier.labels)}
    paths = [os.path.join(str(data_dir), rel) for rel, _ in found.samples]
    truth = [index[found.classes[label]] for _, label in found.samples]
    y_true, rows, skipped = [], [], list(found.skipped)
    for (rel, _), t, (probs, error) in zip(found.samples, truth, classifier.classify(paths)):
        if error:
            skipped.append({"path": rel, "reason": error})
        else:
            y_true.append(t)
            rows.append(probs)
    if not rows:
        raise DatasetError(f"no readable images in {data_dir}")
    metrics = classification_metrics(np.array(y_true), np.stack(rows), classifier.labels)
    metrics["skipped"] = skipped
    return metrics

