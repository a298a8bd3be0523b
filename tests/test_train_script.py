"""remote_scripts/train.py, the job of every backend (DESIGN.md 4.1 job contract, 4.2 events).

The script runs for real, as a subprocess, on generated images: tiny (32 px, resnet18, random
weights) so that the whole file stays around a minute on two cores. Helpers it is built from
are also checked in-process where that is the sharper test (exact preprocessing, ONNX export).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from imagegen import make_dataset, readable
from orchestrator.events import parse_line
from remote_scripts import folder_dataset, imagecache, imaging, metrics, outputs, progress, runtime, schedule, train
from remote_scripts.export import ARCH_KEY, MODE_KEY, export_backbone, export_onnx
from remote_scripts.models import WeightsError, build_model, load_weights

SCRIPT = Path(train.__file__)
FAST = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "8"]
SPLIT = ["--val-fraction", "0.2", "--test-fraction", "0.25"]
CLASSES = ["blue", "green", "red"]


def run_script(*args, python=sys.executable, env=None, timeout=300):
    """Run train.py in a subprocess; the result carries its parsed events as .events."""
    result = subprocess.run([python, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})})
    result.events = [e for e in map(parse_line, result.stdout.splitlines()) if e]
    return result


def of_type(events, type_):
    return [e for e in events if e["type"] == type_]


def history(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 classes x 12 files, 2 of them corrupt, 5 in unusual colour modes."""
    return make_dataset(tmp_path_factory.mktemp("data") / "images", per_class=12, corrupt=2, modes=True)


@pytest.fixture(scope="module")
def resumed(data, tmp_path_factory):
    """A linear-mode run stopped by --time-budget 0 after epoch 1 of 2, then resumed to the end."""
    root = tmp_path_factory.mktemp("linear")
    out, ckpt = root / "out", root / "ckpt"
    args = ["--data", data, "--output", out, "--checkpoint-dir", ckpt, "--mode", "linear", "--epochs", "2",
            *FAST, *SPLIT]
    first = run_script(*args, "--time-budget", "0")
    assert first.returncode == 0, first.stderr
    assert [row["epoch"] for row in history(out)] == [1]
    second = run_script(*args)
    assert second.returncode == 0, second.stderr
    return {"first": first, "second": second, "out": out, "ckpt": ckpt, "args": args}


# --------------------------------------------------------------------------------------------
# A complete run: outputs, events, metrics, the ONNX model


