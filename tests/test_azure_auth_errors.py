"""Which credential a refusal is about, through the REAL clients: a storage refusal of an account
key or a SAS is not a login problem, an Azure AD one is.

Storage answers in its documented shape: 403 with x-ms-error-code AuthenticationFailed, "Server failed
to authenticate the request. Make sure the value of Authorization header is formed correctly
including the signature." (https://learn.microsoft.com/rest/api/storageservices/common-rest-api-error-codes),
with the AuthenticationErrorDetail of a wrong or regenerated key ("The MAC signature found in the
HTTP request '...' is not the same as any computed signature.") or of an expired SAS ("Signed expiry
time ... has to be after signed start time ...": Microsoft's "Troubleshoot 403 errors in Azure Blob
Storage", MicrosoftDocs/SupportArticles-docs). Azurite 3.35 answers a wrong key and an expired SAS
with 403 AuthorizationFailure instead (its BlobSharedKeyAuthenticator and BlobSASAuthenticator call
getAuthorizationFailure), so AuthenticationFailed comes from a small local server answering in the
documented shape, and Azurite's own answer is checked to keep its code. The management plane is
tests/azure_transport.ManagementPlane under the real MLClient: a token it does not take is its 401.
"""
import ssl
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from azure_transport import SUB, ManagementPlane, StaticToken, add_datastore, datastore_body
from services.azurite import ACCOUNT, ACCOUNT_KEY, azurite  # noqa: F401

from orchestrator.backends.azure.seam import AzureSeam, azure_errors
from orchestrator.backends.azure.settings import Settings
from orchestrator.backends.azure.sweep_results import read_trial_files
from orchestrator.errors import ServiceError
from orchestrator.storage.blob import upload_dataset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow

WRONG_KEY = "cm90YXRlZC1hd2F5LWtleS1tdXN0LW5vdC1sZWFr"
DETAIL = {
    "AccountKey": "The MAC signature found in the HTTP request 'c2lnbmF0dXJl' is not the same as any computed "
                  "signature. Server used following string to sign: 'GET'.",
    "Sas": "Signed expiry time [Mon, 23 Nov 2026 13:00:00 GMT] has to be after signed start time "
           "[Mon, 23 Nov 2026 14:00:00 GMT]",
}


def settings(**extra):
    return Settings(subscription_id=SUB, resource_group="rg", workspace_name="ws", **extra)


def make_dataset(root):
    from PIL import Image

    for label, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / label).mkdir(parents=True)
        Image.new("RGB", (8, 8), color).save(root / label / "0.png")
    return root


KEY_REFUSED = (403, "AuthenticationFailed", "Server failed to authenticate the request. Make sure the value of "
               "Authorization header is formed correctly including the signature.")
TOKEN_REFUSED = (401, "InvalidAuthenticationInfo", "Server failed to authenticate the request. Please refer to "
                 "the information in the www-authenticate header.")


class KeyRefusingBlobService(BaseHTTPRequestHandler):
    """Answers every request as Blob storage answers a credential it does not accept: `answer`
    (status, code, message) with `detail`; KEY_REFUSED by default, TOKEN_REFUSED for a token."""

    answer, detail = KEY_REFUSED, DETAIL["AccountKey"]

    def _refuse(self):
        status, code, text = type(self).answer
        body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{text}'
                "\nRequestId:2c25ad7c-a01e-0004-04a3-56c77b000000\n"
                f"Time:2026-11-23T14:00:00.0000000Z</Message><AuthenticationErrorDetail>{type(self).detail}"
                "</AuthenticationErrorDetail></Error>").encode()
        self.send_response(status, text)
        self.send_header("x-ms-error-code", code)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_PUT(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._refuse()

    do_GET = do_HEAD = do_DELETE = _refuse

    def log_message(self, *args):
        pass


@pytest.fixture
def key_refusing_blob_service():
    KeyRefusingBlobService.answer = KEY_REFUSED
    server = ThreadingHTTPServer(("127.0.0.1", 0), KeyRefusingBlobService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{ACCOUNT}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def token_refusing_blob_service(tmp_path, monkeypatch):
    """https://127.0.0.1:PORT/wsstorage (a token is sent over HTTPS only), answering TOKEN_REFUSED
    with the detail of an expired token; trusted through REQUESTS_CA_BUNDLE."""
    from test_azure_storage import self_signed_certificate

    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    KeyRefusingBlobService.answer = TOKEN_REFUSED
    KeyRefusingBlobService.detail = "Lifetime validation failed. The token is expired."
    server = ThreadingHTTPServer(("127.0.0.1", 0), KeyRefusingBlobService)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}/wsstorage"
    server.shutdown()
    server.server_close()
    KeyRefusingBlobService.answer = KEY_REFUSED


def expired_sas(container):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    now = datetime.now(timezone.utc)
    return generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                  permission=ContainerSasPermissions(read=True, write=True, list=True),
                                  start=now - timedelta(hours=2), expiry=now - timedelta(hours=1))


