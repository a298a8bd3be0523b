"""The Azure backend around the seam: provisioning, quota, upload, submit, log tailing, status,
cancel, download. Only the Azure ML control plane is a stand-in (RecordingSeam); the job entities,
the quota arithmetic, the tailer and the blob transfers (to Azurite) are real. Its sizes and usages
are the service's wire bodies (tests/azure_transport.py), read through the SDK's own entities and
the seam's translation; the quota rules themselves are tested through the real MLClient in
test_compute_plan.py.
"""
import json

import pytest
from azure_transport import DS3_V2, GPU_SIZES, family_usage, notices, regional_usage
from PIL import Image

from orchestrator.backends.azure import AzureBackend
from orchestrator.backends.azure.catalogue import resolve
from orchestrator.backends.azure.job import dataset_prefix
from orchestrator.backends.azure.provision import ensure_compute, ensure_workspace
from orchestrator.backends.azure.settings import Settings
from orchestrator.backends.azure.tailer import FINGERPRINT, map_status, rank0_log, tail
from orchestrator.backends.base import CANCELED, COMPLETED, FAILED, QUEUED, RUNNING, TERMINAL, JobSpec, RunRef
from orchestrator.errors import ServiceError, UsageError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow

LOG = "user_logs/std_log.txt"
A100_FAMILY = "standardNCADSA100v4Family"


class World:
    """What the stand-in Azure knows; tests set it up and read `calls` afterwards."""

    def __init__(self):
        self.calls = []
        self.resource_group = True
        self.workspace = {"name": "ws", "location": "eastus"}
        self.computes = {}
        self.sizes = [DS3_V2, *GPU_SIZES]  # vmSizes bodies
        self.usage = [regional_usage("Dedicated", 24, 200), regional_usage("LowPriority", 0, 100),
                      family_usage("NCADSA100v4", "Dedicated", 24, 96),
                      family_usage("NCASv3_T4", "Dedicated", 0, 0),
                      family_usage("NCASv3_T4", "LowPriority", 0, -1)]  # usages bodies
        self.datastore = {"name": "workspaceblobstore", "account": "devstoreaccount1",
                          "container": "azureml-blobstore-test", "endpoint": "core.windows.net"}
        self.container = None
        self.blob_requests = []  # (method, url) of every request the container's client sent to Azurite
        self.jobs = {}  # name -> {"status", "log": bytes, "job"}

    def seam(self, settings):
        return RecordingSeam(settings, self)


class RecordingSeam:
    """Some of orchestrator.backends.azure.seam.AzureSeam's methods, with the same names and
    parameters (test_the_recording_seam_is_in_step_with_the_real_one); records every call."""

    def __init__(self, settings, world):
        self.settings, self.world = settings, world

    def _call(self, name, *args):
        self.world.calls.append((name, *args))

    def resource_group_exists(self):
        self._call("resource_group_exists")
        return self.world.resource_group

    def create_resource_group(self, location):
        self._call("create_resource_group", location)
        self.world.resource_group = True

    def get_workspace(self):
        self._call("get_workspace")
        return self.world.workspace

    def create_workspace(self, workspace):
        self._call("create_workspace", workspace)
        self.world.workspace = {"name": workspace.name, "location": workspace.location or "eastus"}

    def delete_workspace(self, delete_dependent_resources, permanently=False):
        self._call("delete_workspace", delete_dependent_resources, permanently)
        self.world.workspace = None

    def get_compute(self, name):
        self._call("get_compute", name)
        return self.world.computes.get(name)

    def create_compute(self, compute):
        self._call("create_compute", compute)
        self.world.computes[compute.name] = {
            "name": compute.name, "size": compute.size, "min_instances": compute.min_instances,
            "max_instances": compute.max_instances, "tier": compute.tier,
            "idle_seconds": compute.idle_time_before_scale_down, "state": "Succeeded"}

    def delete_compute(self, name):
        self._call("delete_compute", name)
        del self.world.computes[name]

    def list_sizes(self, location):
        """The wire bodies through the SDK's VmSize and the seam's size_row, as the real seam."""
        from azure.ai.ml._restclient.arm_ml_service.models import VirtualMachineSize
        from azure.ai.ml.entities import VmSize

        from orchestrator.backends.azure.seam import size_row

        self._call("list_sizes", location)
        return [size_row(VmSize._from_rest_object(VirtualMachineSize(body))) for body in self.world.sizes]

    def list_usage(self, location):
        """The wire bodies through the SDK's Usage and the seam's usage_row, as the real seam."""
        from azure.ai.ml._restclient.arm_ml_service.models import Usage as RestUsage
        from azure.ai.ml.entities import Usage

        from orchestrator.backends.azure.seam import usage_row

        self._call("list_usage", location)
        return [usage_row(Usage._from_rest_object(RestUsage(body))) for body in self.world.usage]

    def default_datastore(self):
        self._call("default_datastore")
        return self.world.datastore

    def container_client(self, datastore):
        self._call("container_client", datastore["container"])
        return self.world.container

    def submit(self, job):
        self._call("submit", job)
        self.world.jobs[job.name] = {"status": "NotStarted", "log": b"", "job": job}
        return {"name": job.name, "studio_url": f"https://ml.azure.com/runs/{job.name}"}

    def job_status(self, name):
        self._call("job_status", name)
        return self.world.jobs[name]["status"]

    def log_urls(self, name):
        self._call("log_urls", name)
        job = self.world.jobs[name]
        return {LOG: f"https://sa.blob.core.windows.net/logs/{name}?sig=SECRET"} if job["log"] else {}

    def read_from(self, url, offset):
        self._call("read_from", offset)
        return self.world.jobs[url.split("/")[-1].split("?")[0]]["log"][offset:]

    def cancel(self, name):
        self._call("cancel", name)
        self.world.jobs[name]["status"] = "CancelRequested"