def test_outputs_follow_the_job_contract(resumed):
    out = resumed["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(outputs.OUTPUT_FILES)
    assert json.loads((out / "labels.json").read_text()) == CLASSES
    rows = history(out)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds", "lr"} <= set(rows[0])


def test_events_tell_the_whole_story_in_order(resumed):
    events = resumed["second"].events
    types = [e["type"] for e in events]
    assert set(types) <= set(progress.EVENT_TYPES)
    assert types[0] == "phase" and events[0]["name"] == "scan"
    assert types[-1] == "run_end" and events[-1]["status"] == "completed" and events[-1]["exit_code"] == 0
    phases = [e["name"] for e in of_type(events, "phase")]
    assert phases == ["scan", "train", "evaluate", "export"]  # features came from the checkpoint
    start = of_type(events, "run_start")[0]
    assert start["classes"] == CLASSES and sum(start["split"].values()) == 34
    assert start["config"]["mode"] == "linear" and start["device"].startswith("cpu")
    assert types.index("run_start") < types.index("epoch_end") < types.index("metrics") < types.index("artifact")
    in_epoch = [e for e in of_type(events, "progress") if e["phase"] == "train"]
    assert in_epoch and in_epoch[0]["epoch"] == 2 and in_epoch[0]["epochs"] == 2
    assert [e["name"] for e in of_type(events, "artifact")] == list(outputs.OUTPUT_FILES)


def test_artifact_events_describe_the_files_written(resumed):
    import hashlib
    for event in of_type(resumed["second"].events, "artifact"):
        content = (resumed["out"] / event["name"]).read_bytes()
        assert event["bytes"] == len(content) and event["sha256"] == hashlib.sha256(content).hexdigest()


def test_corrupt_files_are_skipped_listed_and_not_fatal(resumed):
    saved = json.loads((resumed["out"] / "metrics.json").read_text())
    assert len(saved["skipped"]) == 2
    assert all("corrupt" in s["path"] and s["reason"] for s in saved["skipped"])
    assert not any(str(resumed["args"][1]) in s["reason"] for s in saved["skipped"])  # no absolute paths
    skipped_event = of_type(resumed["second"].events, "skipped")[0]
    assert skipped_event["count"] == 2 and skipped_event["files"] == saved["skipped"]


def test_metrics_json_holds_the_test_split_metrics(resumed):
    saved = json.loads((resumed["out"] / "metrics.json").read_text())
    assert saved["evaluated_on"] == "test" and saved["num_samples"] == saved["split"]["test"] == 9
    assert saved["split"] == {"train": 19, "val": 6, "test": 9}
    for key in ("accuracy", "macro_accuracy", "log_loss", "per_class_log_loss", "confusion_matrix", "per_class"):
        assert key in saved
    assert saved["best_epoch"] in (1, 2) and saved["epochs_completed"] == 2
    event = of_type(resumed["second"].events, "metrics")[0]
    # all but the confusion matrix, which grows with the square of the classes: a line of megabytes
    assert {k: v for k, v in event.items() if k not in ("v", "type", "time")} == \
        {k: v for k, v in saved.items() if k != "confusion_matrix"}


def test_predictions_csv_holds_each_test_image_as_metrics_json_counted_it(resumed, data):
    import csv
    saved = json.loads((resumed["out"] / "metrics.json").read_text())
    with open(resumed["out"] / "predictions.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == metrics.PREDICTION_COLUMNS and len(rows) == saved["split"]["test"]
    labels = saved["confusion_matrix"]["labels"]
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for row in rows:
        assert row["true_label"] == Path(row["path"]).parts[0] and readable(data, row["path"])
        assert float(row["score"]) >= float(row["true_label_score"])  # the predicted label is the likeliest
        confusion[labels.index(row["true_label"]), labels.index(row["predicted_label"])] += 1
    assert confusion.tolist() == saved["confusion_matrix"]["matrix"]
    log_loss = -np.mean([np.log(max(float(row["true_label_score"]), metrics.EPSILON)) for row in rows])
    assert log_loss == pytest.approx(saved["log_loss"], rel=1e-4, abs=1e-6)


def test_onnx_model_is_self_describing_with_a_dynamic_batch(resumed):
    model = onnx.load(str(resumed["out"] / "model.onnx"))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta[imaging.LABELS_KEY]) == CLASSES
    assert json.loads(meta[imaging.PREPROCESS_KEY]) == imaging.preprocess_spec(32)
    assert meta[ARCH_KEY] == "resnet18" and meta[MODE_KEY] == "linear"
    (image,), (output, cam) = model.graph.input, model.graph.output  # resnet18: its class activation map too
    assert (image.name, output.name, cam.name) == (imaging.INPUT_NAME, imaging.OUTPUT_NAME, imaging.CAM_NAME)
    assert image.type.tensor_type.shape.dim[0].dim_param, "the batch axis must be dynamic"
    assert [d.dim_value for d in image.type.tensor_type.shape.dim[1:]] == [3, 32, 32]


def test_onnx_runtime_reproduces_the_metrics_pytorch_computed(resumed, data):
    """The exported model, fed imaging.preprocess of the test files, scores what the job reported."""
    found = folder_dataset.scan(str(data))
    usable = [s for s in found.samples if readable(data, s[0])]
    _, _, test = folder_dataset.stratified_split(usable, found.classes, 0.2, 0.25, seed=0)
    session = ort.InferenceSession(str(resumed["out"] / "model.onnx"))
    spec = json.loads(session.get_modelmeta().custom_metadata_map[imaging.PREPROCESS_KEY])
    batch = np.stack([imaging.preprocess(imaging.load_rgb(str(data / path)), spec) for path, _ in test])
    probabilities = session.run(None, {imaging.INPUT_NAME: batch})[0]
    recomputed = metrics.classification_metrics([label for _, label in test], probabilities, found.classes)
    saved = json.loads((resumed["out"] / "metrics.json").read_text())
    assert recomputed["confusion_matrix"] == saved["confusion_matrix"]
    assert recomputed["log_loss"] == pytest.approx(saved["log_loss"], abs=1e-4)


def test_evaluate_on_the_test_split_gives_metrics_json(resumed, data, cli, tmp_path):
    """`orchestrate evaluate` (ONNX Runtime) on the test split's files reproduces the job's numbers:
    the head is fitted and tested on float32 features, the arithmetic of the exported model."""
    found = folder_dataset.scan(str(data))
    usable = [s for s in found.samples if readable(data, s[0])]
    _, _, test = folder_dataset.stratified_split(usable, found.classes, 0.2, 0.25, seed=0)
    holdout = tmp_path / "holdout"
    for path, label in test:
        target = holdout / found.classes[label] / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((data / path).read_bytes())
    result = cli("evaluate", resumed["out"] / "model.onnx", holdout, "--json")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout)
    saved = json.loads((resumed["out"] / "metrics.json").read_text())
    assert evaluated["confusion_matrix"] == saved["confusion_matrix"]
    for key in ("accuracy", "macro_accuracy", "macro_f1", "log_loss"):
        assert evaluated[key] == pytest.approx(saved[key], abs=1e-5), key


