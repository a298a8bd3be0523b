"""int8 models (issue 20, part 1): `train --quantize int8`, `orchestrate quantize`, the gate, and
predict/evaluate/score choosing a run's int8 model.

Everything is real: the run is trained by the local backend (resnet18, random weights, 32 px,
linear mode), the int8 model is ONNX Runtime's quantize_static, and both models run in ONNX
Runtime. The dataset has 140 images per class and half of them go to the test split, so the gate's
accuracy rule (200 test images or more) applies; three unreadable files check that the split is
rebuilt without them, as the job built it.
"""
import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from conftest import run_cli
from imagegen import make_dataset
from orchestrator.errors import DatasetError, UsageError
from orchestrator.inference.classifier import OnnxClassifier
from orchestrator.inference.quantize import MIN_AGREEMENT, QUANTIZED_KEY, SOURCE_KEY, quantize_model
from remote_scripts.imaging import CAM_NAME, OUTPUT_NAME

pytestmark = pytest.mark.slow

FAST = ["--backend", "local", "--arch", "resnet18", "--weights", "none", "--image-size", "32", "--mode", "linear",
        "--epochs", "2", "--batch-size", "32", "--test-fraction", "0.5"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained with `--quantize int8`: its folder, data, environment and the train command's result."""
    home = tmp_path_factory.mktemp("home")
    env = {"XDG_STATE_HOME": str(home / "state"), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache")}
    data = make_dataset(home / "data", per_class=140, corrupt=3)
    result = run_cli("train", data, *FAST, "--quantize", "int8", "--runs-dir", home / "runs", "--json", env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    return {"env": env, "data": data, "run_id": summary["run_id"], "run_dir": Path(summary["run_dir"]),
            "summary": summary, "stderr": result.stderr}


@pytest.fixture
def in_home(trained, monkeypatch):
    """The run's ledger for in-process SDK calls."""
    for name, value in trained["env"].items():
        monkeypatch.setenv(name, value)
    return trained


def job_test_split(trained):
    """The images the job measured its metrics on (predictions.csv) and their labels."""
    with open(trained["run_dir"] / "outputs" / "predictions.csv", newline="") as rows:
        listed = list(csv.DictReader(rows))
    return [str(trained["data"] / row["path"]) for row in listed], [row["true_label"] for row in listed]


def copy_run(trained, tmp_path):
    """A copy of the run folder (its spec.json still names the data), to quantize without touching the run."""
    copy = tmp_path / "run"
    shutil.copytree(trained["run_dir"], copy)
    (copy / "outputs" / "model.int8.onnx").unlink(missing_ok=True)
    return copy


def test_train_quantize_keeps_an_int8_model_that_agrees_with_fp32(trained):
    outputs = trained["run_dir"] / "outputs"
    int8_file, fp32_file = outputs / "model.int8.onnx", outputs / "model.onnx"
    assert int8_file.is_file()
    assert f"kept the int8 model {int8_file}" in trained["stderr"]
    section = json.loads((outputs / "metrics.json").read_text())["int8"]
    assert trained["summary"]["metrics"]["int8"] == section  # --json's summary has it too
    assert section["kept"] is True and section["reason"] is None and section["path"] == str(int8_file)
    assert section["test_images"] == trained["summary"]["metrics"]["split"]["test"] >= 200
    assert section["calibration_images"] == trained["summary"]["metrics"]["split"]["train"]
    assert section["fp32"]["accuracy"] == pytest.approx(trained["summary"]["metrics"]["accuracy"])
    assert set(section) >= {"accuracy", "macro_f1", "log_loss", "agreement", "accuracy_drop"}

    # the agreement, measured here again with both files in ONNX Runtime on the job's test images
    paths, _ = job_test_split(trained)
    fp32, int8 = OnnxClassifier(fp32_file), OnnxClassifier(int8_file)
    fp32_labels = [probs.argmax() for probs, _ in fp32.classify(paths)]
    int8_rows = [probs for probs, _ in int8.classify(paths)]
    agreement = np.mean([a == b.argmax() for a, b in zip(fp32_labels, int8_rows)])
    assert agreement >= MIN_AGREEMENT and agreement == pytest.approx(section["agreement"])
    assert np.allclose([row.sum() for row in int8_rows], 1, atol=1e-5)  # the softmax stayed float
    assert len({round(float(p), 6) for row in int8_rows for p in row}) > 256  # not 8-bit probabilities

    # the int8 file carries the fp32 file's metadata, plus what it is and what was measured
    fp32_meta = {p.key: p.value for p in onnx.load(str(fp32_file)).metadata_props}
    int8_meta = {p.key: p.value for p in onnx.load(str(int8_file)).metadata_props}
    assert {key: int8_meta[key] for key in fp32_meta} == fp32_meta
    assert int8_meta[QUANTIZED_KEY] == "int8"
    assert int8_meta[SOURCE_KEY] == hashlib.sha256(fp32_file.read_bytes()).hexdigest()
    assert float(int8_meta["orchestrate.agreement"]) == pytest.approx(section["agreement"], abs=1e-5)
    assert float(int8_meta["orchestrate.accuracy_drop"]) == pytest.approx(section["accuracy_drop"], abs=1e-5)
    assert any(node.op_type == "DequantizeLinear" for node in onnx.load(str(int8_file)).graph.node)
    # the same outputs as the fp32 model: the probabilities and the class activation map
    outputs = [o.name for o in onnx.load(str(int8_file)).graph.output]
    assert outputs == [o.name for o in onnx.load(str(fp32_file)).graph.output] == [OUTPUT_NAME, CAM_NAME]


def test_predict_evaluate_and_score_use_the_int8_model_and_fp32_picks_the_other(trained, tmp_path, in_home):
    from orchestrator import Model

    run, env = trained["run_id"], trained["env"]
    image = sorted((trained["data"] / "red").glob("*.png"))[0]
    int8_file = trained["run_dir"] / "outputs" / "model.int8.onnx"
    said = f"using the int8 model {int8_file}"
    int8_score = OnnxClassifier(int8_file).classify([str(image)])[0][0].max()
    fp32_score = OnnxClassifier(int8_file.with_name("model.onnx")).classify([str(image)])[0][0].max()
    assert int8_score != fp32_score

    as_int8 = run_cli("predict", run, image, "--json", env=env)
    as_fp32 = run_cli("predict", run, image, "--json", "--fp32", env=env)
    assert as_int8.returncode == as_fp32.returncode == 0, as_int8.stderr + as_fp32.stderr
    assert said in as_int8.stderr and "int8" not in as_fp32.stderr
    assert json.loads(as_int8.stdout)[0]["score"] == pytest.approx(float(int8_score), abs=1e-6)
    assert json.loads(as_fp32.stdout)[0]["score"] == pytest.approx(float(fp32_score), abs=1e-6)

    evaluated = run_cli("evaluate", run, trained["data"], "--json", env=env)
    assert evaluated.returncode == 0 and said in evaluated.stderr
    assert "int8" not in run_cli("evaluate", run, trained["data"], "--json", "--fp32", env=env).stderr
    scored = run_cli("score", run, image, "--out", tmp_path / "s.csv", env=env)
    assert scored.returncode == 0 and said in scored.stderr

    assert Model(run).quantized == "int8" and Model(run).path == int8_file
    assert Model(run, fp32=True).quantized is None and Model(run, fp32=True).path == int8_file.with_name("model.onnx")


def replace_with_another_model(model):
    """Write over `model` (atomically, as a download does) the same network with its last layer's
    weights doubled: another model, whose scores differ from the first one's and from its int8's."""
    from onnx import numpy_helper

    graph = onnx.load(str(model))
    head = next(node for node in graph.graph.node if node.op_type == "Gemm")
    weight = next(init for init in graph.graph.initializer if init.name == head.input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 2, weight.name))
    staged = model.with_name("staged.onnx")
    onnx.save(graph, str(staged))
    staged.replace(model)


def test_an_int8_model_of_an_earlier_model_onnx_is_passed_over_until_quantize_runs_again(trained, tmp_path,
                                                                                         in_home):
    from orchestrator import Model

    run = tmp_path / "run"
    shutil.copytree(trained["run_dir"], run)
    fp32_file, int8_file = run / "outputs" / "model.onnx", run / "outputs" / "model.int8.onnx"
    image = sorted((trained["data"] / "red").glob("*.png"))[0]
    assert Model(run).path == int8_file and Model(run).chosen_for(run).startswith("using the int8 model")

    replace_with_another_model(fp32_file)
    fp32_score = OnnxClassifier(fp32_file).classify([str(image)])[0][0].max()
    int8_score = OnnxClassifier(int8_file).classify([str(image)])[0][0].max()
    assert abs(fp32_score - int8_score) > 1e-3
    said = (f"model.int8.onnx was made from an earlier model.onnx: using {fp32_file} "
            f"(run `orchestrate quantize {run}` again)")
    predicted = run_cli("predict", run, image, "--json", env=trained["env"])
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stderr.strip() == said
    assert json.loads(predicted.stdout)[0]["score"] == pytest.approx(float(fp32_score), abs=1e-6)
    chosen = Model(run)
    assert chosen.path == fp32_file and chosen.quantized is None and chosen.chosen_for(run) == said
    assert Model(run, fp32=True).chosen_for(run) is None  # the fp32 model asked for: nothing to tell

    # quantize writes over the stale int8 file an int8 model of the new model.onnx, which is used again
    quantized = run_cli("quantize", run, env=trained["env"])
    assert quantized.returncode == 0 and "kept the int8 model" in quantized.stdout, quantized.stderr
    assert Model(run).path == int8_file and Model(run).quantized == "int8"
    again = run_cli("predict", run, image, "--json", env=trained["env"])
    assert again.returncode == 0 and again.stderr.startswith(f"using the int8 model {int8_file}"), again.stderr
    new_int8_score = OnnxClassifier(int8_file).classify([str(image)])[0][0].max()
    assert json.loads(again.stdout)[0]["score"] == pytest.approx(float(new_int8_score), abs=1e-6)
    assert abs(new_int8_score - fp32_score) < abs(int8_score - fp32_score)  # of the new model, not the old


def test_an_int8_model_that_does_not_record_its_source_is_not_trusted(trained, tmp_path, in_home):
    """An int8 file of an earlier version (no SOURCE_KEY) may be of another model.onnx: passed over, said."""
    from orchestrator import Model

    run = tmp_path / "run"
    shutil.copytree(trained["run_dir"], run)
    int8_file = run / "outputs" / "model.int8.onnx"
    model = onnx.load(str(int8_file))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != SOURCE_KEY]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(int8_file))
    chosen = Model(run)
    assert chosen.path == run / "outputs" / "model.onnx" and chosen.quantized is None
    assert chosen.chosen_for(run).startswith("model.int8.onnx does not record which model.onnx it was made from: "
                                             f"using {run / 'outputs' / 'model.onnx'} (run `orchestrate quantize")
    bare = shutil.copytree(run / "outputs", tmp_path / "copied-outputs")  # no spec.json: a model file to quantize
    assert Model(bare).chosen_for(bare).endswith(f"(run `orchestrate quantize {bare / 'model.onnx'} "
                                                 "--calibration DATA` again)")
    int8_file.write_bytes(b"no ONNX file at all")  # named in one line, not passed over in silence
    with pytest.raises(UsageError, match="model.int8.onnx is not a readable ONNX model"):
        Model(run)