@pytest.fixture
def world():
    return World()


@pytest.fixture
def workspace_env(monkeypatch):
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "sub")
    monkeypatch.setenv("AZURE_RESOURCE_GROUP", "rg")
    monkeypatch.setenv("AZUREML_WORKSPACE_NAME", "ws")


def names(world):
    return [c[0] for c in world.calls]


def settings():
    return Settings(subscription_id="sub", resource_group="rg", workspace_name="ws")


# provisioning ---------------------------------------------------------------------------------
def test_workspace_create_makes_the_resource_group_first_and_is_idempotent(world):
    world.resource_group, world.workspace = False, None
    seam = world.seam(settings())
    with pytest.raises(UsageError, match="--location"):
        ensure_workspace(seam)
    lines = ensure_workspace(seam, "westeurope")
    assert lines[:2] == ["created resource group rg in westeurope", "created workspace ws"]
    assert ("create_resource_group", "westeurope") in world.calls
    ws = next(c[1] for c in world.calls if c[0] == "create_workspace")
    assert (ws.name, ws.location) == ("ws", "westeurope")
    assert lines[-1] == "studio: https://ml.azure.com/?wsid=/subscriptions/sub/resourcegroups/rg/workspaces/ws"
    world.calls.clear()
    lines = ensure_workspace(seam, "westeurope")
    assert lines[0] == "workspace ws already exists (westeurope)"
    assert "create_workspace" not in names(world) and "create_resource_group" not in names(world)


def test_compute_is_created_after_the_quota_check_and_only_once(world):
    seam = world.seam(settings())
    said = []
    ensure_compute(seam, resolve("gpu-nc12"),
                   on_event=lambda event: said.append(event["message"]), max_nodes=1, low_priority=True)
    assert said[0].startswith("notice: Standard_NC12")
    created = next(c[1] for c in world.calls if c[0] == "create_compute")
    assert (created.name, created.size, created.tier, created.min_instances, created.max_instances) == \
        ("nc16as-t4-v3", "Standard_NC16as_T4_v3", "low_priority", 0, 1)
    assert created.idle_time_before_scale_down == 600
    assert names(world).index("list_usage") < names(world).index("create_compute")
    world.calls.clear()
    said.clear()
    ensure_compute(seam, resolve("Standard_NC16as_T4_v3"),
                   on_event=lambda event: said.append(event["message"]))
    assert "already exists" in said[0]
    assert said[1] == ("warning: nc16as-t4-v3 has low-priority nodes, not dedicated; "
                       "delete it to change its tier")
    with pytest.raises(UsageError, match="scales to at most 1 node\\(s\\), 2 needed"):
        ensure_compute(seam, resolve("Standard_NC16as_T4_v3"),
                       on_event=lambda event: said.append(event["message"]), max_nodes=2)
    assert "create_compute" not in names(world)