def test_cpu_runs_in_float32_when_it_has_no_native_bf16(resumed):
    from remote_scripts.runtime import native_bf16_cpu
    expected = "bf16" if native_bf16_cpu() else "fp32"
    start = of_type(resumed["first"].events, "run_start")[0]
    assert start["config"]["precision"] == "fp32"  # linear mode's features are float32 on any device
    assert runtime.Precision(torch.device("cpu"), "auto").describe() == expected


def test_balance_weights_each_class_by_its_rarity():
    dataset = imagecache.DecodedDataset(["big", "small", "none"], [], np.array([0] * 8 + [1] * 2), None,
                              np.arange(10), np.array([], np.int64), np.array([], np.int64), [], None)
    weights = schedule.class_weights(dataset, torch.device("cpu"))
    assert weights.tolist() == pytest.approx([10 / (3 * 8), 10 / (3 * 2), 0.0])


def test_balance_trains_with_a_weighted_loss(data, tmp_path, capsys):
    code, err, events = run_main(capsys, "--data", data, "--output", tmp_path / "out", "--mode", "linear",
                                 "--epochs", "1", "--balance", *FAST, *SPLIT)
    assert code == 0, err
    assert of_type(events, "run_start")[0]["config"]["balance"] is True
    assert "macro_f1" in json.loads((tmp_path / "out" / "metrics.json").read_text())


# --------------------------------------------------------------------------------------------
# Checkpoints: resume, refuse another run's checkpoint, re-export a finished run


def test_resume_continues_after_the_last_epoch_without_repeating_it(resumed):
    first, second = resumed["first"], resumed["second"]
    assert [e["epoch"] for e in of_type(first.events, "epoch_end")] == [1]
    assert any("time budget" in e["message"] for e in of_type(first.events, "warning"))
    assert of_type(second.events, "run_start")[0]["resumed_from_epoch"] == 1
    assert [e["epoch"] for e in of_type(second.events, "epoch_end")] == [2]
    assert [e["epoch"] for e in of_type(second.events, "checkpoint")] == [2]
    assert "featurize" not in [e["name"] for e in of_type(second.events, "phase")]


def test_a_finished_run_started_again_only_re_exports(resumed, capsys):
    code, err, events = run_main(capsys, *resumed["args"])
    assert code == 0, err
    assert not of_type(events, "epoch_end") and of_type(events, "artifact")
    assert of_type(events, "run_start")[0]["resumed_from_epoch"] == 2
    assert [row["epoch"] for row in history(resumed["out"])] == [1, 2]


def test_a_best_pt_of_another_epoch_is_not_exported_as_the_best(resumed, tmp_path, capsys):
    """A kill between saving best.pt and last.pt leaves them out of step: the last weights are kept."""
    import shutil
    ckpt = tmp_path / "ckpt"
    shutil.copytree(resumed["ckpt"], ckpt)
    best = torch.load(ckpt / "best.pt")
    torch.save(dict(best, epoch=best["epoch"] + 5), ckpt / "best.pt")
    args = list(resumed["args"])
    args[args.index("--checkpoint-dir") + 1] = ckpt
    args[args.index("--output") + 1] = tmp_path / "out"
    code, err, events = run_main(capsys, *args)
    assert code == 0, err
    assert any("best.pt does not hold the weights of the best epoch" in e["message"]
               for e in of_type(events, "warning"))
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["best_epoch"] == 2


def test_a_checkpoint_of_other_settings_is_refused(resumed, tmp_path, capsys):
    args = list(resumed["args"])
    args[args.index("--epochs") + 1] = "3"
    args[args.index("--output") + 1] = tmp_path / "out"
    code, err, _ = run_main(capsys, *args)
    assert code == 2
    assert "holds a run with other settings (--epochs differ)" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------------------------
