"""Multiclass metrics in the style of ML.NET's MulticlassClassificationMetrics.

Written once with numpy only: the training job writes them to metrics.json and
`orchestrate evaluate` computes them on a holdout folder with this same function.
"""
import csv
import io

EPSILON = 1e-15  # ML.NET clamps probabilities the same way before taking the log
# predictions.csv, one row per evaluated image: written by the job, read by `orchestrate report`
PREDICTION_COLUMNS = ("path", "true_label", "predicted_label", "score", "true_label_score")
# The test metrics a run is summed up by: in the ledger, in search.json, as MLflow's test_*, as
# an Azure ML model's tags
HEADLINE_METRICS = ("accuracy", "macro_accuracy", "macro_f1", "log_loss")


def classification_metrics(y_true, probabilities, labels):
    """Metrics for integer labels `y_true` [n] and class probabilities [n, classes].

    - accuracy (ML.NET MicroAccuracy): fraction of samples predicted right.
    - macro_accuracy: mean per-class recall over the classes present, so small classes count.
    - macro_f1: mean per-class F1 over the classes present: unlike macro accuracy it also drops
      when a large class swallows a small one's images (precision), the usual figure for
      imbalanced sets such as SDNET2018.
    - log_loss: mean of -ln p(true class); log_loss_reduction: 1 - log_loss / log_loss of
      always predicting the test-set class frequencies (1 is perfect, <= 0 no better than prior).
    - per_class_log_loss, per_class precision/recall/f1/support, confusion_matrix[true][pred].
    """
    import numpy as np  # here, so that the client reads HEADLINE_METRICS without loading numpy

    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    n, k = len(y_true), len(labels)
    if n == 0:
        raise ValueError("no samples to evaluate")
    if probs.shape != (n, k):
        raise ValueError(f"probabilities have shape {probs.shape}, expected ({n}, {k})")
    pred = probs.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, pred), 1)

    true_prob = np.clip(probs[np.arange(n), y_true], EPSILON, 1.0)
    sample_loss = -np.log(true_prob)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    correct = np.diag(confusion)
    present = support > 0

    prior = support / n
    prior_loss = float(-(prior[present] * np.log(prior[present])).sum())
    log_loss = float(sample_loss.mean())

    per_class = {}
    per_class_log_loss = {}
    for i, label in enumerate(labels):
        precision = float(correct[i] / predicted[i]) if predicted[i] else 0.0
        recall = float(correct[i] / support[i]) if support[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1,
                            "support": int(support[i])}
        per_class_log_loss[label] = float(sample_loss[y_true == i].mean()) if support[i] else None

    return {
        "num_samples": int(n),
        "accuracy": float(correct.sum() / n),
        "macro_accuracy": float((correct[present] / support[present]).mean()),
        "macro_f1": float(np.mean([per_class[label]["f1"] for i, label in enumerate(labels) if present[i]])),
        "log_loss": log_loss,
        "log_loss_reduction": float(1.0 - log_loss / prior_loss) if prior_loss > 0 else None,
        "per_class_log_loss": per_class_log_loss,
        "per_class": per_class,
        "confusion_matrix": {"labels": list(labels), "matrix": confusion.tolist()},
    }


def predictions_csv(paths, y_true, probabilities, labels):
    """predictions.csv's text: per image its path, true and predicted label, the predicted
    label's probability (score) and the true label's, from the very probabilities the metrics
    are computed from, so a report can show the worst mistakes without running the model again."""
    import numpy as np

    probs = np.asarray(probabilities, dtype=np.float64)
    predicted = probs.argmax(axis=1)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(PREDICTION_COLUMNS)
    for path, truth, guess, row in zip(paths, y_true, predicted, probs):
        writer.writerow([path, labels[truth], labels[guess], f"{row[guess]:.6g}", f"{row[truth]:.6g}"])
    return text.getvalue()