def test_compute_create_stops_before_creating_when_quota_is_short(world):
    seam = world.seam(settings())
    said = []
    with pytest.raises(UsageError) as exc:
        ensure_compute(seam, resolve("gpu-a100x2"),
                       on_event=lambda event: said.append(event["message"]), max_nodes=2)
    message = str(exc.value)
    assert ("'Standard NCADSA100v4 Family Cluster Dedicated vCPUs' needs 96 vCPUs, 72 available "
            "(limit 96, in use 24)") in message
    assert "(or use --max-nodes 1)" in message and "in eastus" in message
    assert said[0] == "plan: compute gpu-a100x2 in eastus"  # the plan came first
    assert "create_compute" not in names(world)


def test_sdk_usage_and_size_objects_are_read_despite_the_camelcase_bug():
    from azure.ai.ml._restclient.arm_ml_service.models import Usage as RestUsage
    from azure.ai.ml._restclient.arm_ml_service.models import VirtualMachineSize
    from azure.ai.ml.entities import Usage, VmSize

    from orchestrator.backends.azure.seam import size_row, usage_row

    # the service's wire JSON, through the SDK's own conversion (what list_usage/list_sizes return)
    body = family_usage("NCADSA100v4", "LowPriority", 24, -1)
    usage = Usage._from_rest_object(RestUsage(body))
    vm = VmSize._from_rest_object(VirtualMachineSize(GPU_SIZES[4]))
    # in azure-ai-ml 1.35 usage.current_value and vm.v_cp_us stay None here (notes section 2)
    assert usage_row(usage) == {"id": body["id"], "name": "Standard NCADSA100v4 Family Cluster LowPriority vCPUs",
                                "current": 24, "limit": -1}
    assert size_row(vm) == {"name": "Standard_NC24ads_A100_v4", "family": A100_FAMILY, "vcpus": 24, "gpus": 1,
                            "low_priority_capable": True,
                            "prices": {"currency": "USD", "dedicated": 3.673, "low_priority": 0.735}}


# status and log tailing -----------------------------------------------------------------------
# The service's own end states, written out here (not read from the mapping under test).
AZURE_TERMINAL = {"Completed", "Failed", "Canceled"}


def test_every_non_terminal_azure_status_keeps_the_follower_waiting():
    """Whatever the service can report (its REST JobStatus enum) that is not an end state must not
    end a follow: a wrong terminal mapping stops the follower and writes a false ledger state."""
    from azure.ai.ml._restclient.arm_ml_service.models import JobStatus

    reported = {s.value for s in JobStatus}
    assert AZURE_TERMINAL <= reported
    for status in reported - AZURE_TERMINAL:
        assert map_status(status) not in TERMINAL, status
    for status in AZURE_TERMINAL:
        assert map_status(status) in TERMINAL, status


@pytest.mark.parametrize("azure,ours", [
    ("CancelRequested", RUNNING),  # still checkpointing; it may yet complete
    ("NotResponding", RUNNING),    # transient: missed heartbeats
    ("Finalizing", RUNNING),       # outputs being uploaded
    ("Queued", QUEUED), ("Preparing", QUEUED),
    ("Paused", QUEUED), ("Unknown", QUEUED), ("SomethingNew", QUEUED),
    ("Canceled", CANCELED), ("Failed", FAILED), ("Completed", COMPLETED),
])
def test_status_mapping_of_the_tricky_states(azure, ours):
    assert map_status(azure) == ours


def test_rank0_log_is_picked_among_the_log_files():
    assert rank0_log({}) is None
    assert rank0_log({"user_logs/std_log_process_1.txt": "p1", "user_logs/std_log_process_0.txt": "p0",
                      "system_logs/x.txt": "s"}) == "p0"
    assert rank0_log({"user_logs/std_log_process_0.txt": "p0", LOG: "main"}) == "main"