def test_the_gate_refuses_an_accuracy_drop_above_the_maximum(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    (run / "outputs" / "model.int8.onnx").write_bytes(b"an int8 model of an earlier quantize")
    result = run_cli("quantize", run, "--max-accuracy-drop", "-1", env=trained["env"])
    assert result.returncode == 0, result.stderr
    assert "removed the int8 model: its accuracy is" in result.stdout and "more than the -1 allowed" in result.stdout
    assert not (run / "outputs" / "model.int8.onnx").exists()  # the earlier one no longer stands
    section = json.loads((run / "outputs" / "metrics.json").read_text())["int8"]
    assert section["kept"] is False and "more than the -1 allowed" in section["reason"]
    assert "int8" not in run_cli("predict", run, trained["data"] / "red", env=trained["env"]).stderr

    kept = run_cli("quantize", run, "--max-accuracy-drop", "-1", "--no-gate", env=trained["env"])
    assert kept.returncode == 0 and "without the gate" in kept.stdout
    assert (run / "outputs" / "model.int8.onnx").is_file()
    section = json.loads((run / "outputs" / "metrics.json").read_text())["int8"]
    assert section["kept"] is True and "more than the -1 allowed" in section["reason"]


def test_the_gate_refuses_a_model_its_calibration_broke(trained, tmp_path):
    """Calibrated on one flat gray picture, the int8 ranges clip everything else: refused on agreement."""
    gray = tmp_path / "gray.png"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(gray)
    paths, names = job_test_split(trained)
    fp32 = trained["run_dir"] / "outputs" / "model.onnx"
    labels = OnnxClassifier(fp32).labels
    out = tmp_path / "bad.int8.onnx"
    out.write_bytes(b"stale")
    figures = quantize_model(fp32, [str(gray)] * 4, paths, [labels.index(name) for name in names], out=out)
    assert figures["agreement"] < MIN_AGREEMENT and figures["kept"] is False
    assert figures["reason"].startswith("it picks the fp32 model's label for") and "less than the 97%" in figures["reason"]
    assert not out.exists()


def test_quantize_a_model_file_with_a_calibration_folder(trained, tmp_path):
    model = tmp_path / "mine" / "classifier.onnx"
    model.parent.mkdir()
    shutil.copy(trained["run_dir"] / "outputs" / "model.onnx", model)
    refused = run_cli("quantize", model, env=trained["env"])
    assert refused.returncode == 2 and "--calibration" in refused.stderr
    assert not model.with_name("classifier.int8.onnx").exists()

    result = run_cli("quantize", model, "--calibration", trained["data"], "--json", env=trained["env"])
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    int8 = model.with_name("classifier.int8.onnx")
    assert figures["kept"] is True and figures["path"] == str(int8) and int8.is_file()
    assert figures["test_images"] == 417 and 297 <= figures["calibration_images"] <= 300  # 420 files, 3 unreadable
    assert figures["agreement"] >= MIN_AGREEMENT
    # a file given by path is used as it is
    image = sorted((trained["data"] / "blue").glob("*.png"))[0]
    plain = run_cli("predict", model, image, env=trained["env"])
    assert plain.returncode == 0 and "int8" not in plain.stderr
    assert run_cli("predict", int8, image, env=trained["env"]).returncode == 0


def test_a_packed_copy_of_the_data_gives_the_same_split(trained, tmp_path, in_home):
    from orchestrator import quantize

    run = copy_run(trained, tmp_path)
    packed = tmp_path / "packed"
    assert run_cli("data", "pack", trained["data"], "--out", packed, env=trained["env"]).returncode == 0
    spec = json.loads((run / "spec.json").read_text())
    (run / "spec.json").write_text(json.dumps({**spec, "data": str(packed)}))
    result = quantize(run)
    assert result.kept and result.path == run / "outputs" / "model.int8.onnx"
    assert result.test_images == trained["summary"]["metrics"]["split"]["test"]
    reference = json.loads((trained["run_dir"] / "outputs" / "metrics.json").read_text())["int8"]
    assert result.agreement == pytest.approx(reference["agreement"])


def test_a_data_folder_changed_since_the_run_is_refused(trained, tmp_path, in_home):
    from orchestrator import quantize

    run = copy_run(trained, tmp_path)
    data = tmp_path / "data"
    shutil.copytree(trained["data"], data)
    paths, _ = job_test_split(trained)
    removed = Path(paths[0]).relative_to(trained["data"])
    (data / removed).unlink()
    spec = json.loads((run / "spec.json").read_text())
    (run / "spec.json").write_text(json.dumps({**spec, "data": str(data)}))
    with pytest.raises(DatasetError, match="changed since the run"):
        quantize(run)
    shutil.rmtree(data)
    with pytest.raises(DatasetError, match="not on this machine"):
        quantize(run)
    with pytest.raises(UsageError, match="max_accuracy_drop"):
        quantize(run, max_accuracy_drop="1")


def test_the_gate_counts_a_drop_as_fp32_minus_int8_accuracy():
    """The gate's rule on synthetic predictions of 250 images: int8 two points worse than fp32 (and
    98% agreement) is refused at the default 1 point and kept at 3; better than fp32 is no drop."""
    import numpy as np

    from orchestrator.inference.quantize import compare_models, gate_refusal

    labels = ["a", "b"]
    truth = np.array([0] * 125 + [1] * 125)
    fp32 = np.eye(2)[truth] * 0.9 + 0.05     # every image right
    int8 = fp32.copy()
    int8[:5] = int8[:5, ::-1]                 # 5 of 250 images wrong: 2 points, 98% agreement
    worse = compare_models(labels, truth, fp32, int8)
    assert worse["accuracy_drop"] == pytest.approx(2.0) and worse["agreement"] == pytest.approx(0.98)
    assert "2.00 point(s) below" in gate_refusal(worse, 1.0) and gate_refusal(worse, 3.0) is None
    better = compare_models(labels, truth, int8, fp32)
    assert better["accuracy_drop"] == pytest.approx(-2.0) and gate_refusal(better, 1.0) is None


def test_a_nan_maximum_drop_is_refused_not_a_disabled_gate(trained):
    from orchestrator import quantize

    with pytest.raises(UsageError, match="max_accuracy_drop"):
        quantize(trained["run_id"], max_accuracy_drop=float("nan"))

