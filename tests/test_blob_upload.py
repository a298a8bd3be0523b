"""Dataset upload to Azure Blob and download back, against a real Azurite (tests/services/azurite.py)."""
import hashlib
import json
import os
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from orchestrator.errors import UsageError
from orchestrator.storage import blob
from orchestrator.storage.blob import connect, download_prefix, parse_uri, upload_dataset
from services.azurite import ACCOUNT, ACCOUNT_KEY

CLASSES = ("cat", "dog", "fox")
PER_CLASS = 10


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch):
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "ORCHESTRATE_STORAGE_URI", "AZURE_CLIENT_ID",
                 "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def dataset(tmp_path):
    """30 small 'images' (random bytes: uploads never decode them) in three label folders."""
    root = tmp_path / "pets"
    for label in CLASSES:
        (root / label).mkdir(parents=True)
        for i in range(PER_CLASS):
            (root / label / f"{i:02d}.png").write_bytes(os.urandom(1000 + 97 * i))
    (root / "README.txt").write_text("not part of the dataset")
    return root


@pytest.fixture
def container(azurite):  # noqa: F811
    """A client for a fresh container name; upload_dataset creates the container itself."""
    target = parse_uri(f"az://{ACCOUNT}/t{uuid.uuid4().hex[:12]}")
    return connect(target, {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})


def remote(container, prefix):
    """{relative name: (sha256 of the content, recorded sha256)} of the blobs under prefix."""
    found = {}
    for b in container.list_blobs(name_starts_with=prefix + "/", include=["metadata"]):
        data = container.download_blob(b.name).readall()
        found[b.name[len(prefix) + 1:]] = (hashlib.sha256(data).hexdigest(), b.metadata.get("sha256"))
    return found


def local_files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))


def test_first_upload_sends_everything_mirroring_the_folder(dataset, container):
    seen = []
    result = upload_dataset(dataset, container, "pets", progress=lambda e, sent: seen.append(sent))
    total = sum(p.stat().st_size for p in dataset.rglob("*.png"))
    assert (result.files_sent, result.bytes_sent, result.files_skipped) == (30, total, 0)
    assert seen == [True] * 30
    assert result.uri == f"az://{ACCOUNT}/{container.container_name}/pets"
    assert result.url.endswith(f"/{ACCOUNT}/{container.container_name}/pets")
    blobs = remote(container, "pets")
    assert sorted(blobs) == sorted(local_files(dataset) + ["manifest.json"])
    for rel, (content_sha, recorded_sha) in blobs.items():
        assert content_sha == recorded_sha
        if rel != "manifest.json":
            assert content_sha == hashlib.sha256((dataset / rel).read_bytes()).hexdigest()
    manifest = json.loads(container.download_blob("pets/manifest.json").readall())
    assert manifest["name"] == "pets" and manifest["classes"] == list(CLASSES)
    assert [f["path"] for f in manifest["files"]] == local_files(dataset)


def test_unchanged_dataset_sends_nothing(dataset, container):
    upload_dataset(dataset, container, "pets")
    etag = container.get_blob_client("pets/manifest.json").get_blob_properties().etag
    result = upload_dataset(dataset, container, "pets")
    assert result.files_sent == 0 and result.bytes_sent == 0
    assert result.files_skipped == 30
    assert container.get_blob_client("pets/manifest.json").get_blob_properties().etag == etag


def test_only_a_changed_file_is_sent(dataset, container):
    upload_dataset(dataset, container, "pets")
    changed = dataset / "dog" / "03.png"
    changed.write_bytes(b"new dog picture")
    sent = []
    result = upload_dataset(dataset, container, "pets", progress=lambda e, s: s and sent.append(e.path))
    assert sent == ["dog/03.png"]
    assert (result.files_sent, result.bytes_sent, result.files_skipped) == (1, 15, 29)
    assert container.download_blob("pets/dog/03.png").readall() == b"new dog picture"
    manifest = json.loads(container.download_blob("pets/manifest.json").readall())
    assert {f["path"]: f["sha256"] for f in manifest["files"]}["dog/03.png"] == hashlib.sha256(b"new dog picture").hexdigest()


def test_interrupted_upload_resumes_with_only_the_missing_files(dataset, container):
    class Interrupt(Exception):
        pass

    def stop_after_five(entry, sent):
        stop_after_five.count += 1
        if stop_after_five.count == 5:
            raise Interrupt

    stop_after_five.count = 0
    with pytest.raises(Interrupt):
        upload_dataset(dataset, container, "pets", workers=2, progress=stop_after_five)
    already = remote(container, "pets")
    assert "manifest.json" not in already  # written last: its absence marks an incomplete upload
    assert 5 <= len(already) < 30  # the pool was stopped: not everything went out
    result = upload_dataset(dataset, container, "pets")
    assert result.files_skipped == len(already)
    assert result.files_sent == 30 - len(already)
    assert sorted(remote(container, "pets")) == sorted(local_files(dataset) + ["manifest.json"])