# The other modes, cancellation, several processes


@pytest.mark.slow
def test_head_mode_trains_the_head_on_augmented_images(data, tmp_path):
    out = tmp_path / "out"
    result = run_script("--data", data, "--output", out, "--mode", "head", "--epochs", "1", *FAST, *SPLIT)
    assert result.returncode == 0, result.stderr
    assert [row["epoch"] for row in history(out)] == [1]
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert meta[MODE_KEY] == "head"
    assert "featurize" not in [e["name"] for e in of_type(result.events, "phase")]


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_and_the_resumed_run_ends_as_an_uninterrupted_one(tmp_path):
    """SIGTERM between two steps saves the epoch's position; the resumed run takes the very next
    batch with the same augmentation, so its weights equal those of a run never stopped."""
    data = make_dataset(tmp_path / "data", per_class=40)  # 48 steps an epoch: seconds, not a blink
    job = ["--mode", "full", "--epochs", "2", "--patience", "0", "--arch", "resnet18", "--weights", "none",
           "--image-size", "32", "--batch-size", "2", *SPLIT]
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--data", str(data), "--output", str(tmp_path / "out"),
                             "--checkpoint-dir", str(ckpt), *job],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            event = parse_line(line)
            if event and event["type"] == "progress" and event["phase"] == "train" and event.get("epoch") == 2:
                proc.send_signal(signal.SIGTERM)
                break
        rest, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    later = [e for e in map(parse_line, rest.splitlines()) if e]
    ends = of_type(later, "run_end")
    assert ends == [dict(ends[0], status="canceled", exit_code=143)]
    assert of_type(later, "checkpoint")[-1]["partial"] is True
    position = torch.load(ckpt / "last.pt", weights_only=False)["position"]
    assert position["epoch"] == 2 and 0 < position["step"]

    resumed = run_script("--data", data, "--output", tmp_path / "out", "--checkpoint-dir", ckpt, *job, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert [e["epoch"] for e in of_type(resumed.events, "epoch_end")] == [2]
    assert f"in epoch 2 at step {position['step']}" in resumed.stdout
    straight = run_script("--data", data, "--output", tmp_path / "straight", "--checkpoint-dir",
                          tmp_path / "straight-ckpt", *job, timeout=900)  # a loaded machine is slow
    assert straight.returncode == 0, straight.stderr
    ours = torch.load(ckpt / "last.pt", weights_only=False)["weights"]
    reference = torch.load(tmp_path / "straight-ckpt" / "last.pt", weights_only=False)["weights"]
    assert all(torch.allclose(ours[k].float(), reference[k].float(), atol=1e-5) for k in reference)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_full_mode_in_two_processes_under_torchrun_trains_one_model(data, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), str(SCRIPT), "--data", str(data), "--output", str(out),
         "--mode", "full", "--epochs", "1", "--workers", "1", *FAST, *SPLIT],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    events = [e for e in map(parse_line, result.stdout.splitlines()) if e]
    assert len(of_type(events, "run_start")) == 1  # rank 0 alone reports
    assert of_type(events, "run_start")[0]["config"]["world_size"] == 2
    assert [row["epoch"] for row in history(out)] == [1]
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert meta[MODE_KEY] == "full"


DEBIAN_PYTHON = "/usr/bin/python3"


def debian_torch():
    """Debian bookworm's python3-torch 1.13 (the offline Docker image's torch), when installed here."""
    if not os.path.exists(DEBIAN_PYTHON):
        return None
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import torch, torchvision; print(torch.__version__)"],
                           capture_output=True, text=True)
    return probe.stdout.strip() if probe.returncode == 0 else None


