"""ML.NET-style multiclass metrics, checked against numbers worked out by hand (and scikit-learn)."""
import math

import numpy as np
import pytest

from remote_scripts.metrics import EPSILON, classification_metrics

LABELS = ["cat", "dog", "owl"]
# true:  cat  cat  dog  dog  owl
# pred:  cat  dog  dog  dog  cat
Y = [0, 0, 1, 1, 2]
P = [[0.7, 0.2, 0.1],
     [0.3, 0.6, 0.1],
     [0.1, 0.8, 0.1],
     [0.2, 0.5, 0.3],
     [0.5, 0.1, 0.4]]


@pytest.fixture
def m():
    return classification_metrics(Y, P, LABELS)


def test_accuracy_and_macro_accuracy(m):
    assert m["num_samples"] == 5
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["macro_accuracy"] == pytest.approx((1 / 2 + 2 / 2 + 0 / 1) / 3)  # per-class recall


def test_log_loss_and_its_reduction_against_the_prior(m):
    losses = [-math.log(p) for p in (0.7, 0.3, 0.8, 0.5, 0.4)]
    assert m["log_loss"] == pytest.approx(sum(losses) / 5)
    prior = -(2 / 5 * math.log(2 / 5) * 2 + 1 / 5 * math.log(1 / 5))
    assert m["log_loss_reduction"] == pytest.approx(1 - m["log_loss"] / prior)
    assert m["per_class_log_loss"]["cat"] == pytest.approx((losses[0] + losses[1]) / 2)
    assert m["per_class_log_loss"]["owl"] == pytest.approx(losses[4])


def test_confusion_matrix_rows_are_truth_and_columns_predictions(m):
    assert m["confusion_matrix"] == {"labels": LABELS, "matrix": [[1, 1, 0], [0, 2, 0], [1, 0, 0]]}


def test_per_class_precision_recall_f1_support(m):
    cat, dog, owl = (m["per_class"][name] for name in LABELS)
    assert (cat["precision"], cat["recall"], cat["support"]) == (pytest.approx(1 / 2), pytest.approx(1 / 2), 2)
    assert dog["precision"] == pytest.approx(2 / 3) and dog["recall"] == 1.0
    assert dog["f1"] == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    assert owl == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_agrees_with_scikit_learn_on_random_data():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=200)
    logits = rng.normal(size=(200, 4)) + np.eye(4)[y] * 1.5
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(y, p, list("abcd"))
    assert m["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, p.argmax(1)))
    assert m["macro_accuracy"] == pytest.approx(sklearn_metrics.balanced_accuracy_score(y, p.argmax(1)))
    assert m["log_loss"] == pytest.approx(sklearn_metrics.log_loss(y, p, labels=range(4)))
    assert m["confusion_matrix"]["matrix"] == sklearn_metrics.confusion_matrix(y, p.argmax(1)).tolist()


def test_a_class_absent_from_the_test_set_does_not_count_in_macro_accuracy():
    m = classification_metrics([0, 0, 1], [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]], LABELS)
    assert m["macro_accuracy"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["per_class_log_loss"]["owl"] is None and m["per_class"]["owl"]["support"] == 0


def test_zero_probability_is_clamped_not_infinite():
    m = classification_metrics([0, 1], [[0.0, 1.0], [0.0, 1.0]], ["a", "b"])
    assert m["log_loss"] == pytest.approx(-math.log(EPSILON) / 2)


def test_a_single_class_test_set_has_no_reduction():
    assert classification_metrics([0, 0], [[0.6, 0.4], [0.9, 0.1]], ["a", "b"])["log_loss_reduction"] is None


@pytest.mark.parametrize("y, p, message", [([], np.zeros((0, 3)), "no samples"),
                                           ([0, 1], [[0.5, 0.5], [0.5, 0.5]], "shape")])
def test_bad_input_is_rejected(y, p, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y, p, LABELS)