def datastore_seam(endpoint, kind, container, **extra):
    """A real seam whose workspace datastore hands out a key or SAS the storage will refuse."""
    plane = ManagementPlane()
    secret = {"key": WRONG_KEY} if kind == "AccountKey" else {"sas_token": expired_sas(container)}
    add_datastore(plane, datastore_body("workspaceblobstore", ACCOUNT, container, kind=kind), **secret)
    seam = AzureSeam(settings(**extra), credential=StaticToken(), transport=plane, blob_endpoint=endpoint)
    return seam, secret


# storage: a refused key or SAS ------------------------------------------------------------------
@pytest.mark.parametrize("kind,sent", [("AccountKey", "account key"), ("Sas", "SAS token")])
def test_a_refused_datastore_key_or_sas_says_so_and_not_az_login(tmp_path, key_refusing_blob_service, kind, sent):
    KeyRefusingBlobService.detail = DETAIL[kind]
    seam, secret = datastore_seam(key_refusing_blob_service, kind, "azureml-blobstore-1")
    container = seam.container_client(seam.default_datastore())
    why = "it may have been rotated" if kind == "AccountKey" else "it may have expired or been revoked"
    fix = ("give the workspace the new key (`az ml workspace sync-keys`) and update the datastore's credentials"
           if kind == "AccountKey" else "update the datastore's credentials with a new SAS")
    endpoint = key_refusing_blob_service.rsplit("/", 1)[0]

    # the upload (storage.blob's translator, which knows the key came from the datastore)
    with pytest.raises(ServiceError) as exc:
        upload_dataset(make_dataset(tmp_path / "colors"), container, "ds")
    assert str(exc.value) == (
        f"{endpoint} did not accept the {sent} while listing in container 'azureml-blobstore-1' (HTTP 403 "
        f"AuthenticationFailed): {why}; run the command again to fetch the datastore's current credential, "
        f"and if it is refused again, {fix}")

    # a read inside the seam's translator, as the sweep follower and a search download read trial files
    with pytest.raises(ServiceError) as exc:
        with azure_errors():
            read_trial_files(container, "r1", "r1-trial-1")
    message = str(exc.value)
    assert message.startswith(f"{endpoint} did not accept the {sent} (HTTP 403 AuthenticationFailed): {why}; ")
    assert fix in message and "renew AZURE_STORAGE_CONNECTION_STRING if you set it" in message
    assert "az login" not in message and "sign-in" not in message and "\n" not in message
    for value in secret.values():
        assert value not in message and "sig=" not in message


def test_a_refused_key_from_the_connection_string_says_to_renew_it(tmp_path, key_refusing_blob_service):
    conn = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={WRONG_KEY};"
            f"BlobEndpoint={key_refusing_blob_service};")
    seam, _ = datastore_seam(None, "AccountKey", "azureml-blobstore-1", storage_connection_string=conn)
    with pytest.raises(ServiceError) as exc:
        upload_dataset(make_dataset(tmp_path / "colors"), seam.container_client(seam.default_datastore()), "ds")
    message = str(exc.value)
    assert message.endswith("did not accept the account key while listing in container 'azureml-blobstore-1' "
                            "(HTTP 403 AuthenticationFailed): it may have been rotated; put the account's "
                            "current key in AZURE_STORAGE_CONNECTION_STRING")
    assert WRONG_KEY not in message