def test_a_file_edited_after_hashing_is_not_stored_under_a_stale_digest(dataset, container):
    from orchestrator.dataset.manifest import build_manifest

    manifest = build_manifest(dataset)
    (dataset / "cat" / "00.png").write_bytes(b"edited meanwhile")
    with pytest.raises(UsageError, match="changed during the upload"):
        upload_dataset(dataset, container, "pets", manifest=manifest)
    assert "cat/00.png" not in remote(container, "pets")


def test_deleted_files_are_removed_remotely_but_other_blobs_are_kept(dataset, container):
    upload_dataset(dataset, container, "pets")
    upload_dataset(dataset, container, "pets/v2")  # another dataset nested under the prefix
    container.upload_blob("pets/notes/by-hand.png", b"not ours")
    for path in (dataset / "fox").iterdir():
        path.unlink()
    result = upload_dataset(dataset, container, "pets")
    assert (result.files_sent, result.files_deleted) == (0, 10)
    names = sorted(remote(container, "pets"))
    assert not [n for n in names if n.startswith("fox/")]
    assert "notes/by-hand.png" in names
    assert len([n for n in names if n.startswith("v2/fox/")]) == 10


def test_download_round_trip(dataset, container, tmp_path):
    upload_dataset(dataset, container, "pets")
    written = download_prefix(container, "pets", tmp_path / "back")
    assert len(written) == 31
    for rel in local_files(dataset):
        assert (tmp_path / "back" / rel).read_bytes() == (dataset / rel).read_bytes()
    assert json.loads((tmp_path / "back" / "manifest.json").read_text())["name"] == "pets"
    assert sorted(map(str, written)) == sorted(str(p) for p in (tmp_path / "back").rglob("*") if p.is_file())


def test_download_refuses_names_that_escape_the_destination(container, tmp_path):
    container.create_container()
    container.upload_blob("out//evil.txt", b"x")  # relative name "/evil.txt"
    with pytest.raises(UsageError, match="outside"):
        download_prefix(container, "out", tmp_path / "dest")
    assert not (tmp_path / "evil.txt").exists()


def test_download_refuses_a_blob_name_climbing_out_with_dot_dot(azurite, container, tmp_path):  # noqa: F811
    """A container another party can write to may hold out/../../evil.txt: fetched as named, it
    would land two folders above the destination."""
    container.create_container()
    azurite.put_blob_as_named(container.container_name, "out/../../evil.txt", b"x")
    assert "out/../../evil.txt" in [blob.name for blob in container.list_blobs()]  # stored as named
    dest = tmp_path / "a" / "dest"
    with pytest.raises(UsageError, match="refusing to download blob 'out/../../evil.txt': it would land outside"):
        download_prefix(container, "out", dest)
    assert not list(tmp_path.rglob("evil*"))


# -- secrets never leak ---------------------------------------------------------------------------

