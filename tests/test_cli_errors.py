"""Bad input: one line on stderr, exit code 2, no traceback, nothing started."""
import pytest

from imagegen import make_dataset
from orchestrator.backends.local import LocalBackend
from orchestrator.errors import UsageError


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "data", per_class=6)


def test_missing_and_non_folder_data(cli, tmp_path):
    assert_one_line_error(cli("train", tmp_path / "nope", "--backend", "local"), "not found")
    (tmp_path / "file.txt").write_text("x")
    assert_one_line_error(cli("train", tmp_path / "file.txt", "--backend", "local"), "not a folder")


def test_no_images_and_a_single_class(cli, tmp_path):
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    (tmp_path / "empty" / "cats" / "notes.txt").write_text("x")
    assert_one_line_error(cli("train", tmp_path / "empty", "--backend", "local"), "no images")
    one = make_dataset(tmp_path / "one", classes=("red",), per_class=5)
    assert_one_line_error(cli("train", one, "--backend", "local"), "at least 2 classes")


def test_class_too_small_names_the_class_and_its_count(cli, tmp_path):
    data = make_dataset(tmp_path / "data", classes=("red", "green"), per_class=6)
    for extra in sorted((data / "green").rglob("*.*"))[2:]:
        extra.unlink()
    assert_one_line_error(cli("train", data, "--backend", "local"), "'green'", "has 2 usable image(s)")


@pytest.mark.parametrize("args, fragment", [
    (["--epochs", "0"], "--epochs"),
    (["--arch", "vgg11"], "--arch"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--val-fraction", "0.5", "--test-fraction", "0.5"], "sum to less than 1"),
    (["--val-fraction", "0.95"], "sum to less than 1"),  # with the default --test-fraction 0.1
    (["--backend", "cloud9"], "--backend"),
    (["--no-such-flag"], "--no-such-flag"),
])
def test_bad_option_values(cli, data, tmp_path, args, fragment):
    result = cli("train", data, "--runs-dir", tmp_path / "runs", *args)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "runs").exists()


def test_unknown_run_ids(cli):
    for command in (["logs", "nope"], ["status", "nope"], ["cancel", "nope"], ["runs", "show", "nope"],
                    ["predict", "nope", "x.png"], ["download", "nope"]):
        assert_one_line_error(cli(*command), "unknown run 'nope'")


def test_predict_with_a_file_that_is_not_a_model(cli, tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"garbage")
    assert_one_line_error(cli("predict", fake, "x.png"), "not a readable ONNX model")


def test_local_backend_without_torch_names_the_extra_and_docker(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(UsageError, match=r"orchestrator\[local\].*--backend docker"):
        LocalBackend().prepare(None)


def without_root_file_access(args):
    """Run as root but without the capabilities that let root read any file, when we are root."""
    import os
    import shutil

    if os.geteuid() != 0:
        return args
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is needed to drop root's file-access override")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *args]


def test_an_unreadable_class_folder_is_an_error_not_an_empty_class(tmp_path):
    import subprocess

    from conftest import ORCHESTRATE

    data = make_dataset(tmp_path / "data", per_class=6)
    (data / "blue").chmod(0)
    try:
        result = subprocess.run(without_root_file_access([str(ORCHESTRATE), "train", str(data), "--backend", "local"]),
                                capture_output=True, text=True)
    finally:
        (data / "blue").chmod(0o755)
    assert_one_line_error(result, "cannot read folder", "blue", "Permission denied")


def test_state_dir_and_ledger_problems_are_one_line_errors(cli, tmp_path):
    not_a_dir = tmp_path / "state-file"
    not_a_dir.write_text("x")
    assert_one_line_error(cli("runs", "list", env={"XDG_STATE_HOME": str(not_a_dir)}), "state folder")
    garbage = tmp_path / "garbage-state"
    (garbage / "orchestrate").mkdir(parents=True)
    (garbage / "orchestrate" / "ledger.db").write_bytes(b"this is not sqlite" * 100)
    assert_one_line_error(cli("runs", "list", env={"XDG_STATE_HOME": str(garbage)}), "ledger", "unusable")


def test_runs_dir_that_is_a_file(cli, data, tmp_path):
    runs = tmp_path / "runs"
    runs.write_text("my notes")
    assert_one_line_error(cli("train", data, "--backend", "local", "--runs-dir", runs), "--runs-dir", "is a file")
    assert runs.read_text() == "my notes"


def test_an_empty_run_id_matches_nothing(cli):
    assert_one_line_error(cli("cancel", ""), "a run id is needed")
