"""Storage access of the Azure backend, through the REAL seam: a real MLClient whose management
requests a test HttpTransport answers in the documented shapes (Datastore get + listSecrets), and a
real ContainerClient (the product's one factory) on Azurite, or on a small local HTTP server for
the one answer Azurite never gives (403 AuthorizationPermissionMismatch of an Azure AD token
without a data role).

What a user with Owner/Contributor and nothing else meets: the upload and the download go with the
datastore's own account key or SAS (no data role needed); an identity-based datastore uses the
Azure AD sign-in, and its 403 names the role, the scope and the command that grants it; a
connection string for another account than the datastore's is refused; no secret reaches stdout,
stderr, the logs, the run folder, the state directory or the job the submit sends.
"""
import ipaddress
import json
import logging
import ssl
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from azure_transport import (SUB, TOKEN, ManagementPlane, StaticToken, add_datastore, aml_compute,
                             code_and_environment_as_arm_ids, datastore_body, set_job_status)
from PIL import Image
from services.azurite import ACCOUNT, ACCOUNT_KEY, azurite  # noqa: F401

from orchestrator.backends.azure import AzureBackend
from orchestrator.backends.azure.job import dataset_prefix
from orchestrator.backends.azure.seam import AzureSeam
from orchestrator.backends.azure.settings import Settings
from orchestrator.backends.base import JobSpec
from orchestrator.errors import ServiceError, UsageError
from orchestrator.storage.blob import download_prefix, upload_dataset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow

STORAGE_ID = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/wsstorage"


def settings(**extra):
    return Settings(subscription_id=SUB, resource_group="rg", workspace_name="ws", **extra)


def make_dataset(root):
    for label, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), color).save(root / label / f"{i}.png")
    return root


def container_sas(container):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                  permission=ContainerSasPermissions(read=True, write=True, list=True,
                                                                     delete=True, create=True, add=True),
                                  expiry=datetime.now(timezone.utc) + timedelta(hours=1))


def create_container(azurite, name):  # noqa: F811
    from azure.storage.blob import ContainerClient

    client = ContainerClient.from_connection_string(azurite.connection_string, name)
    if not client.exists():
        client.create_container()
    return client


def real_seam(plane, endpoint, **extra):
    return AzureSeam(settings(**extra), credential=StaticToken(), transport=plane, blob_endpoint=endpoint)


# the datastore's own credential ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["AccountKey", "Sas"])
def test_upload_and_download_use_the_datastores_own_secret(tmp_path, azurite, kind):  # noqa: F811
    container = f"azureml-blobstore-{kind.lower()}"
    admin = create_container(azurite, container)
    plane = ManagementPlane()
    secret = {"key": ACCOUNT_KEY} if kind == "AccountKey" else {"sas_token": container_sas(container)}
    add_datastore(plane, datastore_body("workspaceblobstore", ACCOUNT, container, kind=kind), **secret)
    seam = real_seam(plane, azurite.endpoint)

    datastore = seam.default_datastore()
    assert datastore == {"name": "workspaceblobstore", "account": ACCOUNT, "container": container,
                         "endpoint": "core.windows.net"}
    client = seam.container_client(datastore)
    assert plane.secret_requests == ["workspaceblobstore"]  # POST .../listSecrets, by the SDK
    ws = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
    assert ("POST", f"{ws}/datastores/workspaceblobstore/listSecrets") in plane.requests
    result = upload_dataset(make_dataset(tmp_path / "colors"), client, "ds")
    assert result.files_sent == 4
    assert {b.name for b in admin.list_blobs()} >= {"ds/red/0.png", "ds/blue/1.png", "ds/manifest.json"}
    written = download_prefix(client, "ds/red", tmp_path / "back")
    assert [p.name for p in written] == ["0.png", "1.png"]


# 403 of an Azure AD token without a data role -------------------------------------------------
class RefusingBlobService(BaseHTTPRequestHandler):
    """Answers every request as Blob storage answers a token whose principal lacks a data role."""

    seen = []

    def _refuse(self):
        type(self).seen.append(self.headers.get("Authorization"))
        body = ('<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthorizationPermissionMismatch</Code>'
                "<Message>This request is not authorized to perform this operation using this permission.\n"
                "RequestId:0f6e1f0c-201e-0001-6a4e-000000000000\nTime:2026-11-23T14:00:00.0000000Z"
                "</Message></Error>").encode()
        self.send_response(403, "This request is not authorized to perform this operation using this permission.")
        self.send_header("x-ms-error-code", "AuthorizationPermissionMismatch")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = _refuse

    def log_message(self, *args):
        pass


