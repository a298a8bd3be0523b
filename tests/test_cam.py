"""Class activation maps inside model.onnx (issue 20, part 2): the `cam` output, Model.explain,
`predict --explain`, the report's overlays.

The localization test trains a real ResNet18 with remote_scripts/train.py (random weights, full
mode, 96 px: a 3 x 3 map) on a synthetic set where a coloured square at a random position decides
the class, and checks that the map's hottest cell lies inside the square.
"""
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from conftest import REPO, run_cli
from remote_scripts import imaging
from remote_scripts.export import export_onnx
from remote_scripts.imaging import CAM_KEY, CAM_NAME
from remote_scripts.models import build_model

from orchestrator import Model, UsageError

SIZE, SIDE = 224, 64  # image and square sides, pixels: a 7 x 7 map
COLOURS = {"blue": (30, 30, 220), "green": (30, 200, 30), "red": (220, 30, 30)}


def squares(root, per_class, seed, off_centre=False):
    """FOLDER/<colour>/<n>.png: grey noise with one square of the class's colour at a random
    place; returns {relative path: (x, y)} of each square's top-left corner.

    off_centre: each square touches the left or the top edge, so that it leaves out the centre
    of the map's middle cell: a map that always peaks in its middle (as a 3 x 3 map of 96-pixel
    images did, from a from-scratch network whose every cell sees the whole image) finds none."""
    rng = np.random.default_rng(seed)
    corners = {}
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.normal(128, 20, (SIZE, SIZE, 3))
            x, y = rng.integers(0, SIZE - SIDE + 1, 2)
            if off_centre:
                x, y = (0, y) if i % 2 else (x, 0)
            pixels[y:y + SIDE, x:x + SIDE] = np.array(rgb) + rng.normal(0, 10, (SIDE, SIDE, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
            corners[f"{name}/{i}.png"] = (int(x), int(y))
    return corners


@pytest.fixture(scope="module")
def squares_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("squares")
    squares(root / "train", per_class=30, seed=0)
    subprocess.run([sys.executable, str(REPO / "remote_scripts" / "train.py"), "--data", str(root / "train"),
                    "--output", str(root / "out"), "--arch", "resnet18", "--weights", "none", "--image-size",
                    str(SIZE), "--mode", "full", "--epochs", "12", "--batch-size", "16", "--lr", "0.003",
                    "--workers", "1", "--cache-dir", str(root / "cache")], check=True, capture_output=True, timeout=900)
    test = root / "test"
    return root / "out" / "model.onnx", test, squares(test, per_class=20, seed=1, off_centre=True)


@pytest.mark.slow
def test_the_heat_maps_maximum_falls_inside_the_square_that_decides_the_class(squares_model):
    path, test, corners = squares_model
    model = Model(path)
    assert model.has_cam
    inside = 0
    for name, (x, y) in corners.items():
        heat = model.explain(test / name)
        rows, columns = heat.shape
        assert (rows, columns) == (SIZE // 32, SIZE // 32)
        i, j = np.unravel_index(np.argmax(heat), heat.shape)
        cy, cx = (i + 0.5) * SIZE / rows, (j + 0.5) * SIZE / columns  # the hottest cell's centre
        inside += x <= cx < x + SIDE and y <= cy < y + SIDE
    centre = SIZE / 2  # the middle cell's centre: in none of these squares
    assert not any(x <= centre < x + SIDE and y <= centre < y + SIDE for x, y in corners.values())
    assert inside >= 0.8 * len(corners), f"{inside} of {len(corners)}"


@pytest.mark.slow
def test_predict_explain_writes_a_heat_map_png_per_image(squares_model, tmp_path):
    path, test, _ = squares_model
    result = run_cli("predict", path, test / "red", test / "blue" / "0.png", "--explain", tmp_path / "heat")
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (tmp_path / "heat").iterdir())
    assert len(written) == 21 and "wrote 21 heat map(s)" in result.stderr
    with Image.open(tmp_path / "heat" / "0.explain.png") as first:
        assert first.format == "PNG" and first.size == (SIZE, SIZE)
    # a label given explains that label; one the model lacks is a UsageError
    model = Model(path)
    assert not np.array_equal(model.explain(test / "red" / "0.png", label="blue"), model.explain(test / "red" / "0.png"))
    with pytest.raises(UsageError, match="not one of the model's labels"):
        model.explain(test / "red" / "0.png", label="purple")


def export(tmp_path, arch, classes=3, size=64):
    torch.manual_seed(0)
    model = build_model(arch, classes, standardize=True).eval()
    model.head[0].fit(torch.randn(16, model.head[1].in_features) * 3 + 1)
    path = tmp_path / f"{arch}.onnx"
    export_onnx(model, str(path), [f"c{i}" for i in range(classes)], imaging.preprocess_spec(size), arch, "linear")
    return path


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("efficientnet_b0", marks=pytest.mark.slow)])
def test_the_map_averages_to_the_logits_the_probabilities_come_from(tmp_path, arch):
    """cam is the head applied at each position of the last feature map: its mean over the
    positions is each class's logit, whose softmax is the `probabilities` output."""
    session = ort.InferenceSession(str(export(tmp_path, arch, size=96)))
    batch = np.random.default_rng(0).normal(size=(2, 3, 96, 96)).astype(np.float32)
    probabilities, cam = session.run([imaging.OUTPUT_NAME, CAM_NAME], {imaging.INPUT_NAME: batch})
    assert cam.shape == (2, 3, 3, 3)
    logits = cam.mean(axis=(2, 3))
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    assert np.abs(softmax / softmax.sum(1, keepdims=True) - probabilities).max() < 1e-5
    assert json.loads(session.get_modelmeta().custom_metadata_map[CAM_KEY]) == {"output": CAM_NAME}