@pytest.mark.slow
def test_trains_and_resumes_on_debian_torch_1_13(data, tmp_path):
    version = debian_torch()
    if not version:
        pytest.skip("no python3-torch at /usr/bin/python3 (apt-get install python3-torch python3-torchvision)")
    assert version.startswith("1.13")
    out = tmp_path / "out"
    args = ["--data", data, "--output", out, "--checkpoint-dir", tmp_path / "ckpt", "--mode", "full",
            "--epochs", "2", *FAST, *SPLIT]
    first = run_script(*args, "--time-budget", "0", python=DEBIAN_PYTHON)
    assert first.returncode == 0, first.stderr
    resumed = run_script(*args, python=DEBIAN_PYTHON)  # torch 1.13 reads back its own checkpoint
    assert resumed.returncode == 0, resumed.stderr
    assert [e["epoch"] for e in of_type(resumed.events, "epoch_end")] == [2]
    session = ort.InferenceSession(str(out / "model.onnx"))
    assert json.loads(session.get_modelmeta().custom_metadata_map[imaging.LABELS_KEY]) == CLASSES
    probabilities = session.run(None, {"image": np.zeros((3, 3, 32, 32), np.float32)})[0]
    assert probabilities.shape == (3, 3) and np.allclose(probabilities.sum(1), 1, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Bad input: exit 2, one line on stderr, a failed run_end event


def run_main(capsys, *args):
    code = train.main([str(a) for a in args])
    captured = capsys.readouterr()
    events = [e for e in map(parse_line, captured.out.splitlines()) if e]
    return code, captured.err, events


def make_tree(root, counts, corrupt=()):
    for label, n in counts.items():
        (root / label).mkdir(parents=True)
        for i in range(n):
            imaging.Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / label / f"{i}.png")
    for path in corrupt:
        (root / path).write_bytes(b"")
    return root


@pytest.mark.parametrize("layout, message", [
    (None, "data folder not found"),
    ({}, "no images found"),
    ({"cats": 5}, "need at least 2 classes with images, found 1 (cats)"),
    ({"cats": 10, "dogs": 2}, "class 'dogs' has 2 image(s); at least 3 are needed"),
    ({"cats": 10, "dogs": 2, "_corrupt": ["dogs/x.jpg"]}, "class 'dogs' has 2 usable image(s)"),
])
def test_unusable_data_exits_2_with_its_message(capsys, tmp_path, layout, message):
    data = tmp_path / "data"
    if layout is not None:
        data.mkdir()
        layout = dict(layout)
        make_tree(data, {k: v for k, v in layout.items() if k != "_corrupt"}, layout.get("_corrupt", ()))
    code, err, events = run_main(capsys, "--data", data, "--output", tmp_path / "out", *FAST)
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "failed"
    assert events[-1]["exit_code"] == 2 and message in events[-1]["error"]


def assert_usage_error(code, err, events, message):
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "failed"
    assert events[-1]["exit_code"] == 2 and message in events[-1]["error"]


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--image-size", "8"], "--image-size must be between 16 and 2048"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--lr", "inf"], "--lr must be finite and positive"),
    (["--lr", "nan"], "--lr must be finite and positive"),
    (["--weight-decay", "nan"], "--weight-decay must be finite"),
    (["--precision", "fp16"], "--precision fp16 needs a CUDA GPU"),
    (["--arch", "vgg16"], "invalid choice: 'vgg16'"),
    (["--epochs", "two"], "--epochs: invalid int value: 'two'"),
    (["--time-budget", "-5"], "--time-budget must be zero or more"),
    (["--val-fraction", "0.6", "--test-fraction", "0.5"], "sum to less than 1"),
    (["--test-fraction", "1"], "must be in [0, 1)"),
    (["--mode", "full", "--batch-size", "1"], "--mode full needs --batch-size 2 or more"),
])
def test_bad_arguments_exit_2(capsys, tmp_path, flags, message):
    """Checked before the data is even listed (the folder here is empty); no usage block."""
    code, err, events = run_main(capsys, "--data", tmp_path, "--output", tmp_path / "out", *flags)
    assert_usage_error(code, err, events, message)


@pytest.mark.parametrize("flag", ["--output", "--checkpoint-dir", "--cache-dir"])
def test_an_unwritable_location_exits_2_before_any_work(capsys, tmp_path, flag):
    data = make_tree(tmp_path / "data", {"a": 10, "b": 10})
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    paths = {"--output": tmp_path / "out", "--checkpoint-dir": tmp_path / "ckpt", "--cache-dir": tmp_path / "cache"}
    paths[flag] = blocker / "sub"
    flags = [str(x) for pair in paths.items() for x in pair]
    code, err, events = run_main(capsys, "--data", data, *flags, *FAST)
    assert_usage_error(code, err, events, f"{flag} {blocker / 'sub'} is not a writable folder")
    assert "phase" not in [e["type"] for e in events]  # before the scan


