"""Label sources and the sample fraction through the real CLI and job: `--labels filename`, a
`--labels` table inside DATA, `--sample-fraction`, and the upload manifest that carries the table."""
import json

import numpy as np
import pytest

from imagegen import colour_of, picture
from orchestrator.dataset.manifest import build_manifest

FAST = ["--backend", "local", "--arch", "resnet18", "--weights", "none", "--image-size", "32",
        "--batch-size", "16", "--workers", "0", "--mode", "linear", "--epochs", "2"]
CLASSES = ("blue", "green", "red")


def flat_folder(root, per_class=12):
    """Every image in one folder, named after its class: red7.jpg, green7.jpg ..."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for name in CLASSES:
        for i in range(per_class):
            picture(colour_of(name), 32, rng).save(root / f"{name}{i}.jpg", "JPEG", quality=90)
    return root


def train(cli, tmp_path, data, *extra, cwd=None):
    result = cli("train", data, *FAST, "--runs-dir", tmp_path / "runs", "--json", *extra, cwd=cwd)
    return result, (json.loads(result.stdout) if result.returncode == 0 else None)


@pytest.mark.slow
def test_filename_labels_train_a_model_and_an_unlabeled_name_is_reported(cli, tmp_path):
    data = flat_folder(tmp_path / "photos")
    picture(colour_of("red"), 32, np.random.default_rng(1)).save(data / "2024-01-01.jpg", "JPEG")
    result, out = train(cli, tmp_path, data, "--labels", "filename")
    assert result.returncode == 0, result.stderr
    assert json.load(open(out["outputs"]["labels.json"])) == list(CLASSES)
    assert "1 file(s) or row(s) gave no usable label" in result.stderr
    log = open(tmp_path / "runs" / out["run_id"] / "logs" / "train.log").read()
    assert "no label: 2024-01-01.jpg: the file name does not begin with a letter" in log


@pytest.mark.slow
def test_a_label_table_inside_data_and_a_sample_fraction(cli, tmp_path):
    data = flat_folder(tmp_path / "photos", per_class=20)
    # The table says otherwise than the names: warm (red) and cool (green, blue) colours.
    rows = [f"{name}{i}.jpg\t{'warm' if name == 'red' else 'cool'}" for name in CLASSES for i in range(20)]
    (data / "meta").mkdir()
    (data / "meta" / "tags.tsv").write_text("image\tlabel\n" + "\n".join(rows) + "\n")
    result, out = train(cli, tmp_path, "photos", "--labels", "photos/meta/tags.tsv", "--sample-fraction", "0.5",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.load(open(out["outputs"]["labels.json"])) == ["cool", "warm"]
    run = tmp_path / "runs" / out["run_id"]
    spec = json.load(open(run / "spec.json"))
    assert spec["train_args"][spec["train_args"].index("--labels") + 1] == "meta/tags.tsv"  # as the job sees it
    log = open(run / "logs" / "train.log").read()
    assert "found 30 images in 2 classes" in log  # half of 40 cool and of 20 warm


def test_a_label_table_outside_data_is_refused_in_one_line(cli, tmp_path):
    data = flat_folder(tmp_path / "photos", per_class=3)
    (tmp_path / "tags.tsv").write_text("red0.jpg\twarm\n")
    result, _ = train(cli, tmp_path, data, "--labels", tmp_path / "tags.tsv")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "outside the data folder" in result.stderr


def test_the_upload_manifest_carries_the_label_table(tmp_path):
    data = flat_folder(tmp_path / "photos", per_class=3)
    (data / "tags.tsv").write_text("".join(f"{name}{i}.jpg\t{name}\n" for name in CLASSES for i in range(3)))
    manifest = build_manifest(data, labels="tags.tsv", cache=False)
    assert manifest.classes == list(CLASSES)
    assert [(e.path, e.label) for e in manifest.entries if not e.path.endswith(".jpg")] == [("tags.tsv", "")]
    assert len(manifest.entries) == 10
