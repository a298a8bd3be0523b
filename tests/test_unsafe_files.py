"""Files the job loads that may come from elsewhere: a --weights PATH file, the ImageNet weights in
the torch hub cache, the checkpoint folder. Each is a pickle, and a pickle can run code: these
tests plant one whose unpickling would create a marker folder, and check that the job refuses it
in one line without creating the marker (torch.load(weights_only=True)), and that what the job
writes itself loads that way, so that no unsafe fallback is needed on torch >= 2."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imagegen import make_dataset
from orchestrator.events import parse_line
from remote_scripts import models, train
from remote_scripts.models import WeightsError, load_weights

SCRIPT = Path(train.__file__)
JOB = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "8", "--mode", "linear",
       "--epochs", "2", "--val-fraction", "0.2", "--test-fraction", "0.25"]


class Hostile:
    """Unpickled, it creates the folder `marker` (os.mkdir is what pickle calls to rebuild it)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def plant(path, marker):
    """A torch.save file at `path` that looks like a state_dict and holds a Hostile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"conv1.weight": torch.zeros(1), "fc.bias": Hostile(marker)}, path)
    return path


def run_job(*args):
    result = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                            timeout=600)
    result.events = [e for e in map(parse_line, result.stdout.splitlines()) if e]
    return result


def test_a_hostile_weights_file_is_refused_unread(tmp_path):
    path = plant(tmp_path / "w.pt", tmp_path / "marker")
    with pytest.raises(WeightsError) as exc:
        load_weights("resnet18", str(path))
    message = str(exc.value)
    assert message.startswith(f"--weights {path}: not a PyTorch weights file of plain tensors (")
    assert message.endswith("); it was not loaded") and "\n" not in message and len(message) < 400
    assert not (tmp_path / "marker").exists()


def test_a_hostile_file_in_the_torch_hub_cache_is_refused_unread(tmp_path, monkeypatch):
    """The client names no file by its hash alone: what sits in the cache under the published name
    (put there by hand, by another user, by an old download) is loaded without running code."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = plant(Path(models.hub_cache_path("resnet18")), tmp_path / "marker")
    assert cached.is_relative_to(tmp_path)
    with pytest.raises(WeightsError, match=f"^{cached}: not a PyTorch weights file of plain tensors"):
        load_weights("resnet18", "imagenet")
    assert not (tmp_path / "marker").exists()


def test_the_published_weights_load_from_the_cache_as_plain_tensors(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = Path(models.hub_cache_path("resnet18"))
    cached.parent.mkdir(parents=True)
    torch.manual_seed(3)
    state = models.build_model("resnet18", 1000).backbone.state_dict()
    torch.save(state, cached)
    assert torch.equal(load_weights("resnet18", "imagenet")["conv1.weight"], state["conv1.weight"])


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A linear run stopped after epoch 1 of 2 (--time-budget 0): its checkpoint folder holds
    last.pt, best.pt and features.pt."""
    root = tmp_path_factory.mktemp("checkpointed")
    data = make_dataset(root / "data", per_class=8)
    result = run_job("--data", data, "--output", root / "out", "--checkpoint-dir", root / "ckpt", *JOB,
                     "--time-budget", "0")
    assert result.returncode == 0, result.stderr
    return root


def test_what_the_job_checkpoints_loads_as_plain_tensors_and_values(checkpointed):
    names = sorted(p.name for p in (checkpointed / "ckpt").iterdir())
    assert names == ["best.pt", "features.pt", "last.pt"]
    for name in names:
        torch.load(checkpointed / "ckpt" / name, map_location="cpu", weights_only=True)  # no UnpicklingError
    assert models.safe_loader_reads_floats()  # so torch_load(own=True) has no unsafe fallback here


@pytest.mark.parametrize("name", ["last.pt", "best.pt", "features.pt"])
def test_a_hostile_file_in_the_checkpoint_folder_is_refused_unread(checkpointed, tmp_path, name):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for own in (checkpointed / "ckpt").iterdir():
        (folder / own.name).write_bytes(own.read_bytes())
    plant(folder / name, tmp_path / "marker")
    result = run_job("--data", checkpointed / "data", "--output", tmp_path / "out", "--checkpoint-dir", folder, *JOB)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot read checkpoint {folder / name} (UnsafeFile: ")
    assert lines[0].endswith("; remove it to start over")
    assert result.events[-1]["status"] == "failed" and result.events[-1]["exit_code"] == 2
    assert not (tmp_path / "marker").exists()

