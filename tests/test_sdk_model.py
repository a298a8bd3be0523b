"""orchestrator.Model and orchestrator.scoring.score from Python: a real model, real ONNX Runtime.

The model is trained for real by remote_scripts/train.py (tests/serving.train_tiny_model); the
reference for every in-memory input is the same picture read from its PNG file, and the
reference for the file is the classifier one image per call, so batching and the in-memory
path are both checked against the plainest use of the model.
"""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from imagegen import make_dataset
from orchestrator import events
from orchestrator.errors import DatasetError, UsageError
from orchestrator.inference.classifier import OnnxClassifier
from orchestrator.ledger import Ledger, RunRecord
from orchestrator.model import Model, Prediction
from orchestrator.scoring import Plan, score
from remote_scripts.folder_dataset import LINK_OUTSIDE
from serving import train_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # azure-ai-ml's marshmallow

LABELS = ["blue", "green", "red"]  # train.py sorts the class folders


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model.onnx, its training images)."""
    return train_tiny_model(tmp_path_factory.mktemp("sdk"))


@pytest.fixture(scope="module")
def model(trained):
    return Model(trained[0])


@pytest.fixture(scope="module")
def png(trained):
    """A PNG picture of the training set (lossless: its pixels are the same in memory and on disk)."""
    return sorted(trained[1].rglob("*.png"))[0]


def test_labels_and_preprocessing_come_from_the_models_metadata(model, trained):
    assert model.labels == LABELS
    assert model.preprocessing["size"] == [32, 32] and model.preprocessing["channel_order"] == "RGB"
    assert model.path == trained[0].resolve()


def test_a_file_predicts_what_the_classifier_says_image_by_image(model, png, trained):
    [prediction] = model.predict(png, top_k=3)
    [(probs, error)] = OnnxClassifier(trained[0]).classify([str(png)])
    assert error is None and prediction.error is None and prediction.image == str(png)
    assert prediction.scores == pytest.approx(dict(zip(LABELS, map(float, probs))), abs=1e-6)
    assert sum(prediction.scores.values()) == pytest.approx(1, abs=1e-5)
    assert [label for label, _ in prediction.top_k] == sorted(LABELS, key=lambda label: -prediction.scores[label])
    assert [score for _, score in prediction.top_k] == sorted(prediction.scores.values(), reverse=True)
    assert (prediction.label, prediction.score) == prediction.top_k[0]
    assert prediction.to_json() == {"image": str(png), "label": prediction.label, "score": prediction.score,
                                    "top_k": [{"label": label, "score": score} for label, score in prediction.top_k]}


def test_a_pil_image_and_a_numpy_array_predict_what_their_file_predicts(model, png):
    [from_file] = model.predict([png], top_k=2)
    with Image.open(png) as opened:
        picture = opened.convert("RGB")
    from_pil, from_array = model.predict([picture, np.asarray(picture)], top_k=2)
    for in_memory in (from_pil, from_array):
        assert in_memory.image is None and in_memory.error is None
        assert in_memory.label == from_file.label and in_memory.score == pytest.approx(from_file.score, abs=1e-6)
        assert [label for label, _ in in_memory.top_k] == [label for label, _ in from_file.top_k]
    # one image alone is a list of one; a gray array is taken as well
    [alone] = model.predict(np.asarray(picture))
    assert alone.label == from_file.label
    [gray] = model.predict(np.asarray(picture.convert("L")))
    assert gray.error is None and set(gray.scores) == set(LABELS)


def test_a_folder_is_taken_recursively_in_order_and_each_file_once(model, trained):
    folder = trained[1] / "red"
    predictions = model.predict([folder, sorted(folder.glob("*.png"))[0]])
    images = [p.image for p in predictions]
    assert len(images) == len(set(images)) == len([f for f in folder.rglob("*") if f.is_file()])
    assert any("/nested/" in image for image in images)
    assert all(isinstance(p, Prediction) and p.label in LABELS for p in predictions)


def test_an_unreadable_file_is_a_prediction_with_its_error_and_the_rest_go_on(model, png, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    good, bad = model.predict([png, broken], top_k=2)
    assert good.error is None and good.label in LABELS
    assert bad.image == str(broken) and bad.error.startswith("cannot read image: ")
    assert (bad.label, bad.score, bad.top_k, bad.scores) == (None, None, [], {})
    assert bad.to_json() == {"image": str(broken), "error": bad.error}


@pytest.mark.parametrize("images,match", [
    (np.zeros((8, 8, 3), dtype=np.float32), "numpy array of uint8 pixels"),
    (np.zeros((8, 8, 4), dtype=np.uint8), "numpy array of uint8 pixels"),
    (["no-such-file.png"], "no such file or folder"),
    ([42], "a path, a PIL image or a numpy array"),
])
def test_what_is_no_image_is_a_usage_error(model, images, match):
    with pytest.raises(UsageError, match=match):
        model.predict(images)


def test_top_k_must_be_at_least_one(model, png):
    with pytest.raises(UsageError, match="top_k"):
        model.predict(png, top_k=0)


def test_a_run_id_or_its_prefix_names_the_runs_model(trained, tmp_path):
    run_id = "colours-20261207-101500-ab12"
    outputs = tmp_path / "runs" / run_id / "outputs"
    outputs.mkdir(parents=True)
    shutil.copy(trained[0], outputs / "model.onnx")
    Ledger().add(RunRecord(run_id=run_id, name="colours", backend="local", status="completed",
                           dataset=str(trained[1]), run_dir=str(outputs.parent)))
    for name in (run_id, run_id[:12], outputs.parent, outputs):
        assert Model(name).path == (outputs / "model.onnx").resolve()
    with pytest.raises(UsageError):
        Model("no-such-run")


def test_a_file_that_is_no_model_is_a_usage_error(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"garbage")
    with pytest.raises(UsageError, match="not a readable ONNX model"):
        Model(fake)


def test_evaluate_gives_the_jobs_metrics_on_a_labeled_folder(model, trained, tmp_path):
    metrics = model.evaluate(trained[1])
    assert 0 <= metrics["accuracy"] <= 1 and metrics["skipped"] == []
    assert metrics["confusion_matrix"]["labels"] == LABELS
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 30
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError):
        model.evaluate(tmp_path / "empty")


def test_evaluate_lists_the_links_leading_outside_the_folder_it_left_out(model, trained, tmp_path):
    data = tmp_path / "holdout"
    shutil.copytree(trained[1], data)
    outside = tmp_path / "elsewhere.png"
    shutil.copy(sorted((data / "red").glob("*.png"))[0], outside)
    (data / "red" / "link.png").symlink_to(outside)
    metrics = model.evaluate(data)
    assert metrics["skipped"] == [{"path": "red/link.png", "reason": LINK_OUTSIDE}]
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 30
    from click.testing import CliRunner

    from orchestrator.cli.main import cli

    said = CliRunner().invoke(cli, ["evaluate", str(trained[0]), str(data)])
    assert said.exit_code == 0 and f"left out 1 link(s) leading outside {data}" in " ".join(said.output.split())


def test_score_writes_the_predict_rows_and_reports_progress(model, trained, tmp_path):
    data = make_dataset(tmp_path / "photos", per_class=4, corrupt=1)
    out = tmp_path / "scores.jsonl"
    seen = []
    summary = score(model, data, out, top_k=2, on_event=seen.append)
    assert (summary["images"], summary["scored"], summary["errors"]) == (12, 11, 1)
    assert seen[0] == events.transfer("score", 0, 12, unit="images") and seen[-1]["done"] == 12
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_path = {p.image: p for p in model.predict(data, top_k=2)}
    for row in rows:
        expected = by_path[row["path"]]
        assert row["error"] == expected.error and row["label"] == expected.label
    with pytest.raises(UsageError, match="--force"):
        score(model, data, out)
    assert model.score(data / "red", out, force=True)["images"] == 4


def test_local_score_refuses_azure_values_before_anything_is_read(tmp_path):
    with pytest.raises(UsageError, match="^--compute: Azure ML option"):
        score("no-such-model", tmp_path, tmp_path / "p.csv", compute="cpu")


def test_an_azure_dry_run_is_a_plan_with_its_exported_job(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("AZUREML_WORKSPACE_NAME", "ws1")
    export = tmp_path / "score.yml"
    plan = score(trained[0], "az://workspaceblobstore/photos/2026", tmp_path / "p.csv", instances=2,
                 export=export)
    assert isinstance(plan, Plan) and plan.export == export and export.is_file()
    assert "workspace:   ws1" in plan.description and "2 node(s)" in str(plan)
    assert plan.run_id.startswith("score-2026-") and not (tmp_path / "p.csv").exists()
    assert plan.yaml == export.read_text()
    unexported = score(trained[0], "az://workspaceblobstore/photos/2026", tmp_path / "p.csv", dry_run=True)
    assert unexported.export is None and "type: parallel" in unexported.yaml