@pytest.mark.slow
def test_mobilenet_has_no_map_and_says_why(tmp_path):
    path = export(tmp_path, "mobilenet_v3_large")
    session = ort.InferenceSession(str(path))
    assert [o.name for o in session.get_outputs()] == [imaging.OUTPUT_NAME]  # missing rather than wrong
    why = json.loads(session.get_modelmeta().custom_metadata_map[CAM_KEY])
    assert why["output"] is None and "not linear" in why["why"]
    model = Model(path)
    assert not model.has_cam
    with pytest.raises(UsageError, match="no class activation map.*not linear"):
        model.explain(np.zeros((64, 64, 3), np.uint8))
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    result = run_cli("predict", path, tmp_path / "red.png", "--explain", tmp_path / "heat")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "no class activation map" in result.stderr and not (tmp_path / "heat").exists()


def test_a_map_costing_more_than_one_percent_of_the_model_is_left_out_and_said(tmp_path):
    """ONNX Runtime computes every output on every call: with 1000 classes on a ResNet18 the map
    would cost 1.4% of the arithmetic of each prediction, so the file has none, and says why."""
    session = ort.InferenceSession(str(export(tmp_path, "resnet18", classes=1000)))
    assert [o.name for o in session.get_outputs()] == [imaging.OUTPUT_NAME]
    why = json.loads(session.get_modelmeta().custom_metadata_map[CAM_KEY])["why"]
    assert "1000 classes" in why and "1.4%" in why


def test_a_model_made_before_maps_keeps_predicting_and_explain_says_retrain(tmp_path):
    path = export(tmp_path, "resnet18")
    old = onnx.load(str(path))  # what an earlier version wrote: no cam output, no cam metadata
    conv = next(node for node in old.graph.node if CAM_NAME in node.output)
    old.graph.node.remove(conv)
    old.graph.output.remove(next(o for o in old.graph.output if o.name == CAM_NAME))
    for initializer in [i for i in old.graph.initializer if i.name in conv.input]:
        old.graph.initializer.remove(initializer)
    kept = [p for p in old.metadata_props if p.key != CAM_KEY]
    del old.metadata_props[:]
    old.metadata_props.extend(kept)
    onnx.save(old, str(tmp_path / "old.onnx"))
    model = Model(tmp_path / "old.onnx")
    picture = np.full((64, 64, 3), 200, np.uint8)
    assert model.predict(picture)[0].label == Model(path).predict(picture)[0].label
    assert not model.has_cam
    with pytest.raises(UsageError, match="made before models had one.*retrain"):
        model.explain(picture)


@pytest.mark.slow
def test_the_reports_most_confidently_wrong_images_get_their_heat_maps(squares_model, tmp_path):
    """A run folder around the trained outputs, two of its test images relabeled in
    predictions.csv so that they count as mistakes: each shown mistake gets its overlay."""
    import csv
    import shutil

    from orchestrator.report import write_report

    path, _, _ = squares_model
    run = tmp_path / "run"
    shutil.copytree(path.parent, run / "outputs")
    (run / "spec.json").write_text(json.dumps({"run_id": "squares", "data": str(path.parent.parent / "train")}))
    with open(run / "outputs" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows[:2]:
        row["true_label"] = next(c for c in COLOURS if c != row["predicted_label"])
    with open(run / "outputs" / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    page = write_report(run).read_text()
    mistakes = sum(row["true_label"] != row["predicted_label"] for row in rows)  # those two, and the model's own
    assert mistakes >= 2 and page.count('<img class="thumb"') == page.count('<img class="cam"') == mistakes
    assert f'alt="heat map of {rows[0]["predicted_label"]} over {rows[0]["path"]}"' in page
