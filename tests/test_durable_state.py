"""Durable state: every file of state is replaced by the one write_atomically, which fsyncs the new
file before its rename and the folder after it (a power cut cannot be simulated here: os.fsync is
watched instead, the real call made), and the state folder and ledger are the owner's alone."""
import json
import os
import stat
import time

import pytest

from orchestrator import runner
from orchestrator.backends.azure import settings
from orchestrator.backends.base import JobSpec
from orchestrator.backends.local import LocalBackend
from orchestrator.ledger import Ledger
from orchestrator.paths import state_dir
from orchestrator.run_folder import RunFolder
from remote_scripts.atomic import write_atomically
from test_cloud_assets import WS, invoke, plane  # noqa: F401  (plane: the fixture of the Azure plane)


@pytest.fixture
def synced(monkeypatch):
    """What os.fsync is called on, as (event, path) in order, with os.replace's renames among them."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kwargs):
        events.append(("replace", os.fspath(dst)))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def durably_written(events, path):
    """Whether `path` was written as write_atomically does: its temporary file synced, renamed over
    it, then its folder synced."""
    path = str(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    want = [("fsync", tmp), ("replace", path), ("fsync", folder)]
    return any(events[i:i + 3] == want for i in range(len(events)))


@pytest.mark.parametrize("content", [b"bytes", "text \udcff", lambda tmp: open(tmp, "wb").close()])
def test_write_atomically_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, synced, content):
    write_atomically(tmp_path / "state.json", content)
    assert synced == [("fsync", f"{tmp_path}/.state.json.{os.getpid()}.tmp"),
                      ("replace", f"{tmp_path}/state.json"), ("fsync", str(tmp_path))]
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path, synced):
    (tmp_path / "state.json").write_text("old")

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomically(tmp_path / "state.json", fail)
    assert os.listdir(tmp_path) == ["state.json"] and (tmp_path / "state.json").read_text() == "old"
    assert synced == []


def test_the_profile_file_is_written_durably(synced):
    path = settings.save_profile("lab", {"subscription_id": "sub", "resource_group": "rg"})
    assert durably_written(synced, path)
    assert json.loads(path.read_text())["profiles"]["lab"]["resource_group"] == "rg"


def test_the_azure_run_state_is_written_durably(tmp_path, synced):
    RunFolder(tmp_path).write_backend_state({"job": "j-1"})
    assert durably_written(synced, RunFolder(tmp_path).backend_state_path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow
def test_attach_writes_its_state_and_spec_durably(plane, tmp_path, synced):  # noqa: F811
    code, _, stderr = invoke("attach", "studio-job-1", "--runs-dir", tmp_path / "runs", *WS)
    assert code == 0, stderr
    run_dir = tmp_path / "runs" / "studio-job-1"
    assert durably_written(synced, RunFolder(run_dir).backend_state_path)
    assert durably_written(synced, run_dir / "spec.json")


def test_a_started_run_has_its_spec_written_durably(tmp_path, synced):
    (tmp_path / "data").mkdir()  # no images: the job ends at once with exit code 2
    spec = JobSpec(run_id="r-1", data=tmp_path / "data", run_dir=tmp_path / "runs" / "r-1",
                   train_args=["--weights", "none"])
    runner.start(LocalBackend(), Ledger(), spec, "r")
    deadline = time.monotonic() + 120  # leave no job running behind the test
    while not RunFolder(spec.run_dir).exit_code_path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert RunFolder(spec.run_dir).exit_code_path.read_text().strip() == "2"
    assert durably_written(synced, spec.run_dir / "spec.json")
    assert json.loads((spec.run_dir / "spec.json").read_text())["run_id"] == "r-1"


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_state_folder_and_the_ledger_are_the_owners_alone():
    ledger = Ledger()
    assert ledger.path.parent == state_dir()
    assert mode(state_dir()) == 0o700 and mode(ledger.path) == 0o600
    ledger.list()  # still a usable ledger
    assert mode(ledger.path) == 0o600


def test_an_earlier_versions_open_state_folder_and_ledger_are_closed():
    state_dir().mkdir(parents=True, mode=0o755)
    os.chmod(state_dir(), 0o755)
    (state_dir() / "ledger.db").touch(mode=0o644)
    os.chmod(state_dir() / "ledger.db", 0o644)
    Ledger()
    assert mode(state_dir()) == 0o700 and mode(state_dir() / "ledger.db") == 0o600


def test_the_hash_cache_makes_the_state_folder_private_too():
    from orchestrator.dataset.manifest import HashCache

    HashCache.default()
    assert mode(state_dir()) == 0o700