def test_a_cache_that_would_not_fit_on_its_disk_exits_2_before_decoding(capsys, tmp_path, monkeypatch):
    """The sparse memory-mapped cache would otherwise die of SIGBUS, silently, once the disk is full."""
    data = make_tree(tmp_path / "data", {"a": 10, "b": 10})
    real = imagecache.shutil.disk_usage
    monkeypatch.setattr(imagecache.shutil, "disk_usage", lambda path: real(path)._replace(free=10 << 20))
    decoded = []
    monkeypatch.setattr(imagecache, "decode", lambda *a: decoded.append(a))
    code, err, events = run_main(capsys, "--data", data, "--output", tmp_path / "out",
                                 "--cache-dir", tmp_path / "cache", *FAST)
    assert_usage_error(code, err, events, "the decoded-image cache needs 64 MiB of free space in")
    assert str(tmp_path / "cache") in err and "--cache-dir" in err and not decoded


def test_a_diverging_run_fails_and_exports_nothing(data, tmp_path):
    out = tmp_path / "out"
    result = run_script("--data", data, "--output", out, "--mode", "linear", "--epochs", "3", *FAST, *SPLIT,
                        "--lr", "1e33")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: loss diverged at epoch ")
    assert "lower --lr" in result.stderr and "Traceback" not in result.stderr
    end = result.events[-1]
    assert end["type"] == "run_end" and end["status"] == "failed" and end["exit_code"] == 1
    assert "loss diverged" in end["error"]
    assert not (out / "model.onnx").exists() and not (out / "metrics.json").exists()
    assert not (out / "history.jsonl").exists() or "NaN" not in (out / "history.jsonl").read_text()


def test_events_and_json_files_are_strict_json(tmp_path, capsys):
    """NaN / Infinity are not JSON: a strict reader would refuse the whole line or file."""
    progress.emit("epoch_end", epoch=1, train_loss=float("nan"), val_loss=float("inf"), rows=[float("-inf")])
    outputs.write_json(str(tmp_path / "m.json"), {"log_loss": float("nan"), "per_class": {"a": float("inf")}})
    event = json.loads(capsys.readouterr().out.removeprefix(progress.PREFIX), parse_constant=pytest.fail)
    assert (event["train_loss"], event["val_loss"], event["rows"]) == (None, None, [None])
    saved = json.loads((tmp_path / "m.json").read_text(), parse_constant=pytest.fail)
    assert saved == {"log_loss": None, "per_class": {"a": None}}


def test_progress_stays_at_two_a_second_over_short_epochs(data, tmp_path):
    result = run_script("--data", data, "--output", tmp_path / "out", "--mode", "linear", "--epochs", "8",
                        *FAST, *SPLIT)
    assert result.returncode == 0, result.stderr
    times = [e["time"] for e in of_type(result.events, "progress") if e["phase"] == "train"]
    assert times and all(b - a >= 0.45 for a, b in zip(times, times[1:])), times


def test_a_missing_weights_file_exits_2(capsys, tmp_path):
    data = make_tree(tmp_path / "data", {"a": 10, "b": 10})
    code, err, _ = run_main(capsys, "--data", data, "--output", tmp_path / "out", *FAST,
                            "--weights", tmp_path / "nope.pt")
    assert code == 2 and "--weights" in err and "no such file" in err


@pytest.mark.parametrize("content", [b"", b"not weights\n", b"\x80\x02crandom\nstuff\n."])
def test_a_file_that_is_no_weights_file_exits_2_in_one_line(capsys, tmp_path, content):
    data = make_tree(tmp_path / "data", {"a": 10, "b": 10})
    (tmp_path / "w.pt").write_bytes(content)
    code, err, events = run_main(capsys, "--data", data, "--output", tmp_path / "out", *FAST,
                                 "--weights", tmp_path / "w.pt")
    assert_usage_error(code, err, events, "not a PyTorch weights file")


def test_error_text_is_made_one_line_without_colour_codes():
    from remote_scripts.models import one_line
    assert one_line("\x1b[1mfailed\x1b[0m to load:\n  (1) this\n\n  (2) that") == "failed to load: (1) this (2) that"