class GrowingLog:
    """A seam whose job log grows by one chunk per poll, and whose status follows a script."""

    def __init__(self, chunks, statuses):
        self.chunks, self.statuses, self.log, self.offsets = list(chunks), list(statuses), b"", []

    def job_status(self, name):
        if self.chunks:
            self.log += self.chunks.pop(0)
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def log_urls(self, name):
        return {LOG: "url"} if self.log else {}

    def read_from(self, url, offset):
        self.offsets.append(offset)
        return self.log[offset:]


def test_tailer_follows_by_byte_offset_and_holds_back_partial_lines():
    seam = GrowingLog([b"", "héllo\n@@orchestrate {\"type\"".encode(), b": \"phase\"}\r\nlast without newline"],
                      ["Queued", "Running", "Running", "Completed"])
    sleeps, statuses = [], []
    lines = list(tail(seam, "job", sleep=sleeps.append, on_status=statuses.append))
    assert statuses == ["Queued", "Running", "Completed"]  # each change once
    assert [l.text for l in lines] == ["héllo", '@@orchestrate {"type": "phase"}', "last without newline"]
    assert lines[-1].cursor == len(seam.log)
    assert lines[0].cursor == len("héllo\n".encode())
    # from the last line start on, re-reading up to FINGERPRINT bytes before it (a restart check)
    assert seam.offsets == [max(0, c - FINGERPRINT) for c in (0, lines[0].cursor, lines[1].cursor)]
    assert sleeps == [3.0, 2.0, 2.0]  # backs off while nothing comes, resets when lines do


def test_tailer_resumes_from_a_cursor_without_repeating_anything():
    log = b"".join(f"line {i}\n".encode() for i in range(10))
    seam = GrowingLog([log], ["Completed"])
    first = list(tail(seam, "job"))
    cut = first[3].cursor
    again = list(tail(GrowingLog([log], ["Completed"]), "job", cursor=cut))
    assert [l.text for l in first[:4] + again] == [l.text for l in first]
    assert again[-1].cursor == len(log)


def test_tailer_without_follow_returns_after_one_poll():
    seam = GrowingLog([b"a\nb\npartial"], ["Running"])
    assert [l.text for l in tail(seam, "job", follow=False)] == ["a", "b"]


# the backend end to end, storage on Azurite ---------------------------------------------------
def make_dataset(root):
    for label, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), color).save(root / label / f"{i}.png")
    return root


@pytest.fixture
def container(world, azurite):  # noqa: F811
    from azure.storage.blob import ContainerClient

    client = ContainerClient.from_connection_string(
        azurite.connection_string, world.datastore["container"],
        raw_request_hook=lambda r: world.blob_requests.append((r.http_request.method, r.http_request.url)))
    if not client.exists():
        client.create_container()
    for blob in client.list_blobs():
        client.delete_blob(blob.name)
    world.container = client
    return client


def blob_reads(world):
    """The blobs whose bytes the container's client fetched (GETs that are not listings; an empty
    blob takes two)."""
    from urllib.parse import unquote, urlsplit

    return sorted({unquote(urlsplit(url).path).split(f"/{world.datastore['container']}/", 1)[1]
                   for method, url in world.blob_requests if method == "GET" and "comp=list" not in url})


