"""The Azure job lifecycle through the REAL MLClient (tests/azure_transport.ManagementPlane answers
in the documented shapes): submit is get-then-create, the timeout reaches limits.timeout, a
failure says the service's error and where the logs are, a long Queued says why from the compute
GET, NotResponding ends the follow with a line, an interrupted submit leaves a findable run, a
Failed cluster is reported with its errors. Plus the tailer across a restarted attempt (real byte
streams) and a download that resumes file by file (Azurite).
"""
import json

import pytest
from azure_transport import (SUB, TOKEN, ManagementPlane, StaticToken, aml_compute, compute_error, notices,
                             run_error, set_job_status)

from orchestrator.backends.azure import AzureBackend
from orchestrator.backends.azure.catalogue import resolve
from orchestrator.backends.azure.job import build_job, plan_from_spec
from orchestrator.backends.azure.provision import ensure_compute
from orchestrator.backends.azure.seam import AzureSeam, terminal_statuses
from orchestrator.backends.azure.settings import Settings
from orchestrator.backends.azure.tailer import tail
from orchestrator.backends.base import FAILED, QUEUED, RUNNING, Backend, JobSpec, RunRef
from orchestrator.errors import UsageError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow

WS_SETTINGS = Settings(subscription_id=SUB, resource_group="rg", workspace_name="ws")
FAILURE = "Execution failed. User process 'python' exited with status code 1."


@pytest.fixture
def plane():
    return ManagementPlane()


def real_seam(plane):
    return lambda settings: AzureSeam(settings, credential=StaticToken(), transport=plane)


def remote_job(plane, name, timeout=3600):
    """A command job whose code and environment are ARM ids (nothing to upload)."""
    import azure.ai.ml as sdk

    ws = plane._workspace_path
    return sdk.command(name=name, command="python train.py", code=f"{ws}/codes/c/versions/1",
                       environment=f"{ws}/environments/e/versions/1", compute="gpu-t4", timeout=timeout)


def job_requests(plane, name):
    return [(m, p.rsplit("/", 1)[-1]) for m, p in plane.requests if p.endswith(f"/jobs/{name}")]


def run_dir_for(tmp_path, plane, job, compute="gpu-t4", studio=True):
    run_dir = tmp_path / job
    run_dir.mkdir(exist_ok=True)
    (run_dir / "azure.json").write_text(json.dumps({
        "job": job, "compute": compute, "workspace": WS_SETTINGS.public(),
        "studio_url": f"https://ml.azure.com/runs/{job}?wsid=x" if studio else None,
        "datastore": {"name": "workspaceblobstore", "account": "a", "container": "c", "endpoint": "core.windows.net"}}))
    return RunRef(job, "azure", run_dir, job)


# submit ----------------------------------------------------------------------------------------
def test_submit_is_get_then_create_and_a_second_submit_creates_nothing(plane):
    seam = real_seam(plane)(WS_SETTINGS)
    first = seam.submit(remote_job(plane, "run-1"))
    assert first["created"] and first["name"] == "run-1" and "ml.azure.com/runs/run-1" in first["studio_url"]
    assert job_requests(plane, "run-1") == [("GET", "run-1"), ("PUT", "run-1")]  # 404 first, then create
    assert plane.job_puts[0][1]["properties"]["limits"] == {"timeout": "PT1H", "jobLimitsType": "Command"}
    plane.requests.clear()
    again = seam.submit(remote_job(plane, "run-1"))
    assert not again["created"] and again["name"] == "run-1"
    assert job_requests(plane, "run-1") == [("GET", "run-1")]
    assert len(plane.job_puts) == 1
    assert seam.job_status("run-1") == "NotStarted"  # the service's spelling, not JobStatus.NOT_STARTED


def test_max_hours_is_the_jobs_timeout(tmp_path):
    spec = JobSpec(run_id="r-1", data=tmp_path, run_dir=tmp_path / "r", train_args=["--weights", "none"],
                   backend_options={"compute": "gpu-t4", "max_hours": 5})
    rest = build_job(plan_from_spec(spec))._to_job()._to_rest_object().as_dict()
    assert rest["properties"]["limits"]["timeout"] == "PT5H"
    spec.backend_options.pop("max_hours")
    rest = build_job(plan_from_spec(spec))._to_job()._to_rest_object().as_dict()
    assert rest["properties"]["limits"]["timeout"] == "P1D"  # 24 h by default
    spec.backend_options["max_hours"] = 0
    with pytest.raises(UsageError, match="--max-hours"):
        plan_from_spec(spec)


