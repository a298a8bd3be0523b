"""The data / compute / workspace SDK (orchestrator.data, .compute, .workspace), called from Python
as a notebook would: uploads to a real Azurite (tests/services/azurite.py) with an on_event
collector, packing, the real profile file, and the azure-ai-ml client through the documented
management-plane shapes (tests/azure_transport.ManagementPlane)."""
import json
import random
import uuid

import pytest
from azure_transport import SUB, ManagementPlane, StaticToken

import orchestrator.workspace
from orchestrator import compute, data, workspace
from orchestrator.backends.azure.catalogue import catalogue
from orchestrator.backends.azure.seam import AzureSeam
from orchestrator.errors import DatasetError, UsageError
from services.azurite import ACCOUNT

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No ambient Azure settings or credentials; the profile file and the caches under tmp_path."""
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "ORCHESTRATE_STORAGE_URI", "ORCHESTRATE_PROFILE",
                 "AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME", "AZURE_LOCATION",
                 "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # no Azure ML config.json above


@pytest.fixture
def dataset(tmp_path):
    """90 'images' (random bytes: packing and uploading never decode them) in three label folders."""
    rng = random.Random(7)
    root = tmp_path / "pets"
    for label in ("cat", "dog", "fox"):
        (root / label).mkdir(parents=True)
        for i in range(30):
            (root / label / f"{i:03d}.png").write_bytes(rng.randbytes(2000 + 13 * i))
    return root


@pytest.fixture
def to(azurite, monkeypatch):  # noqa: F811
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    return f"az://{ACCOUNT}/sdk{uuid.uuid4().hex[:10]}"


def transfers(collected, what, unit):
    return [(e["done"], e["total"]) for e in collected if e["type"] == "transfer" and (e["what"], e["unit"]) == (what, unit)]


def test_packed_upload_reports_transfers_and_a_second_upload_sends_nothing(dataset, to):
    collected = []
    first = data.upload(dataset, to, shard_size=0.0625, on_event=collected.append)
    assert first.uri == f"{to}/pets" and first.pack.files == 90 and first.sent.images == 90
    assert first.sent.shards_sent == first.pack.shards > 1 and first.sent.index_sent
    for phase in ("scanning", "hashing", "packing"):
        assert transfers(collected, phase, "files")[-1] == (90, 90)
    assert transfers(collected, "uploading", "shards")[-1] == (first.sent.shards_sent,) * 2
    assert transfers(collected, "uploading", "bytes")[-1] == (first.sent.bytes_sent,) * 2
    assert json.loads(json.dumps(first.to_dict()))["pack"]["files"] == 90

    again = []
    second = data.upload(dataset, to, shard_size=0.0625, on_event=again.append)
    assert (second.sent.shards_sent, second.sent.bytes_sent, second.sent.index_sent) == (0, 0, False)
    assert second.sent.shards_skipped == first.sent.shards_sent
    assert all(done == 0 for done, _ in transfers(again, "uploading", "shards") + transfers(again, "uploading", "bytes"))

    listed = data.list(to)
    assert [(d.prefix, d.kind, d.images, d.unreferenced_shards) for d in listed] == [("pets", "packed", 90, 0)]
    assert data.gc(to, dry_run=True).removed == []


def test_loose_upload_reports_hashing_and_files_then_sends_nothing(dataset, to):
    collected = []
    first = data.upload(dataset, to, name="loose", pack=False, on_event=collected.append)
    assert first.pack is None and first.uri == f"{to}/loose"
    assert (first.sent.files_sent, first.sent.files_skipped) == (90, 0)
    assert transfers(collected, "hashing", "files")[-1] == (90, 90)
    assert transfers(collected, "uploading", "files")[-1] == (90, 90)
    assert transfers(collected, "uploading", "bytes")[-1] == (first.sent.bytes_sent,) * 2

    again = []
    second = data.upload(dataset, to, name="loose", pack=False, on_event=again.append)
    assert (second.sent.files_sent, second.sent.files_skipped) == (0, 90)
    assert transfers(again, "uploading", "files") == [(0, 0)]


def test_upload_refuses_bad_input_before_sending(dataset, to, monkeypatch):
    with pytest.raises(UsageError, match="packing options"):
        data.upload(dataset, to, pack=False, max_side=64)
    with pytest.raises(DatasetError):
        data.upload(dataset, to, labels="no-such-table.csv")
    with pytest.raises(UsageError, match="does not exist"):  # nothing was sent: not even a container made
        data.list(to)
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    with pytest.raises(UsageError, match="no upload target"):
        data.upload(dataset, None)  # no target, no connection string to take the account of


def test_pack_reports_its_phases_and_its_warnings_as_notices(dataset, tmp_path):
    (dataset / "empty").mkdir()
    collected = []
    result = data.pack(dataset, tmp_path / "packed", shard_size=0.0625, on_event=collected.append)
    assert result.files == 90 and (tmp_path / "packed" / "index.json").is_file()
    assert transfers(collected, "packing", "files")[-1] == (90, 90)
    notices = [e["message"] for e in collected if e["type"] == "notice"]
    assert notices == [f"warning: {w}" for w in result.warnings] and any("'empty'" in n for n in notices)
    unchanged = data.pack(dataset, tmp_path / "packed", shard_size=0.0625)
    assert unchanged.shards_written == 0


def test_saved_profile_is_what_show_and_sizes_use(monkeypatch, tmp_path):
    plane = ManagementPlane(resource_group="lab-rg", workspace="lab-ws", location="westeurope")
    monkeypatch.setattr(orchestrator.workspace, "seam_for", lambda settings: AzureSeam(
        settings.require("subscription_id", "resource_group", "workspace_name"), credential=StaticToken(),
        transport=plane))

    saved = workspace.save_profile("lab", subscription_id=SUB, resource_group="lab-rg", workspace_name="lab-ws",
                                   make_default=True)
    assert saved.path == tmp_path / "config" / "orchestrate" / "config.json"
    stored = json.loads(saved.path.read_text())
    assert stored == {"default_profile": "lab", "profiles": {"lab": {
        "subscription_id": SUB, "resource_group": "lab-rg", "workspace_name": "lab-ws"}}}

    info = workspace.show()
    assert (info["workspace_name"], info["location"]) == ("lab-ws", "westeurope")
    assert info["sources"]["resource_group"] == "profile 'lab'"
    assert workspace.show(resource_group="lab-rg")["sources"]["resource_group"] == "flag"

    priced = compute.sizes()
    assert priced.location == "westeurope" and all("prices" in row for row in priced)


def test_save_profile_refuses_nothing_to_save():
    with pytest.raises(UsageError, match="nothing to save"):
        workspace.save_profile("empty")


def test_sizes_need_no_workspace_and_no_network():
    notices = []
    rows = compute.sizes(on_event=notices.append)
    assert rows == catalogue() and rows.location is None and notices == []
    assert next(r for r in rows if r["alias"] == "gpu-nc12")["substitute"] == "Standard_NC16as_T4_v3"


def test_the_package_leaves_logging_to_the_application_and_the_command_quiets_azure(dataset, to):
    """An application's logging is its own: uploading through the SDK changes no logger's level
    (it once set the whole `azure` tree to ERROR); the CLI sets it, for its one-line errors."""
    import logging

    from click.testing import CliRunner

    from orchestrator.cli.main import cli

    azure_logger = logging.getLogger("azure")
    azure_logger.setLevel(logging.NOTSET)
    data.upload(dataset, to, shard_size=0.0625)
    data.list(to)
    assert azure_logger.level == logging.NOTSET
    try:
        assert CliRunner().invoke(cli, ["data", "list", "--to", to]).exit_code == 0
        assert azure_logger.level == logging.ERROR
    finally:
        azure_logger.setLevel(logging.NOTSET)