def test_offline_imagenet_weights_exit_2_naming_the_alternatives(data, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the download fails at once
    result = run_script("--data", data, "--output", tmp_path / "out", "--arch", "resnet18", "--image-size", "32",
                        env={"TORCH_HOME": str(tmp_path / "torch"), "https_proxy": closed, "HTTPS_PROXY": closed,
                             "no_proxy": "", "NO_PROXY": ""})
    assert result.returncode == 2
    assert "cannot fetch the ImageNet weights" in result.stderr
    assert "--weights none" in result.stderr and "--weights PATH" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.events[-1]["status"] == "failed" and result.events[-1]["exit_code"] == 2


# --------------------------------------------------------------------------------------------
# The pieces: preprocessing, weights, export, sharding


def test_cached_pixels_normalize_exactly_as_imaging_preprocess(data):
    """What the model sees in training and evaluation is what `orchestrate predict` feeds ONNX."""
    spec = imaging.preprocess_spec(40)
    found = folder_dataset.scan(str(data))
    paths = [p for p, _ in found.samples if readable(data, p)]
    assert any("_mode" in p for p in paths)  # grayscale, RGBA, palette, CMYK, 16-bit are among them
    images = np.stack([imagecache.decode(str(data / p), spec) for p in paths])
    cached = imagecache.DecodedDataset(found.classes, paths, np.zeros(len(paths), np.int64), images, None, None, None, [], spec)
    ours = imagecache.Batches(cached, torch.device("cpu"), channels_last=False).images(np.arange(len(paths))).numpy()
    reference = np.stack([imaging.preprocess(imaging.load_rgb(str(data / p)), spec) for p in paths])
    assert np.array_equal(ours, reference)


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("mobilenet_v3_large", marks=pytest.mark.slow),
                                  pytest.param("efficientnet_b0", marks=pytest.mark.slow)])
def test_exported_onnx_agrees_with_pytorch(data, tmp_path, arch):
    spec = imaging.preprocess_spec(64)
    torch.manual_seed(0)
    model = build_model(arch, 3, standardize=True).eval()
    model.head[0].fit(torch.randn(16, model.head[1].in_features) * 3 + 1)
    paths = [p for p, _ in folder_dataset.scan(str(data)).samples if "corrupt" not in p][:5]
    batch = np.stack([imaging.preprocess(imaging.load_rgb(str(data / p)), spec) for p in paths])
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(batch)), dim=1).numpy()
    export_onnx(model, str(tmp_path / "m.onnx"), CLASSES, spec, arch, "linear")
    assert not model.training  # the model handed in is left as it was
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    got = session.run(None, {imaging.INPUT_NAME: batch})[0]
    assert np.abs(got - expected).max() < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()
    single = session.run(None, {imaging.INPUT_NAME: batch[:1]})[0]  # any batch size
    assert np.abs(single - expected[:1]).max() < 1e-4


def test_a_model_exported_behind_its_backbone_graph_is_the_whole_model(tmp_path):
    """Linear mode featurizes with export_backbone's graph and exports the head behind it: the
    file has the names, dynamic batch and metadata of a whole-model export, and its outputs."""
    spec = imaging.preprocess_spec(32)
    torch.manual_seed(0)
    model = build_model("resnet18", 3, standardize=True).eval()
    model.head[0].fit(torch.randn(16, model.head[1].in_features) * 3 + 1)
    export_onnx(model, str(tmp_path / "whole.onnx"), CLASSES, spec, "resnet18", "linear")
    export_onnx(model, str(tmp_path / "joined.onnx"), CLASSES, spec, "resnet18", "linear",
                backbone=export_backbone(model.backbone, spec))
    batch = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    outputs, metadata = [], []
    for name in ("whole", "joined"):
        onnx.checker.check_model(str(tmp_path / f"{name}.onnx"))
        session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"))
        assert [(i.name, i.shape) for i in session.get_inputs()] == [(imaging.INPUT_NAME, ["batch", 3, 32, 32])]
        assert [(o.name, o.shape) for o in session.get_outputs()] == [(imaging.OUTPUT_NAME, ["batch", 3]),
                                                                      ("cam", ["batch", 3, 1, 1])]
        metadata.append(session.get_modelmeta().custom_metadata_map)
        outputs.append(session.run(None, {imaging.INPUT_NAME: batch})[0])
    assert metadata[0] == metadata[1]
    assert np.abs(outputs[0] - outputs[1]).max() < 1e-6