def test_the_azure_environment_builds_from_the_mcr_dockerfile(tmp_path):
    from orchestrator.paths import docker_context_dir

    spec = JobSpec(run_id="r-1", data=tmp_path, run_dir=tmp_path / "r", train_args=["--weights", "none"],
                   backend_options={})
    env = build_job(plan_from_spec(spec)).environment
    assert env.build.dockerfile_path == "azureml.Dockerfile"
    dockerfile = (docker_context_dir() / "azureml.Dockerfile").read_text()
    base = next(line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM "))
    assert base.startswith("mcr.microsoft.com/azureml/") and ":latest" not in base and ":" in base
    assert "azureml-requirements.txt" in dockerfile and "requirements.txt" in dockerfile
    # a rebuilt curated base that lost a package fails the image build, not the job
    assert 'RUN python -c "import torch, torchvision, onnx, onnxruntime, mlflow"' in dockerfile.splitlines()
    shared = (docker_context_dir() / "requirements.txt").read_text().lower()
    assert "mlflow" not in shared  # the offline Debian base has no pip and no mlflow
    assert "azureml-mlflow" in (docker_context_dir() / "azureml-requirements.txt").read_text()


class Interrupted(Backend):
    name = "azure"

    def prepare(self, spec):
        pass

    def planned_remote_id(self, spec):
        return spec.run_id

    def submit(self, spec):
        raise KeyboardInterrupt  # Ctrl-C during the long create_or_update

    log_lines = status = cancel = download = lambda *a, **k: None


def test_an_interrupted_submit_leaves_a_row_with_the_job_name(tmp_path, plane):
    from orchestrator import runner
    from orchestrator.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.db")
    spec = JobSpec(run_id="run-9", data=tmp_path, run_dir=tmp_path / "run-9", train_args=[], backend_options={})
    with pytest.raises(KeyboardInterrupt):
        runner.start(Interrupted(), ledger, spec, "run")
    row = ledger.get("run-9")
    assert (row.remote_id, row.status) == ("run-9", QUEUED)  # status asks the service next
    # the service never got the job: status says failed (and why) instead of an Azure error
    said = []
    backend = AzureBackend(seam_factory=real_seam(plane), on_event=notices(said))
    assert backend.status(run_dir_for(tmp_path, plane, "run-9")) == FAILED
    assert said == ["Azure ML job run-9 does not exist: its submit did not complete"]


def test_submit_writes_the_azure_record_before_the_create(tmp_path, plane, monkeypatch):
    seen = {}
    spec = JobSpec(run_id="run-2", data=tmp_path, run_dir=tmp_path / "run-2", train_args=["--weights", "none"],
                   backend_options={"subscription_id": SUB, "resource_group": "rg", "workspace_name": "ws"})

    class Seam(AzureSeam):
        def default_datastore(self):
            return {"name": "workspaceblobstore", "account": "a", "container": "c", "endpoint": "core.windows.net"}

        def submit(self, job):
            seen["state"] = json.loads((spec.run_dir / "azure.json").read_text())
            raise KeyboardInterrupt

    backend = AzureBackend(seam_factory=lambda s: Seam(s, credential=StaticToken(), transport=plane))
    assert backend.planned_remote_id(spec) == "run-2"
    with pytest.raises(KeyboardInterrupt):
        backend.submit(spec)
    assert seen["state"]["job"] == "run-2" and seen["state"]["workspace"]["workspace_name"] == "ws"
    assert seen["state"]["compute"] == "gpu-t4"


# following -------------------------------------------------------------------------------------
def test_a_failed_job_says_the_service_error_and_where_the_logs_are(tmp_path, plane):
    real_seam(plane)(WS_SETTINGS).submit(remote_job(plane, "run-3"))
    set_job_status(plane, "run-3", "Failed", run_error("UserError", FAILURE))
    said = []
    backend = AzureBackend(seam_factory=real_seam(plane), sleep=lambda s: None, on_event=notices(said))
    run = run_dir_for(tmp_path, plane, "run-3")
    assert list(backend.log_lines(run)) == []
    assert said == ["Azure ML job: Failed", f"Azure ML error: UserError: {FAILURE}",
                    "full logs: https://ml.azure.com/runs/run-3?wsid=x (Outputs + logs)"]
    assert backend.status(run) == FAILED
    assert not any(TOKEN in line for line in said)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def follow_while_waiting(tmp_path, plane, run_id, before_following=lambda: None):
    """Follow `run_id`, which waits in its status, for six polls 25 s apart, then cancel it: what the
    backend said."""
    clock, polls = Clock(), []

    def sleep(seconds):
        clock.now += 25
        polls.append(seconds)
        if len(polls) == 6:
            set_job_status(plane, run_id, "Canceled")

    said = []
    backend = AzureBackend(seam_factory=real_seam(plane), sleep=sleep, on_event=notices(said), clock=clock)
    before_following()
    assert list(backend.log_lines(run_dir_for(tmp_path, plane, run_id))) == []
    return said


def test_a_long_queue_says_why_from_the_compute_get(tmp_path, plane, monkeypatch):
    real_seam(plane)(WS_SETTINGS).submit(remote_job(plane, "run-4"))
    set_job_status(plane, "run-4", "Queued")
    plane.computes["gpu-t4"] = aml_compute("gpu-t4", allocation="Resizing", current=0, target=1, preparing=1)
    said = follow_while_waiting(tmp_path, plane, "run-4")
    waits = [line for line in said if " s: " in line]
    assert waits == ["Azure ML job: Queued for 75 s: queued on the cluster, waiting for its nodes; compute "
                     "gpu-t4: Resizing allocation, 0 of 1 target node(s) (1 preparing); nodes are being "
                     "allocated (this can take minutes; low-priority may wait longer)"]
    assert said[0] == "Azure ML job: Queued" and said[-1] == "Azure ML job: Canceled"
    # provisioning errors of the cluster are named
    plane.computes["gpu-t4"] = aml_compute("gpu-t4", allocation="Steady", target=0,
                                           errors=[compute_error("QuotaExceeded", "Quota exceeded for NCASv3_T4")])
    line = AzureBackend._why_waiting(real_seam(plane)(WS_SETTINGS), "gpu-t4")
    assert line.endswith("errors: QuotaExceeded: Quota exceeded for NCASv3_T4")


def test_a_long_preparing_is_the_image_build_not_the_cluster_nor_quota(tmp_path, plane):
    """JobStatus Preparing: "The run environment is being prepared." (the service's enum, in
    azure-ai-ml 1.35.2 _restclient/arm_ml_service/models/_enums.py); only Queued waits for nodes.
    A cluster at 0 target nodes, as it is while the image builds, must not be blamed on quota."""
    real_seam(plane)(WS_SETTINGS).submit(remote_job(plane, "run-7"))
    set_job_status(plane, "run-7", "Preparing")
    plane.computes["gpu-t4"] = aml_compute("gpu-t4", allocation="Steady", current=0, target=0)
    said = follow_while_waiting(tmp_path, plane, "run-7", before_following=plane.requests.clear)
    waits = [line for line in said if " s: " in line]
    assert waits == ["Azure ML job: Preparing for 75 s: the run environment is being prepared (its image is "
                     "built and set up)"]
    assert not any("quota" in line or "compute gpu-t4" in line for line in said)
    assert not [p for m, p in plane.requests if "/computes/" in p]  # the cluster was not even asked


def test_not_responding_ends_the_follow_with_a_line_but_not_the_run(tmp_path, plane):
    assert {"NotResponding", "Paused", "Completed", "Failed", "Canceled"} <= terminal_statuses()
    real_seam(plane)(WS_SETTINGS).submit(remote_job(plane, "run-5"))
    set_job_status(plane, "run-5", "NotResponding")
    said = []
    backend = AzureBackend(seam_factory=real_seam(plane), sleep=lambda s: pytest.fail("must not wait"),
                           on_event=notices(said))
    run = run_dir_for(tmp_path, plane, "run-5")
    assert list(backend.log_lines(run)) == []
    assert said[0].startswith("Azure ML job: NotResponding (the service has not heard")
    assert "following stops here" in said[1] and "orchestrate status run-5" in said[1]
    assert backend.status(run) == RUNNING  # not ended for the ledger: it may recover


def test_cancel_through_the_real_client(tmp_path, plane):
    real_seam(plane)(WS_SETTINGS).submit(remote_job(plane, "run-6"))
    backend = AzureBackend(seam_factory=real_seam(plane))
    run = run_dir_for(tmp_path, plane, "run-6")
    backend.cancel(run)
    assert ("POST", f"{plane._workspace_path}/jobs/run-6/cancel") in plane.requests
    assert backend.status(run) == RUNNING  # CancelRequested


# provisioning ----------------------------------------------------------------------------------
def test_a_failed_cluster_is_reported_with_its_errors(plane):
    name = resolve("gpu-t4").cluster
    plane.computes[name] = aml_compute(name, size="STANDARD_NC4AS_T4_V3", state="Failed", errors=[
        compute_error("BadRequest", "The subnet is full")])
    with pytest.raises(UsageError) as exc:
        ensure_compute(real_seam(plane)(WS_SETTINGS), resolve("gpu-t4"))
    assert str(exc.value).startswith(f"compute {name} is in provisioning state Failed: BadRequest: The subnet is full")
    assert not any(m == "PUT" for m, _ in plane.requests)


def test_workspace_delete_permanently_skips_the_soft_delete():
    from unittest import mock

    seam = AzureSeam(WS_SETTINGS, credential=StaticToken())
    seam.__dict__["ml"] = mock.MagicMock()
    seam.delete_workspace(False, permanently=True)
    seam.ml.workspaces.begin_delete.assert_called_once_with(
        "ws", delete_dependent_resources=False, permanently_delete=True)


# the tailer across attempts (real byte streams) -------------------------------------------------
class AttemptLog:
    """A seam whose std_log.txt is a real byte string, replaced by a fresh one between polls."""

    def __init__(self, steps):
        self.steps, self.log, self.status = list(steps), b"", "Running"

    def job_status(self, name):
        if self.steps:
            self.status, self.log = self.steps.pop(0)
        return self.status

    def log_urls(self, name):
        return {"user_logs/std_log.txt": "url"} if self.log else {}

    def read_from(self, url, offset):
        return self.log[offset:]


def texts(lines):
    return [line.text for line in lines]


def test_a_shrunken_log_of_a_new_attempt_is_read_from_its_start():
    first = "epoch 1 loss 0.9\nepoch 2 loss 0.7\nepoch 3 lo".encode()
    seam = AttemptLog([("Running", first), ("Running", b"resumed from ckpt\n"),
                       ("Completed", b"resumed from ckpt\nepoch 3 loss 0.6\n")])
    restarts = []
    lines = list(tail(seam, "j", sleep=lambda s: None, on_restart=lambda: restarts.append(1)))
    assert texts(lines) == ["epoch 1 loss 0.9", "epoch 2 loss 0.7", "epoch 3 lo",
                            "resumed from ckpt", "epoch 3 loss 0.6"]
    assert restarts == [1]
    cursors = [line.cursor for line in lines]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)