@pytest.mark.parametrize("kind", ["AccountKey", "Sas"])
def test_azurites_refusal_keeps_its_code_through_the_seam(azurite, kind):  # noqa: F811
    """Azurite refuses a wrong key and an expired SAS with 403 AuthorizationFailure (not Azure's
    AuthenticationFailed, see the module docstring): its code is kept, and no login is advised."""
    from azure.storage.blob import ContainerClient

    admin = ContainerClient.from_connection_string(azurite.connection_string, "azureml-blobstore-auth")
    if not admin.exists():
        admin.create_container()
    seam, secret = datastore_seam(azurite.endpoint, kind, "azureml-blobstore-auth")
    container = seam.container_client(seam.default_datastore())
    with pytest.raises(ServiceError) as exc:
        with azure_errors():
            read_trial_files(container, "r1", "r1-trial-1")
    message = str(exc.value)
    assert message.startswith(f"{azurite.endpoint.rsplit('/', 1)[0]} refused the request "
                              "(HTTP 403 AuthorizationFailure)")
    assert "az login" not in message and "sign-in" not in message
    for value in secret.values():
        assert value not in message


# Azure AD: the sign-in itself ------------------------------------------------------------------
class RefusedToken:
    """A credential whose token the management plane does not take (expired, another tenant)."""

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken("a-token-the-service-refuses", 4102444800)


class NoCredential:
    """What DefaultAzureCredential does with no login anywhere: azure-identity's
    CredentialUnavailableError (a ClientAuthenticationError without a response)."""

    def get_token(self, *scopes, **kwargs):
        from azure.identity import CredentialUnavailableError

        raise CredentialUnavailableError("DefaultAzureCredential failed to retrieve a token")


def test_a_token_the_management_plane_refuses_keeps_az_login_and_its_code():
    seam = AzureSeam(settings(), credential=RefusedToken(), transport=ManagementPlane())
    with pytest.raises(ServiceError) as exc:
        with azure_errors():
            seam.job_status("run-1")
    # the plane's 401 body {"error": {"code": "AuthenticationFailed"}}: ARM's, without x-ms-error-code
    assert str(exc.value) == ("Azure sign-in failed (AuthenticationFailed): run `az login` or set "
                              "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET")


def test_a_token_the_storage_refuses_is_an_azure_ad_problem(tmp_path, token_refusing_blob_service):
    """An identity-based datastore: the Azure AD token goes to storage, and its refusal (401
    InvalidAuthenticationInfo, the common error codes page) keeps the `az login` advice."""
    plane = ManagementPlane()
    add_datastore(plane, datastore_body("workspaceblobstore", "wsstorage", "azureml-blobstore-1", kind="None"))
    seam = AzureSeam(settings(), credential=StaticToken(), transport=plane, blob_endpoint=token_refusing_blob_service)
    container = seam.container_client(seam.default_datastore())
    endpoint = token_refusing_blob_service.rsplit("/", 1)[0]
    with pytest.raises(ServiceError) as exc:
        upload_dataset(make_dataset(tmp_path / "colors"), container, "ds")
    assert str(exc.value) == (
        f"{endpoint} did not accept your Azure AD sign-in while listing in container 'azureml-blobstore-1' "
        "(HTTP 401 InvalidAuthenticationInfo): run `az login` again, or check "
        "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET")
    with pytest.raises(ServiceError) as exc:
        with azure_errors():
            read_trial_files(container, "r1", "r1-trial-1")
    assert str(exc.value).startswith(f"{endpoint} did not accept your Azure AD sign-in (HTTP 401 "
                                     "InvalidAuthenticationInfo): run `az login` again")


def test_no_credential_at_all_is_az_login():
    seam = AzureSeam(settings(), credential=NoCredential(), transport=ManagementPlane())
    with pytest.raises(ServiceError) as exc:
        with azure_errors():
            seam.job_status("run-1")
    assert str(exc.value) == ("Azure sign-in failed: run `az login` or set "
                              "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET")
