"""Backends report, they never print: what they do on the client's side (a dataset upload, a
missing job) reaches the caller as event dicts through `on_event`, which get_backend passes on
like every other constructor argument; without one, nothing is shown at all. The Azure control
plane is the documented-shape transport or the recording seam of the Azure tests; the blobs go to
Azurite."""
import pytest
from test_azure_backend import container, workspace_env, world  # noqa: F401  (their fixtures)
from test_azure_lifecycle import plane, real_seam, run_dir_for  # noqa: F401

from imagegen import make_dataset
from orchestrator.backends import get_backend
from orchestrator.backends.azure import AzureBackend
from orchestrator.backends.base import FAILED, JobSpec
from orchestrator.events import notice

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow


@pytest.mark.parametrize("name", ["local", "docker", "azure"])
def test_get_backend_makes_every_backend_with_an_on_event(name):
    backend = get_backend(name, on_event=lambda event: None)
    assert backend.name == name


def test_a_missing_job_is_a_notice_event_through_get_backends_options(tmp_path, plane, capfd):  # noqa: F811
    events = []
    backend = get_backend("azure", seam_factory=real_seam(plane), on_event=events.append)
    assert backend.status(run_dir_for(tmp_path, plane, "run-9")) == FAILED
    assert events == [notice("Azure ML job run-9 does not exist: its submit did not complete")]
    assert capfd.readouterr() == ("", "")


def test_without_on_event_the_azure_backend_shows_nothing(tmp_path, plane, capfd):  # noqa: F811
    assert AzureBackend(seam_factory=real_seam(plane)).status(run_dir_for(tmp_path, plane, "run-9")) == FAILED
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("no_pack", [True, False], ids=["files", "shards"])
def test_the_dataset_upload_of_prepare_is_reported_as_events(tmp_path, world, container, workspace_env,  # noqa: F811
                                                             monkeypatch, capfd, no_pack):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=x;AccountKey=c2VjcmV0a2V5")
    data = make_dataset(tmp_path / "colors")
    spec = JobSpec(run_id="colors-1", data=data, run_dir=tmp_path / "runs" / "colors-1", train_args=["--epochs", "1"],
                   backend_options={"compute": "gpu-a100", "no_pack": no_pack})
    events = []
    AzureBackend(seam_factory=world.seam, on_event=events.append, approve=lambda question: True).prepare(spec)
    assert capfd.readouterr() == ("", "")
    assert any(event["type"] == "transfer" for event in events)
    lines = [event["message"] for event in events if event["type"] == "notice"]
    assert any(line.startswith("dataset: ") and "uploaded" in line for line in lines)
    assert any("gpu-a100" in line for line in lines)  # the cluster's creation, told before the upload

    AzureBackend(seam_factory=world.seam).prepare(spec)  # all there already, and nobody to tell
    assert capfd.readouterr() == ("", "")