def test_a_longer_new_attempt_log_is_told_apart_by_its_bytes():
    old = "attempt one: start\nline a\n".encode()
    new = "attempt two: start, a longer first line\nline b\nline c\n".encode()
    assert len(new) > len(old)
    seam = AttemptLog([("Running", old), ("Completed", new)])
    assert texts(tail(seam, "j", sleep=lambda s: None)) == [
        "attempt one: start", "line a", "attempt two: start, a longer first line", "line b", "line c"]


def test_a_growing_log_is_not_taken_for_a_restart():
    seam = AttemptLog([("Running", b"a\nb"), ("Running", b"a\nbc\nd"), ("Completed", b"a\nbc\nd\ne\n")])
    lines = list(tail(seam, "j", sleep=lambda s: None, on_restart=lambda: pytest.fail("no restart")))
    assert texts(lines) == ["a", "bc", "d", "e"]
    assert lines[-1].cursor == len(b"a\nbc\nd\ne\n")


# downloads resume file by file (Azurite) --------------------------------------------------------
def test_an_interrupted_download_completes(tmp_path, azurite):  # noqa: F811
    from azure.storage.blob import ContainerClient

    from orchestrator.storage.blob import download_prefix

    client = ContainerClient.from_connection_string(azurite.connection_string, "resume-test")
    if not client.exists():
        client.create_container()
    files = {"model.onnx": b"o" * 5000, "labels.json": b'["a", "b"]', "metrics.json": b"{}"}
    for name, body in files.items():
        client.upload_blob(f"out/{name}", body, overwrite=True)
    dest = tmp_path / "outputs"
    dest.mkdir()
    (dest / "model.onnx").write_bytes(b"o" * 5000)      # complete: kept
    (dest / "labels.json").write_bytes(b'["a"')          # cut short: fetched again
    fetched = []
    real = client.download_blob
    client.download_blob = lambda name, *a, **k: fetched.append(name) or real(name, *a, **k)
    download_prefix(client, "out", dest)
    assert sorted(fetched) == ["out/labels.json", "out/metrics.json"]
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == files