def test_prepare_submit_follow_download(tmp_path, world, container, workspace_env, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=x;AccountKey=c2VjcmV0a2V5")
    data = make_dataset(tmp_path / "colors")
    run_dir = tmp_path / "runs" / "colors-1"
    spec = JobSpec(run_id="colors-1", data=data, run_dir=run_dir, train_args=["--epochs", "1"],
                   backend_options={"compute": "gpu-a100", "nodes": 2, "experiment": "colors", "no_pack": True})
    said, asked = [], []
    backend = AzureBackend(seam_factory=world.seam, sleep=lambda s: None, on_event=notices(said),
                           approve=lambda question: asked.append(dict(world.computes)) or True)
    backend.prepare(spec)
    assert asked == [{}]  # the CLI's confirmation came after the plan and before the cluster existed
    prefix = dataset_prefix(data)
    assert {b.name for b in container.list_blobs()} >= {f"{prefix}/red/0.png", f"{prefix}/blue/2.png"}
    assert world.computes["gpu-a100"]["max_instances"] == 2
    run = backend.submit(spec)
    assert run.remote_id == "colors-1" and run.backend == "azure"
    job = world.jobs["colors-1"]["job"]
    assert job.resources.instance_count == 2 and job.experiment_name == "colors"
    assert job.inputs["data"].path == f"azureml://datastores/workspaceblobstore/paths/{prefix}/"
    state = (run_dir / "azure.json").read_text()
    assert "c2VjcmV0a2V5" not in state and "AccountKey" not in state
    assert json.loads(state)["workspace"] == {"subscription_id": "sub", "resource_group": "rg", "workspace_name": "ws"}
    assert any("https://ml.azure.com/runs/colors-1" in line for line in said)

    # another process: only the RunRef and runs/<id>/azure.json, no flags, no env
    for name in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME"):
        monkeypatch.delenv(name)
    said.clear()
    other = AzureBackend(seam_factory=world.seam, sleep=lambda s: None, on_event=notices(said))
    run = RunRef("colors-1", "azure", run_dir, "colors-1")
    assert other.status(run) == QUEUED
    with pytest.raises(UsageError, match="not finished"):
        other.download(run, run_dir / "outputs")
    world.jobs["colors-1"].update(status="Completed", log=b"epoch 1\n@@orchestrate {\"type\": \"run_end\"}\n")
    assert [l.text for l in other.log_lines(run)][-1] == '@@orchestrate {"type": "run_end"}'
    assert said == ["Azure ML job: Completed"]
    assert other.status(run) == COMPLETED

    model_prefix = "orchestrate/runs/colors-1/model/"
    for name, body in (("model.onnx", b"onnx"), ("labels.json", b"[]"), ("metrics.json", b"{}"),
                       ("history.jsonl", b""), ("extra/plot.txt", b"x")):
        container.upload_blob(model_prefix + name, body, overwrite=True)
    container.upload_blob("orchestrate/runs/colors-1/checkpoints/last.pt", b"ckpt", overwrite=True)
    world.blob_requests.clear()
    other.download(run, run_dir / "outputs")
    assert blob_reads(world) == sorted(model_prefix + name for name in (
        "model.onnx", "labels.json", "metrics.json", "history.jsonl", "extra/plot.txt"))  # the model output only
    got = sorted(str(p.relative_to(run_dir / "outputs")) for p in (run_dir / "outputs").rglob("*") if p.is_file())
    assert got == ["extra/plot.txt", "history.jsonl", "labels.json", "metrics.json", "model.onnx"]
    assert (run_dir / "outputs" / "model.onnx").read_bytes() == b"onnx"
    world.calls.clear()
    world.blob_requests.clear()
    other.download(run, run_dir / "outputs")  # already there, same sizes: nothing fetched
    assert names(world) == ["job_status", "container_client"]
    assert blob_reads(world) == [] and len(world.blob_requests) == 1  # one listing, and no blob read


def test_cancel_and_errors_are_one_line_without_secrets(tmp_path, world):
    from azure.core.exceptions import HttpResponseError

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "azure.json").write_text(json.dumps({"job": "j", "datastore": world.datastore,
                                                    "workspace": settings().public()}))
    world.jobs["j"] = {"status": "Running", "log": b""}
    backend = AzureBackend(seam_factory=world.seam)
    run = RunRef("r", "azure", run_dir, "j")
    backend.cancel(run)
    assert ("cancel", "j") in world.calls
    assert backend.status(run) == RUNNING  # CancelRequested: it may still checkpoint, even complete
    world.jobs["j"]["status"] = "Canceled"
    assert backend.status(run) == CANCELED

    def refuse(name):
        raise HttpResponseError(message="(AuthorizationFailed) no access to "
                                        "https://sa.blob.core.windows.net/c/x?sv=1&sig=SECRETSIG\nmore")
    world.seam = lambda s: type("S", (RecordingSeam,), {"job_status": lambda self, n: refuse(n)})(s, world)
    with pytest.raises(ServiceError) as exc:
        AzureBackend(seam_factory=world.seam).status(run)
    assert "AuthorizationFailed" in str(exc.value) and "SECRETSIG" not in str(exc.value)
    assert "\n" not in str(exc.value)
    with pytest.raises(UsageError, match="azure.json is missing"):
        backend.status(RunRef("x", "azure", tmp_path / "nowhere", "x"))