def sas_connection_string(azurite, container_name, permission):  # noqa: F811
    from azure.storage.blob import generate_container_sas

    sas = generate_container_sas(ACCOUNT, container_name, account_key=ACCOUNT_KEY, permission=permission,
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    return f"BlobEndpoint={azurite.endpoint};SharedAccessSignature={sas}", sas


def assert_no_secret(text, *secrets):
    for secret in secrets:
        assert secret not in text
    assert "sig=" not in text.replace("sig=***", "")
    assert "Traceback" not in text


def test_refused_upload_with_read_only_sas_names_no_signature(dataset, azurite, run):  # noqa: F811
    name = f"t{uuid.uuid4().hex[:12]}"
    admin = connect(parse_uri(f"az://{ACCOUNT}/{name}"), {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    admin.create_container()
    conn_str, sas = sas_connection_string(azurite, name, "rl")
    signature = re.search(r"sig=([^&]+)", sas).group(1)
    code, out, err = run(["data", "upload", str(dataset), "--to", f"az://{ACCOUNT}/{name}"],
                         env={"AZURE_STORAGE_CONNECTION_STRING": conn_str})
    output = out + err
    assert code == 2, output
    assert "refused" in output and "403" in output
    assert len(output.strip().splitlines()) == 1
    assert_no_secret(output, signature, sas, conn_str)


def test_wrong_account_key_is_refused_without_echoing_the_key(dataset, azurite, run):  # noqa: F811
    wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    conn_str = azurite.connection_string.replace(ACCOUNT_KEY, wrong_key)
    code, out, err = run(["data", "upload", str(dataset), "--to", f"az://{ACCOUNT}/keys"],
                         env={"AZURE_STORAGE_CONNECTION_STRING": conn_str})
    output = out + err
    assert code == 2, output
    assert "refused listing in container 'keys' (HTTP 403 AuthorizationFailure): check the credentials" in output
    assert_no_secret(output, wrong_key, ACCOUNT_KEY, conn_str)


def test_unreachable_endpoint_with_sas_is_one_line_without_secrets(dataset, azurite, run, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setattr(blob, "RETRY_TOTAL", 0)
    conn_str, sas = sas_connection_string(azurite, "gone", "racwdl")
    dead = conn_str.replace(azurite.endpoint.split("/")[2], "127.0.0.1:9")  # discard port: nothing listens
    code, out, err = run(["data", "upload", str(dataset), "--to", f"az://{ACCOUNT}/gone"],
                         env={"AZURE_STORAGE_CONNECTION_STRING": dead})
    output = out + err
    assert code == 2, output
    assert output.startswith("error: cannot reach blob storage at http://127.0.0.1:9 ")
    assert_no_secret(output, sas, dead)
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):  # the hash cache, the dataset...
        assert sas.encode() not in path.read_bytes() and b"sig=" not in path.read_bytes()


# -- the command line -----------------------------------------------------------------------------

def test_cli_upload_json_summary_then_nothing_to_send(dataset, azurite, cli):  # noqa: F811
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    to = f"az://{ACCOUNT}/cli{uuid.uuid4().hex[:8]}"
    first = cli("data", "upload", dataset, "--to", to, "--no-pack", "--json", env=env)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert {k: summary[k] for k in ("files_sent", "files_skipped", "uri")} == {
        "files_sent": 30, "files_skipped": 0, "uri": f"{to}/pets"}
    assert summary["bytes_sent"] > 0 and summary["seconds"] >= 0
    again = cli("data", "upload", dataset, "--to", f"{to}/pets", "--name", "not-the-prefix", "--no-pack", "--json",
                env=env)
    assert json.loads(again.stdout)["files_sent"] == 0
    assert_no_secret(first.stdout + first.stderr + again.stdout + again.stderr, ACCOUNT_KEY)


def test_cli_default_target_is_the_connection_strings_account(dataset, azurite, run):  # noqa: F811
    code, out, err = run(["data", "upload", str(dataset), "--name", "pets-v2"],
                         env={"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    output = out + err
    assert code == 0, output
    assert f"az://{ACCOUNT}/datasets/pets-v2" in output.splitlines()


@pytest.mark.parametrize("args, env, message", [
    (["{missing}", "--to", "az://acct123/data"], {}, "data folder not found"),
    (["{flat}", "--to", "az://acct123/data"], {}, "no images found"),
    (["{data}", "--to", "https://acct123.blob.core.windows.net/data"], {}, "bad storage URI"),
    (["{data}", "--to", "az://acct123/Data"], {}, "bad storage URI"),
    (["{data}"], {}, "no upload target"),
    (["{data}", "--to", "az://acct123/data"], {"AZURE_STORAGE_CONNECTION_STRING": "AccountKey=c2VjcmV0"},
     "malformed"),
    (["{data}", "--to", "az://acct123/data"], {"AZURE_STORAGE_CONNECTION_STRING": "{azurite}"},
     "is for account 'devstoreaccount1', not 'acct123'"),
    (["{data}", "--to", "az://acct123/data"], {}, "no Azure credentials"),
])
def test_cli_bad_input_exits_2_with_one_line(dataset, azurite, run, tmp_path, args, env, message):  # noqa: F811
    (tmp_path / "flat" / "a").mkdir(parents=True)
    (tmp_path / "flat" / "a" / "x.txt").write_text("x")
    paths = {"missing": tmp_path / "nope", "flat": tmp_path / "flat", "data": dataset,
             "azurite": azurite.connection_string}
    args = [a.format(**paths) for a in args]
    env = {k: v.format(**paths) for k, v in env.items()}
    code, out, err = run(["data", "upload", *args], env=env)
    output = out + err
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], output
    assert_no_secret(output, ACCOUNT_KEY, "c2VjcmV0")


@pytest.mark.parametrize("text, secrets, kept", [
    # connection string: the key goes, the account name and endpoint stay
    ("AccountName=a;AccountKey=abc+/=;BlobEndpoint=http://h:1/a", ["abc+/="], ["AccountName=a", "BlobEndpoint="]),
    ("BlobEndpoint=x;SharedAccessSignature=sv=1&sig=s%2Fx", ["s%2Fx"], ["BlobEndpoint=x"]),
    # a SAS URL loses its whole query, not just sig= (se=, sp=, skoid= say too much as well)
    ("GET https://h/c/b?sv=1&se=2&sig=s%2Fx failed", ["s%2Fx", "se=2"], ["https://h/c/b?", " failed"]),
    ("quoted 'sig=q' alone", ["sig=q"], ["quoted 'sig="]),
    ("Authorization: Bearer eyJ0eXAi.eyJhdWQ-_x.c2ln== rejected", ["eyJ0eXAi"], ["Bearer", " rejected"]),
    ("HostName=h;SharedAccessKey=k3y=;x", ["k3y="], ["HostName=h"]),
])
def test_redact_removes_every_kind_of_secret(text, secrets, kept):
    """One redact for storage and the Azure ML seam: the union of what either used to remove."""
    from orchestrator import secrets as secrets_module
    from orchestrator.backends.azure import seam

    assert blob.redact is seam.redact is secrets_module.redact
    out = blob.redact(text)
    for secret in secrets:
        assert secret not in out, out
    for part in kept:
        assert part in out, out


def test_uri_parsing():
    assert parse_uri("az://acct123/data", default_prefix="pets").uri == "az://acct123/data/pets"
    assert parse_uri("az://acct123/data/a/b/").prefix == "a/b"
    with pytest.raises(UsageError):
        parse_uri("az://acct123/data/../x")