def self_signed_certificate(folder):
    """(cert.pem, key.pem) for 127.0.0.1: a token credential is sent over HTTPS only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def refusing_blob_service(tmp_path, monkeypatch):
    """https://127.0.0.1:PORT/wsstorage, trusted through REQUESTS_CA_BUNDLE (requests reads it)."""
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    server = ThreadingHTTPServer(("127.0.0.1", 0), RefusingBlobService)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    RefusingBlobService.seen = []
    yield f"https://127.0.0.1:{server.server_address[1]}/wsstorage"
    server.shutdown()
    server.server_close()


def test_a_missing_data_role_says_which_role_on_which_scope_and_how_to_grant_it(tmp_path, refusing_blob_service):
    plane = ManagementPlane()  # its workspace's storageAccount is .../storageAccounts/wsstorage
    add_datastore(plane, datastore_body("workspaceblobstore", "wsstorage", "azureml-blobstore-1", kind="None"))
    seam = real_seam(plane, refusing_blob_service)
    client = seam.container_client(seam.default_datastore())
    assert plane.secret_requests == []  # an identity-based datastore has no secrets to ask for
    assert client.credential is seam.credential  # the Azure AD sign-in, not a key
    with pytest.raises(ServiceError) as exc:
        upload_dataset(make_dataset(tmp_path / "colors"), client, "ds")
    message = str(exc.value)
    assert "\n" not in message
    assert "HTTP 403 AuthorizationPermissionMismatch" in message
    assert f'lacks the role "Storage Blob Data Contributor" on the storage account {STORAGE_ID}' in message
    assert (f'`az role assignment create --assignee $(az ad signed-in-user show --query id -o tsv) '
            f'--role "Storage Blob Data Contributor" --scope {STORAGE_ID}`') in message
    assert RefusingBlobService.seen and all(h == f"Bearer {TOKEN}" for h in RefusingBlobService.seen)
    assert TOKEN not in message
    with pytest.raises(ServiceError, match="Storage Blob Data Contributor"):
        download_prefix(client, "orchestrate/runs/r/model", tmp_path / "out")


def test_a_wrong_key_is_one_line_without_the_key_nor_a_role_hint(tmp_path, azurite):  # noqa: F811
    wrong = "d3Jvbmcta2V5LW11c3Qtbm90LWxlYWs="  # Azurite answers 403 (AuthorizationFailure)
    plane = ManagementPlane()
    add_datastore(plane, datastore_body("workspaceblobstore", ACCOUNT, "azureml-blobstore-wrong"), key=wrong)
    seam = real_seam(plane, azurite.endpoint)
    with pytest.raises(ServiceError) as exc:
        upload_dataset(make_dataset(tmp_path / "colors"), seam.container_client(seam.default_datastore()), "ds")
    message = str(exc.value)
    assert "HTTP 403 " in message and "\n" not in message
    assert wrong not in message and "Storage Blob Data Contributor" not in message  # not a role problem


# a connection string for another account ------------------------------------------------------
def test_a_connection_string_for_another_account_is_refused_for_the_datastore(azurite):  # noqa: F811
    plane = ManagementPlane()
    add_datastore(plane, datastore_body("workspaceblobstore", "wsstorage", "azureml-blobstore-1"), key="a2V5")
    other = "DefaultEndpointsProtocol=https;AccountName=otheraccount;AccountKey=b3RoZXJrZXk=;EndpointSuffix=core.windows.net"
    seam = real_seam(plane, None, storage_connection_string=other)
    with pytest.raises(UsageError) as exc:
        seam.container_client(seam.default_datastore())
    message = str(exc.value)
    assert message == ("AZURE_STORAGE_CONNECTION_STRING is for storage account 'otheraccount', but the "
                       "workspace datastore 'workspaceblobstore' is in 'wsstorage': unset it (the "
                       "datastore's own credential is used)")
    assert plane.secret_requests == []
    # the datastore's own account (Azurite, a private endpoint): the connection string is used
    add_datastore(plane, datastore_body("workspaceblobstore", ACCOUNT, "azureml-blobstore-conn"), key="a2V5")
    seam = real_seam(plane, None, storage_connection_string=azurite.connection_string)
    client = seam.container_client(seam.default_datastore())
    assert client.url.startswith(azurite.endpoint) and plane.secret_requests == []


