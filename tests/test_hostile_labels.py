"""Labels are whatever a dataset's folder names hold: the CLI shows them, never obeys them.

A real run (the CLI, local backend) on classes named after what terminals and matplotlib act on:
an escape sequence that retitles a terminal, rich markup, and TeX math that matplotlib parsed (and
failed on, so `orchestrate report` crashed). Every command that shows labels is run on it.
"""
import json
import shutil
from pathlib import Path

import pytest

from imagegen import make_dataset

TITLE = "esc\x1b]0;owned\x07"  # OSC 0: sets the terminal's title
CLASSES = (TITLE, "[bold]x", "$\\x$", "a$^$b")
FAST = ["--backend", "local", "--arch", "resnet18", "--weights", "none", "--image-size", "32", "--mode", "linear",
        "--epochs", "2", "--batch-size", "16", "--workers", "0"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    from conftest import run_cli

    home = tmp_path_factory.mktemp("hostile")
    env = {"XDG_STATE_HOME": str(home / "state"), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache")}
    data = make_dataset(home / "data", classes=CLASSES, per_class=8)
    result = run_cli("train", data, *FAST, "--runs-dir", home / "runs", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {"env": env, "data": data, "train": result, "run_dir": Path(json.loads(result.stdout)["run_dir"])}


def shown_safely(text):
    """No control character reaches the terminal; the escape sequence is shown as text instead."""
    assert "\x1b" not in text and "\x07" not in text, repr(text)
    return text


def test_training_shows_the_classes_without_their_control_characters(hostile_run):
    shown_safely(hostile_run["train"].stderr)
    assert "esc\\x1b]0;owned\\x07" in hostile_run["train"].stderr


def test_predict_and_evaluate_print_labels_as_text(hostile_run, cli):
    image = next((hostile_run["data"] / TITLE).glob("*.png"))
    predicted = cli("predict", hostile_run["run_dir"] / "outputs" / "model.onnx", image, "--top-k", "4",
                    env=hostile_run["env"])
    assert predicted.returncode == 0, predicted.stderr
    assert "esc\\x1b]0;owned\\x07" in shown_safely(predicted.stdout)
    evaluated = cli("evaluate", hostile_run["run_dir"] / "outputs" / "model.onnx", hostile_run["data"],
                    env=hostile_run["env"])
    assert evaluated.returncode == 0, evaluated.stderr
    assert "[bold]x" in shown_safely(evaluated.stdout)  # rich markup printed, not applied
    # --json keeps the labels exactly (JSON escapes control characters itself)
    as_json = cli("predict", hostile_run["run_dir"] / "outputs" / "model.onnx", image, "--json",
                  env=hostile_run["env"])
    assert json.loads(shown_safely(as_json.stdout))[0]["label"] in CLASSES


def test_an_error_naming_a_hostile_path_is_one_printable_line(hostile_run, cli, tmp_path):
    missing = tmp_path / f"gone{TITLE}"
    result = cli("predict", hostile_run["run_dir"] / "outputs" / "model.onnx", missing, env=hostile_run["env"])
    assert result.returncode == 2
    assert shown_safely(result.stderr).count("\n") == 1 and "gone" in result.stderr, result.stderr


def test_the_report_draws_labels_that_look_like_tex(hostile_run, cli):
    result = cli("report", hostile_run["run_dir"], env=hostile_run["env"])
    assert result.returncode == 0, result.stderr
    page = (hostile_run["run_dir"] / "report.html").read_text()
    assert "$\\x$" in page and "a$^$b" in page and "&lt;" not in "".join(CLASSES)


def test_data_pack_warnings_show_labels_as_text(hostile_run, cli, tmp_path):
    """The packer warns with label names: an empty label folder, an image filed under two labels."""
    data = tmp_path / "data"
    shutil.copytree(hostile_run["data"], data)
    (data / f"empty{TITLE}").mkdir()
    twin = next((data / TITLE).glob("*.png"))
    shutil.copy(twin, data / "[bold]x" / twin.name)
    result = cli("data", "pack", data, "--out", tmp_path / "packed", env=hostile_run["env"])
    assert result.returncode == 0, result.stderr
    assert "emptyesc\\x1b]0;owned\\x07" in shown_safely(result.stderr), result.stderr