# the real seam, as far as it runs without Azure ----------------------------------------------
def test_the_recording_seam_is_in_step_with_the_real_one():
    """Every method of RecordingSeam is one of AzureSeam's with the same parameters: a stand-in
    that drifted (a renamed method, a new argument) would let these tests pass against calls the
    real seam refuses. (The methods it lacks fail loudly, with AttributeError, if ever called.)"""
    import inspect

    from orchestrator.backends.azure.seam import AzureSeam

    own = {name: member for name, member in vars(RecordingSeam).items()
           if callable(member) and not name.startswith("_")}
    assert len(own) >= 15
    for name, member in own.items():
        real = inspect.getattr_static(AzureSeam, name, None)
        assert callable(real), f"AzureSeam has no method {name}"
        assert inspect.signature(member) == inspect.signature(real), name


class NoCredential:
    def get_token(self, *scopes, **kwargs):
        raise AssertionError("no token may be requested offline")


def test_real_seam_builds_its_clients_lazily_and_offline():
    from orchestrator.backends.azure.seam import AzureSeam

    seam = AzureSeam(Settings(subscription_id="sub", resource_group="rg", workspace_name="ws",
                              storage_connection_string=None))
    seam.__dict__["credential"] = NoCredential()
    assert (seam.ml.subscription_id, seam.ml.resource_group_name, seam.ml.workspace_name) == ("sub", "rg", "ws")
    assert callable(seam._resources.resource_groups.check_existence)
    # the datastore's credential and its blob client: tests/test_azure_storage.py


def test_real_seam_reads_log_bytes_by_range_from_a_sas_url(world, container, azurite):  # noqa: F811
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import BlobSasPermissions, generate_blob_sas
    from services.azurite import ACCOUNT, ACCOUNT_KEY

    from orchestrator.backends.azure.seam import AzureSeam

    seam = AzureSeam(Settings(storage_connection_string=azurite.connection_string))
    client = seam.container_client(world.datastore)  # the connection string wins over Azure AD
    body = "première ligne\nsecond line\n".encode()
    client.upload_blob("user_logs/std_log.txt", body, overwrite=True)
    sas = generate_blob_sas(ACCOUNT, client.container_name, "user_logs/std_log.txt", account_key=ACCOUNT_KEY,
                            permission=BlobSasPermissions(read=True),
                            expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    url = f"{client.url}/user_logs/std_log.txt?{sas}"
    assert seam.read_from(url, 0) == body
    assert seam.read_from(url, 16) == body[16:]
    assert seam.read_from(url, len(body)) == b""


def test_sign_in_failures_become_one_line():
    from azure.core.exceptions import ClientAuthenticationError

    from orchestrator.backends.azure.seam import azure_errors

    with pytest.raises(ServiceError, match="^Azure sign-in failed: run `az login`"):
        with azure_errors():
            raise ClientAuthenticationError("DefaultAzureCredential failed\nlong story")


def test_prepare_packs_the_dataset_and_the_job_downloads_its_shards(tmp_path, world, container, workspace_env,
                                                                    monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=x;AccountKey=c2VjcmV0a2V5")
    data = make_dataset(tmp_path / "colors")
    spec = JobSpec(run_id="colors-2", data=data, run_dir=tmp_path / "runs" / "colors-2", train_args=["--epochs", "1"],
                   backend_options={"compute": "gpu-a100"})
    said = []
    backend = AzureBackend(seam_factory=world.seam, sleep=lambda s: None, on_event=notices(said),
                           approve=lambda question: True)
    backend.prepare(spec)
    prefix = dataset_prefix(data, packed=True)
    names = {b.name for b in container.list_blobs()}
    assert f"{prefix}/index.json" in names and any(n.startswith(f"{prefix}/shards/") for n in names)
    assert not any(n.startswith(dataset_prefix(data) + "/") for n in names)  # no loose files
    assert any("shard(s) uploaded" in line for line in said)
    backend.submit(spec)
    data_input = world.jobs["colors-2"]["job"].inputs["data"]
    assert data_input.mode == "download" and data_input.path.endswith(f"/{prefix}/")