def test_prepare_refuses_a_foreign_connection_string_before_creating_a_cluster(tmp_path, monkeypatch):
    plane = ManagementPlane()
    add_datastore(plane, datastore_body("workspaceblobstore", "wsstorage", "azureml-blobstore-1"), key="a2V5")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=otheraccount;AccountKey=b3RoZXJrZXk=")
    for name, value in (("AZURE_SUBSCRIPTION_ID", SUB), ("AZURE_RESOURCE_GROUP", "rg"),
                        ("AZUREML_WORKSPACE_NAME", "ws")):
        monkeypatch.setenv(name, value)
    spec = JobSpec(run_id="r1", data=make_dataset(tmp_path / "colors"), run_dir=tmp_path / "runs" / "r1",
                   train_args=[], backend_options={"compute": "gpu-t4"})
    backend = AzureBackend(seam_factory=lambda s: AzureSeam(s, credential=StaticToken(), transport=plane))
    with pytest.raises(UsageError, match="is for storage account 'otheraccount'"):
        backend.prepare(spec)
    assert not [r for r in plane.requests if r[0] == "PUT"]  # no cluster was created


# secrets in every output surface ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["AccountKey", "Sas"])
def test_datastore_secrets_never_reach_any_output(tmp_path, azurite, capsys, caplog, monkeypatch, kind):  # noqa: F811
    """prepare (upload), submit, status and download of a run, through the real seam, with the
    datastore's own key or SAS (what listSecrets handed the product, and the upload and download
    worked with) and azure's DEBUG logging on: that secret and the bearer token appear nowhere
    the product writes or sends -- stdout, stderr, its lines, the logs, the run folder (the
    azure.json submit wrote), the state directory, the job it PUT."""
    container = f"azureml-blobstore-secrets-{kind.lower()}"
    admin = create_container(azurite, container)
    for blob in admin.list_blobs():
        admin.delete_blob(blob.name)
    plane = ManagementPlane()
    if kind == "Sas":
        sas = container_sas(container)
        secrets = [dict(p.split("=", 1) for p in sas.split("&"))["sig"]]
        add_datastore(plane, datastore_body("workspaceblobstore", ACCOUNT, container, kind=kind), sas_token=sas)
    else:
        secrets = [ACCOUNT_KEY, ACCOUNT_KEY[:20]]
        add_datastore(plane, datastore_body("workspaceblobstore", ACCOUNT, container, kind=kind), key=ACCOUNT_KEY)
    plane.computes["gpu-t4"] = aml_compute("gpu-t4", size="STANDARD_NC4AS_T4_V3", max_nodes=1)
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    for name, value in (("AZURE_SUBSCRIPTION_ID", SUB), ("AZURE_RESOURCE_GROUP", "rg"),
                        ("AZUREML_WORKSPACE_NAME", "ws")):
        monkeypatch.setenv(name, value)
    code_and_environment_as_arm_ids(monkeypatch)
    caplog.set_level(logging.DEBUG, logger="azure")
    said = []
    backend = AzureBackend(seam_factory=lambda s: real_seam(plane, azurite.endpoint, storage_connection_string=None),
                           on_event=said.append)
    data = make_dataset(tmp_path / "colors")
    run_dir = tmp_path / "runs" / "r1"
    spec = JobSpec(run_id="r1", data=data, run_dir=run_dir, train_args=[], backend_options={"compute": "gpu-t4"})
    backend.prepare(spec)
    assert {b.name for b in admin.list_blobs()} >= {f"{dataset_prefix(data, packed=True)}/index.json"}
    run = backend.submit(spec)
    (_, job_body), = plane.job_puts
    set_job_status(plane, run.remote_id, "Completed")
    for name in ("model.onnx", "labels.json"):
        admin.upload_blob(f"orchestrate/runs/r1/model/{name}", b"x", overwrite=True)
    backend.download(run, run_dir / "outputs")
    assert (run_dir / "outputs" / "model.onnx").exists()
    # the product did hold the secret: asked for it (prepare, download), and Azurite took it
    assert plane.secret_requests == ["workspaceblobstore", "workspaceblobstore"]

    captured = capsys.readouterr()
    surfaces = {"stdout": captured.out, "stderr": captured.err, "said": "\n".join(map(json.dumps, said)),
                "logs": "\n".join(r.getMessage() for r in caplog.records), "job PUT": json.dumps(job_body)}
    for folder in (run_dir, state):
        for path in folder.rglob("*") if folder.exists() else []:
            if path.is_file():
                surfaces[str(path)] = path.read_bytes().decode("utf-8", "replace")
    assert caplog.records and str(run_dir / "azure.json") in surfaces  # request logging ran; submit wrote it
    for where, text in surfaces.items():
        for secret in (*secrets, TOKEN):
            assert secret not in text, f"a secret in {where}"