def test_a_cpu_linear_run_reports_what_model_onnx_gives_to_the_last_digits(data, tmp_path, capsys):
    """With onnxruntime installed a CPU run featurizes in ONNX Runtime with the backbone graph
    that model.onnx then holds: the model, fed the test files, gives metrics.json's numbers."""
    out = tmp_path / "out"
    code, err, _ = run_main(capsys, "--data", data, "--output", out, "--mode", "linear", "--epochs", "2",
                            *FAST, *SPLIT, "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    found = folder_dataset.scan(str(data))
    usable = [s for s in found.samples if readable(data, s[0])]
    _, _, test = folder_dataset.stratified_split(usable, found.classes, 0.2, 0.25, seed=0)
    session = ort.InferenceSession(str(out / "model.onnx"))
    spec = json.loads(session.get_modelmeta().custom_metadata_map[imaging.PREPROCESS_KEY])
    batch = np.stack([imaging.preprocess_file(str(data / path), spec) for path, _ in test])
    recomputed = metrics.classification_metrics([label for _, label in test],
                                                session.run(None, {imaging.INPUT_NAME: batch})[0], found.classes)
    saved = json.loads((out / "metrics.json").read_text())
    assert recomputed["confusion_matrix"] == saved["confusion_matrix"]
    assert recomputed["log_loss"] == pytest.approx(saved["log_loss"], abs=1e-6)


def test_a_weights_file_initializes_the_backbone_and_drops_the_old_classifier(tmp_path):
    torch.manual_seed(1)
    source = build_model("resnet18", 1000).state_dict()
    wrapped = {"state_dict": {"module." + k.replace("head.", "fc.").replace("backbone.", ""): v
                              for k, v in source.items()}}
    torch.save(wrapped, tmp_path / "w.pt")  # a DDP-style checkpoint wrapper, ImageNet head included
    model = build_model("resnet18", 3, load_weights("resnet18", str(tmp_path / "w.pt")), source="w.pt")
    assert torch.equal(model.backbone.conv1.weight, source["backbone.conv1.weight"])
    assert model.head.out_features == 3


def test_weights_of_another_network_are_refused(tmp_path):
    torch.save(build_model("mobilenet_v3_large", 10).backbone.state_dict(), tmp_path / "m.pt")
    with pytest.raises(WeightsError, match="not resnet18 weights"):
        build_model("resnet18", 3, load_weights("resnet18", str(tmp_path / "m.pt")), source="m.pt")


def test_imagenet_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(url)
    cached.parent.mkdir(parents=True)
    torch.manual_seed(2)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, cached)
    loaded = load_weights("resnet18", "imagenet")
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])


def test_processes_share_each_epoch_evenly_and_completely():
    train_idx = np.arange(100, 123)
    shards = [schedule.epoch_batches(train_idx, 0, 3, runtime.Dist(world=2, rank=r), 4, drop_single=False)
              for r in (0, 1)]
    assert len(shards[0]) == len(shards[1])  # the same number of steps, or DDP would hang
    seen = np.concatenate([b for shard in shards for b in shard])
    assert set(seen) == set(train_idx) and len(seen) == 24  # one index padded in


def test_epoch_order_is_reproducible_so_a_resumed_epoch_is_the_same_epoch():
    def order(epoch):
        return np.concatenate(schedule.epoch_batches(np.arange(50), 7, epoch, runtime.Dist(), 8, drop_single=False))
    assert np.array_equal(order(3), order(3)) and not np.array_equal(order(3), order(4))


def test_no_single_image_batch_reaches_batchnorm():
    batches = schedule.epoch_batches(np.arange(9), 0, 1, runtime.Dist(), 4, drop_single=True)
    assert [len(b) for b in batches] == [4, 4]


@pytest.mark.parametrize("entry, code, said", [("train.py", 0, "usage:"), ("launch.py", 0, "usage:"),
                                               ("search.py", 2, "arguments are required: --trials")])
def test_the_job_runs_from_a_code_folder_of_any_name(tmp_path, entry, code, said):
    """Backends start the entry points as files from a folder of another name (/code in a
    container, an Azure ML snapshot): job_package.py makes it the package remote_scripts, so
    every module imports (search.py then stops at its own arguments, as it should)."""
    folder = tmp_path / "code"
    shutil.copytree(Path(train.__file__).parent, folder, ignore=shutil.ignore_patterns("__pycache__"))
    with open(folder / "options.py", "a") as options_file:  # tells this copy from the installed one
        options_file.write("import dataclasses\nOPTIONS = (dataclasses.replace(OPTIONS[0], help='from the code folder'), *OPTIONS[1:])\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(folder / entry), "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == code, result.stderr
    assert said in result.stdout + result.stderr
    if entry == "train.py":  # the job's modules came from its own folder, not the installed package
        assert "from the code folder" in result.stdout
