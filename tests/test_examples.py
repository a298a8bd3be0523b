"""The scripts of examples/ run as a user runs them: `python examples/NAME.py ...` in a real
process, on a real dataset, with the local backend (and an Azure ML dry run, which needs no
account). They use the SDK only, never the CLI, so they fail when the Python API breaks."""
import subprocess
import sys
from pathlib import Path

import pytest

from imagegen import make_dataset

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name, *args, cwd):
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], cwd=cwd, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "shapes", per_class=20)


def test_train_and_predict(data, tmp_path):
    out = run_example("train_and_predict.py", data, cwd=tmp_path)
    assert "as expected: data folder not found" in out
    assert "completed: test accuracy" in out and "the same image as an array" in out
    assert (tmp_path / "runs").is_dir() and list((tmp_path / "runs").glob("example-*/report.html"))


def test_resume(data, tmp_path):
    out = run_example("resume.py", data, cwd=tmp_path)
    assert "canceled" in out and "completed after 2 attempts" in out


def test_search(data, tmp_path):
    out = run_example("search.py", data, cwd=tmp_path)
    assert "best of 3 trials" in out and "compared 3 trials side by side" in out


def test_azure_dry_run(data, tmp_path):
    out = run_example("azure_dry_run.py", data, tmp_path / "job.yml", cwd=tmp_path)
    assert (tmp_path / "job.yml").is_file() and "Standard_NC12" in out
    assert "as expected: nodes=0: --nodes must be at least 1" in out
    assert not (tmp_path / "runs").exists()  # a dry run creates nothing
