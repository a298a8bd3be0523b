"""`orchestrate score` and `orchestrate predict` on folders with --out: real models, real ONNX Runtime.

One small model is trained for real by remote_scripts/train.py (resnet18, random weights, 32 px,
linear mode) on generated images; the CLI runs in subprocesses, and the reference predictions are
made in-process one image at a time, so that batching, threading and the row format are all
checked against the plainest possible use of the model.
"""
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from imagegen import make_dataset, readable
from orchestrator.inference import classifier as classifier_module
from orchestrator.inference.classifier import OnnxClassifier
from orchestrator.inference.score import COLUMNS, list_images
from remote_scripts import folder_dataset, train

pytestmark = pytest.mark.slow

CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """model.onnx of one real training run (1 epoch, linear mode) on a tiny generated dataset."""
    root = tmp_path_factory.mktemp("trained")
    data = make_dataset(root / "train", per_class=8)
    result = subprocess.run(
        [sys.executable, train.__file__, "--data", str(data), "--output", str(root / "out"),
         "--cache-dir", str(root / "cache"), "--arch", "resnet18", "--weights", "none", "--image-size", "32",
         "--mode", "linear", "--epochs", "1", "--batch-size", "8"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return root / "out" / "model.onnx"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Images to score: nested folders, upper-case extensions, 3 corrupt files, colour modes, and
    what a folder holds besides images (hidden files and folders, notes), which are not scored."""
    root = make_dataset(tmp_path_factory.mktemp("score") / "photos", per_class=10, corrupt=3, modes=True)
    red = sorted((root / "red").glob("*.png"))[0]
    shutil.copy(red, root / "red" / ".hidden.png")
    (root / "blue" / ".thumbnails").mkdir()
    shutil.copy(red, root / "blue" / ".thumbnails" / "thumb.png")
    (root / "green" / "notes.txt").write_text("not an image\n")
    return root


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [dict(zip(header, row)) for row in reader]


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_score_equals_predict_image_by_image(model, data, tmp_path):
    out = tmp_path / "scored.csv"
    result = run_cli("score", model, data, "--out", out, "--top-k", "2", "--batch-size", "4", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    header, rows = read_csv(out)
    assert tuple(header) == COLUMNS
    # The images the job's own scan lists (hidden files and non-images left out), in its order.
    listed = [rel for rel, _ in folder_dataset.scan(str(data)).samples]
    assert sorted(r["path"] for r in rows) == sorted(os.path.join(str(data), rel) for rel in listed)
    unreadable = sum(not readable(data, rel) for rel in listed)
    assert len(listed) == 30 and unreadable == 3
    assert (summary["images"], summary["scored"], summary["errors"]) == (30, 27, 3)
    assert summary["images_per_second"] > 0

    reference = OnnxClassifier(model)
    for row in rows:
        [(probs, error)] = reference.classify([row["path"]])  # one image per ONNX Runtime call
        if error:
            assert "corrupt" in row["path"] and row["error"] == error
            assert row["label"] == row["score"] == row["top_k"] == ""
            continue
        top = reference.top_k(probs, 2)
        assert row["error"] == "" and row["label"] == top[0]["label"]
        assert float(row["score"]) == pytest.approx(top[0]["score"], abs=1e-6)
        ranked = json.loads(row["top_k"])
        assert [t["label"] for t in ranked] == [t["label"] for t in top]
        assert [t["score"] for t in ranked] == pytest.approx([t["score"] for t in top], abs=1e-6)

    # predict --out writes the very same rows (another batch size, the same file format).
    predicted = tmp_path / "predicted.csv"
    result = run_cli("predict", model, data, "--out", predicted, "--top-k", "2")
    assert result.returncode == 0, result.stderr
    assert "30 row(s)" in result.stderr and "3 unreadable" in result.stderr
    by_path = {r["path"]: r for r in read_csv(predicted)[1]}
    for row in rows:
        other = by_path[row["path"]]
        assert (other["label"], other["error"]) == (row["label"], row["error"])
        if row["score"]:
            assert float(other["score"]) == pytest.approx(float(row["score"]), abs=1e-6)


def test_predict_takes_folders_recursively_and_files_alike(model, data):
    one_file = sorted((data / "green").glob("*.png"))[0]
    result = run_cli("predict", model, data / "red", one_file, "--json")
    assert result.returncode == 0, result.stderr
    images = [r["image"] for r in json.loads(result.stdout)]
    red = [str(p) for p in sorted((data / "red").rglob("*")) if p.is_file() and not p.name.startswith(".")]
    assert sorted(images[:-1]) == sorted(red) and images[-1] == str(one_file)
    assert any("/nested/" in image for image in images)
    # The table: one line per readable image on stdout, one per unreadable one on stderr.
    table = run_cli("predict", model, data / "red")
    assert table.returncode == 0, table.stderr
    assert len(table.stdout.splitlines()) + table.stderr.count(": error: ") == len(red)


def test_jsonl_rows_carry_every_column(model, data, tmp_path):
    out = tmp_path / "rows.jsonl"
    result = run_cli("predict", model, data / "blue", "--out", out, "--top-k", "5")
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(out)
    assert rows and all(tuple(r) == COLUMNS for r in rows)
    good = [r for r in rows if r["error"] is None]
    bad = [r for r in rows if r["error"] is not None]
    assert bad and all(r["label"] is None and r["score"] is None and r["top_k"] is None for r in bad)
    for r in good:
        assert r["label"] in CLASSES and len(r["top_k"]) == 3  # --top-k 5 of 3 labels gives 3
        assert r["top_k"][0] == {"label": r["label"], "score": r["score"]}
        assert sum(t["score"] for t in r["top_k"]) == pytest.approx(1, abs=1e-5)


def test_no_readable_image_exits_2_after_writing_the_reasons(model, data, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in data.rglob("corrupt_*"):
        shutil.copy(path, broken / path.name)
    for command in ("score", "predict"):
        out = tmp_path / f"{command}.csv"
        result = run_cli(command, model, broken, "--out", out)
        assert result.returncode == 2 and "no image could be read" in result.stderr
        assert "Traceback" not in result.stderr
        assert [r["error"].startswith("cannot read image") for r in read_csv(out)[1]] == [True] * 3


@pytest.mark.parametrize("command", ["score", "predict"])
def test_bad_paths_are_one_line_errors(model, data, tmp_path, command):
    def fails(*args):
        result = run_cli(command, model, *args)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        return result.stderr

    assert "no such file or folder" in fails(tmp_path / "missing", "--out", tmp_path / "a.csv")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    assert "no images in folder" in fails(empty, "--out", tmp_path / "b.csv")
    assert ".csv or .jsonl" in fails(data, "--out", tmp_path / "c.txt")
    assert "does not exist" in fails(data, "--out", tmp_path / "nowhere" / "d.csv")
    assert not list(tmp_path.glob("*.csv"))


def test_an_existing_out_file_is_replaced_only_with_force(model, data, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    out = results / "predictions.csv"
    out.write_text("hours of earlier work\n")
    refused = run_cli("score", model, data / "green", "--out", out)
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert out.read_text() == "hours of earlier work\n"
    replaced = run_cli("score", model, data / "green", "--out", out, "--force")
    assert replaced.returncode == 0, replaced.stderr
    assert len(read_csv(out)[1]) == 10
    assert [p.name for p in results.iterdir()] == ["predictions.csv"]  # no temporary left behind


def test_predict_json_and_out_are_alternatives(model, data, tmp_path):
    result = run_cli("predict", model, data, "--json", "--out", tmp_path / "x.csv")
    assert result.returncode == 2 and "choose one" in result.stderr


def test_the_stream_holds_a_bounded_number_of_decoded_batches(model, data):
    """Taking one row decodes at most the batches ahead, and closing the stream stops the rest."""
    paths = list_images([data]) * 10  # 300 images

    class Counting(OnnxClassifier):
        loads = 0

        def _load(self, path):
            Counting.loads += 1
            return super()._load(path)

    stream = Counting(model).stream(paths, batch_size=4, workers=2)
    next(stream)
    stream.close()
    assert Counting.loads <= 4 * (classifier_module.DECODE_AHEAD + 1)


def test_progress_off_a_terminal_is_a_plain_line_at_most_every_10_seconds():
    from rich.console import Console

    from orchestrator.cli.score import ScoreProgress

    now = [0.0]
    buffer = io.StringIO()
    console = Console(file=buffer, width=40)  # not a terminal; narrower than a line
    with ScoreProgress(1000, console=console, clock=lambda: now[0]) as progress:
        for done in range(1, 1001):
            now[0] = done / 10  # 10 images/s for 100 s
            progress.update(done)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 9  # at 10, 20, ... 90 s; the end is the command's summary line
    assert lines[0] == "score: 100/1000 images (10%)  10.0/s  1m30s left"
