"""Datasets to Azure Blob storage and outputs back, with azure-storage-blob.

An upload mirrors the dataset folder: `<prefix>/<label>/<file>`, so Azure ML can mount the prefix
as a uri_folder that train.py reads as a folder-per-label tree. Each blob carries the sha256 of
its content in its metadata. A new upload lists the prefix once (with metadata) and sends only the
files whose recorded digest differs, which makes repeated uploads nearly free and lets an
interrupted upload resume by simply running it again. `<prefix>/manifest.json` is written last,
so its presence means a complete upload.

Secrets (account keys, SAS tokens, connection strings) never appear in what this module raises:
azure's own messages can quote request URLs with their SAS query, so errors are rebuilt from the
status, the error code and the endpoint's host, and passed through `redact` for good measure.
"""
import mimetypes
import re
import time
import weakref
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from hashlib import sha256
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlsplit

from remote_scripts.atomic import write_atomically

from .. import events
from ..errors import ServiceError, UsageError
from ..secrets import redact

# The one storage secret the product reads, from the environment only (never a profile): how
# Azurite and a key or SAS are reached. backends.azure.settings reads it too, from here.
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"

SHA256_KEY = "sha256"
# The prefix an upload wrote a blob under (URL-quoted: metadata is ASCII). Only blobs carrying this
# upload's own prefix are deleted as stale, so a dataset nested under another one's prefix is safe.
PREFIX_KEY = "orchestrate_prefix"
MANIFEST_NAME = "manifest.json"
STORAGE_SCOPE = "https://storage.azure.com/.default"
# the data-plane role an Azure AD sign-in needs to upload and download (Owner/Contributor lack it)
DATA_ROLE = "Storage Blob Data Contributor"
# requests keeps at most 10 connections per host; more threads than that would just reconnect.
WORKERS = 8
# Files up to this size are read into memory and checked against the manifest before sending,
# so a file edited since hashing is caught instead of being stored under a stale digest.
VERIFY_MAX_BYTES = 32 << 20
# azure-storage-blob's ExponentialRetry defaults wait 15 s before the first retry; a CLI that
# finds a dead endpoint should say so in seconds.
RETRY_TOTAL = 3
RETRY_INITIAL_BACKOFF = 1
CONNECTION_TIMEOUT = 10

_URI = re.compile(r"^az://(?P<account>[a-z0-9]{3,24})/(?P<container>[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9]))"
                  r"(?:/(?P<prefix>.*))?$")


@dataclass(frozen=True)
class BlobTarget:
    """Where a dataset goes: az://ACCOUNT/CONTAINER/PREFIX."""

    account: str
    container: str
    prefix: str

    @property
    def uri(self):
        return f"az://{self.account}/{self.container}/{self.prefix}".rstrip("/")


def parse_uri(uri, default_prefix=""):
    """Parse az://ACCOUNT/CONTAINER[/PREFIX]; the prefix defaults to `default_prefix`."""
    m = _URI.match(uri or "")
    if not m or "--" in m["container"]:
        raise UsageError(f"bad storage URI {redact(uri or '')!r}: expected az://ACCOUNT/CONTAINER[/PREFIX] "
                        "(account: 3-24 lowercase letters/digits; container: 3-63 lowercase letters, "
                        "digits, single hyphens)")
    prefix = (m["prefix"] or "").strip("/") or default_prefix.strip("/")
    if prefix and any(part in (".", "..") for part in prefix.split("/")):
        raise UsageError(redact(f"bad prefix {prefix!r} in {uri}: '.' and '..' are not allowed"))
    return BlobTarget(m["account"], m["container"], prefix)


def container_client(container, *, account_url=None, credential=None, connection_string=None,
                     role_scope=None):
    """The one ContainerClient factory of the product, with the tuned retry policy.

    Either `connection_string` (AZURE_STORAGE_CONNECTION_STRING: how Azurite is reached) or
    `account_url` with `credential`: an account key ({"account_name", "account_key"}), a SAS token
    (str), or an Azure AD TokenCredential. `role_scope`: the storage account's resource id, named
    in the message of a 403 that an Azure AD credential without a data role gets (None: the
    message says how to look it up).
    """
    from azure.storage.blob import BlobServiceClient, ExponentialRetry

    options = {"retry_policy": ExponentialRetry(initial_backoff=RETRY_INITIAL_BACKOFF, increment_base=2,
                                                retry_total=RETRY_TOTAL, random_jitter_range=1),
               "connection_timeout": CONNECTION_TIMEOUT}
    if connection_string:
        service = _from_connection_string(connection_string, **options)
    else:
        service = BlobServiceClient(account_url, credential=credential, **options)
    client = service.get_container_client(container)
    if hasattr(credential, "get_token"):
        _AZURE_AD[client] = role_scope or (f"$(az storage account show --name {client.account_name} "
                                           "--query id -o tsv)")
    if connection_string:
        _FROM_ENV.add(client)
    return client


# ContainerClient -> the role scope to name when Azure AD access is refused (see container_client)
_AZURE_AD = weakref.WeakKeyDictionary()
# the clients whose key or SAS came from AZURE_STORAGE_CONNECTION_STRING, not from a datastore:
# a refused key or SAS is fixed where it came from
_FROM_ENV = weakref.WeakSet()


def connect(target, environ):
    """A ContainerClient for `target`, authenticated from AZURE_STORAGE_CONNECTION_STRING in
    `environ` (how Azurite is reached) or else DefaultAzureCredential (az login, managed identity,
    service principal env vars)."""
    if environ.get(CONNECTION_STRING_ENV):
        client = container_client(target.container, connection_string=environ[CONNECTION_STRING_ENV])
        if client.account_name and client.account_name != target.account:
            raise UsageError(f"{CONNECTION_STRING_ENV} is for account '{client.account_name}', "
                            f"not '{target.account}' named in {target.uri}")
        return client
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential()
    client = container_client(target.container, account_url=f"https://{target.account}.blob.core.windows.net",
                              credential=credential)
    # Ask for a token now: inside the pipeline a missing login is retried with back-off.
    with storage_errors(client, "signing in"):
        credential.get_token(STORAGE_SCOPE)
    return client


def default_account(environ):
    """The account named by AZURE_STORAGE_CONNECTION_STRING, or None when it is not set."""
    conn_str = environ.get(CONNECTION_STRING_ENV)
    return _from_connection_string(conn_str).account_name if conn_str else None


def _from_connection_string(conn_str, **options):
    from azure.storage.blob import BlobServiceClient

    try:
        return BlobServiceClient.from_connection_string(conn_str, **options)
    except ValueError:
        raise UsageError(f"{CONNECTION_STRING_ENV} is malformed (expected '...;AccountName=...;AccountKey=...' "
                        "or a BlobEndpoint with a SharedAccessSignature)") from None


@dataclass
class UploadResult:
    """What an upload did; `to_dict` is the `--json` summary."""

    files_sent: int
    bytes_sent: int
    files_skipped: int
    bytes_skipped: int
    files_deleted: int
    seconds: float
    uri: str
    url: str

    def to_dict(self):
        return asdict(self)


def location(container_client, prefix):
    """(az:// URI, https URL without any SAS query) of a prefix."""
    parts = urlsplit(container_client.url)
    url = f"{parts.scheme}://{parts.netloc}{parts.path}/{prefix}".rstrip("/")
    uri = f"az://{container_client.account_name}/{container_client.container_name}/{prefix}".rstrip("/")
    return uri, url


def blob_name(prefix, relpath):
    """The blob name of `relpath` under `prefix` (the container's root when the prefix is empty)."""
    return f"{prefix}/{relpath}" if prefix else relpath


def upload_dataset(data_dir, container_client, prefix, *, progress=None, workers=WORKERS, manifest=None,
                   on_event=events.ignore):
    """Upload a folder-per-label dataset under `prefix`, sending only what the container lacks.

    progress: optional callable(entry, sent) called on this thread as each file is done or skipped.
    on_event: receives, on this thread, events.transfer("uploading", ...) in files and in bytes
    of what is sent (files already there with the same digest are not counted).
    manifest: a Manifest already built for `data_dir` (else it is built here).
    Blobs that an earlier upload to the same prefix wrote and that the dataset no longer has are
    deleted, so the remote tree stays a mirror of the folder.
    Raises UsageError for bad data, missing credentials, refused requests, unreachable endpoints.
    """
    from ..dataset.manifest import build_manifest

    started = time.perf_counter()
    manifest = manifest or build_manifest(data_dir)
    root = Path(data_dir)
    for entry in manifest.entries:  # a blob name is Unicode text: refused before any request
        shown = entry.path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        if shown != entry.path:
            raise UsageError(f"cannot upload {shown}: its file name is not UTF-8, which blob names must be; "
                            f"rename it (convmv -f latin1 -t utf8 -r --notest {data_dir} converts a whole tree)")
    with storage_errors(container_client, "listing"):
        existing = _existing_metadata(container_client, prefix)

    def recorded(name):
        return existing.get(name, {}).get(SHA256_KEY)

    todo, skipped = [], []
    for entry in manifest.entries:
        (skipped if recorded(blob_name(prefix, entry.path)) == entry.sha256 else todo).append(entry)
    for entry in skipped:
        if progress:
            progress(entry, False)
    total_bytes, files_done, bytes_done = sum(e.size for e in todo), 0, 0
    on_event(events.transfer("uploading", 0, len(todo), "files"))
    on_event(events.transfer("uploading", 0, total_bytes, "bytes"))

    def send(entry):
        path = root / entry.path
        try:
            if entry.size <= VERIFY_MAX_BYTES:
                data = path.read_bytes()
                if sha256(data).hexdigest() != entry.sha256:
                    raise UsageError(f"{path} changed during the upload; run the upload again")
                _put(container_client, prefix, entry.path, data, entry.sha256)
            else:
                with open(path, "rb") as f:
                    _put(container_client, prefix, entry.path, f, entry.sha256, entry.size)
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        return entry

    with storage_errors(container_client, "uploading"), ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(send, e) for e in todo]
        try:
            for future in as_completed(futures):
                entry = future.result()
                files_done, bytes_done = files_done + 1, bytes_done + entry.size
                on_event(events.transfer("uploading", files_done, len(todo), "files"))
                on_event(events.transfer("uploading", bytes_done, total_bytes, "bytes"))
                if progress:
                    progress(entry, True)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
        wanted = {blob_name(prefix, e.path) for e in manifest.entries}
        manifest_blob = blob_name(prefix, MANIFEST_NAME)
        stale = [n for n, meta in existing.items()
                 if meta.get(PREFIX_KEY) == quote(prefix) and n not in wanted and n != manifest_blob]
        list(pool.map(container_client.delete_blob, stale))
        doc = manifest.to_json().encode()
        if recorded(manifest_blob) != sha256(doc).hexdigest():
            _put(container_client, prefix, MANIFEST_NAME, doc, sha256(doc).hexdigest())
    uri, url = location(container_client, prefix)
    return UploadResult(files_sent=len(todo), bytes_sent=sum(e.size for e in todo),
                        files_skipped=len(skipped), bytes_skipped=sum(e.size for e in skipped),
                        files_deleted=len(stale), seconds=round(time.perf_counter() - started, 3),
                        uri=uri, url=url)


def upload_folder(data_dir, prefix, open_container, *, name=None, labels="folder", on_event=events.ignore):
    """Hash the dataset folder `data_dir` (labels: the job's --labels), then send what the
    container lacks under `prefix` (upload_dataset); an UploadResult.

    Why `open_container` is a callable: it is called after hashing, so a bad folder is reported
    before any sign-in. on_event receives events.transfer("hashing", ...) in files, then
    upload_dataset's, then, once the upload is done, events.notice("warning: left out ...") for
    each link the scan left out (one leading outside DATA); a refused upload raises, its one line only.

    Example:
        >>> from orchestrator.storage.blob import connect, parse_uri, upload_folder
        >>> target = parse_uri("az://myaccount/datasets/pets")
        >>> upload_folder("./pets", target.prefix, lambda: connect(target, os.environ)).files_sent
        30
    """
    from ..dataset.manifest import build_manifest

    hashed = [0]

    def on_hashed(entry):
        hashed[0] += 1
        on_event(events.transfer("hashing", hashed[0], None, "files"))

    manifest = build_manifest(data_dir, name, labels=labels, progress=on_hashed)
    on_event(events.transfer("hashing", len(manifest.entries), len(manifest.entries), "files"))
    result = upload_dataset(data_dir, open_container(), prefix, manifest=manifest, on_event=on_event)
    for link in manifest.skipped:
        on_event(events.notice(f"warning: left out {link['path']}: {link['reason']}"))
    return result


def _existing_metadata(container_client, prefix):
    """{blob name: metadata} under the prefix, in one listing; creates a missing container
    (listing first, so that a SAS without create permission still works)."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    start = f"{prefix}/" if prefix else None
    try:
        return {b.name: b.metadata or {} for b in container_client.list_blobs(name_starts_with=start, include=["metadata"])}
    except ResourceNotFoundError:
        try:
            container_client.create_container()
        except ResourceExistsError:  # created by a concurrent upload
            pass
        return {}


def _put(container_client, prefix, relpath, data, digest, length=None):
    from azure.storage.blob import ContentSettings

    content_type = mimetypes.guess_type(relpath)[0] or "application/octet-stream"
    container_client.upload_blob(blob_name(prefix, relpath), data, length=length, overwrite=True,
                                 metadata={SHA256_KEY: digest, PREFIX_KEY: quote(prefix)},
                                 content_settings=ContentSettings(content_type=content_type))


def download_prefix(container_client, prefix, dest, *, workers=WORKERS):
    """Download every blob under `prefix` into `dest`, keeping the relative layout.

    Each blob is streamed to a temporary file and renamed into place (write_atomically), so an
    interrupted download never leaves a truncated file under its final name. Resumes file by file: a file already in
    place with its blob's size is kept, so an interrupted download completes when run again.
    Returns the paths (fetched or kept), sorted.
    """
    dest = Path(dest)
    start = f"{prefix.strip('/')}/" if prefix.strip("/") else ""

    def fetch(blob):
        name = blob.name
        rel = PurePosixPath(name[len(start):])
        if rel.is_absolute() or ".." in rel.parts:
            raise UsageError(f"refusing to download blob {name!r}: it would land outside {dest}")
        target = dest.joinpath(*rel.parts)
        if target.is_file() and target.stat().st_size == blob.size:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, lambda tmp: _download_into(container_client, name, tmp))
        return target

    with storage_errors(container_client, "downloading"), ThreadPoolExecutor(workers) as pool:
        blobs = [b for b in container_client.list_blobs(name_starts_with=start or None, include=["metadata"])
                 # folder markers of accounts with a hierarchical namespace
                 if (b.metadata or {}).get("hdi_isfolder") != "true"]
        return sorted(pool.map(fetch, blobs))


def _download_into(container_client, name, path):
    with open(path, "wb") as f:
        container_client.download_blob(name).readinto(f)


@contextmanager
def storage_errors(container_client, doing):
    """The one error translator of Azure Blob storage: inside it, azure-core exceptions become
    one-line ServiceErrors that name the endpoint and what to do, never the secret.

    Example:
        >>> with storage_errors(container, "listing"):
        ...     names = [b.name for b in container.list_blobs()]
    """
    from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError, ServiceRequestError,
                                       ServiceResponseError)

    parts = urlsplit(container_client.url)
    endpoint = f"{parts.scheme}://{parts.netloc}"
    role_scope = _AZURE_AD.get(container_client)
    try:
        yield
    except ClientAuthenticationError as exc:
        if exc.response is None:  # raised by azure.identity: no credential found
            raise ServiceError(redact(f"no Azure credentials for {endpoint}: set {CONNECTION_STRING_ENV} or "
                                   "sign in with `az login`")) from None
        raise refused(exc, doing, container_client.container_name, role_scope,
                      from_env=container_client in _FROM_ENV) from None
    except HttpResponseError as exc:
        raise refused(exc, doing, container_client.container_name, role_scope,
                      from_env=container_client in _FROM_ENV) from None
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise ServiceError(redact(f"cannot reach blob storage at {endpoint} while {doing} "
                               f"({type(exc).__name__}); check the account name and the network")) from None


# The x-ms-error-code of a request whose account key or SAS the service did not accept: a rotated
# key, an expired or revoked SAS (403 "Server failed to authenticate the request. Make sure the value
# of Authorization header is formed correctly including the signature."; Azure Storage's common
# error codes, https://learn.microsoft.com/rest/api/storageservices/common-rest-api-error-codes).
# azure-storage-blob raises it as ClientAuthenticationError, the class azure-identity raises for a
# failed sign-in, so the class alone cannot tell a storage refusal from an Azure AD one.
KEY_REFUSED = "AuthenticationFailed"
# the codes of that page that say the request's credential was not accepted (the 401s: none, or a
# malformed or expired token), as opposed to one accepted but lacking a permission
AUTHENTICATION_CODES = frozenset({KEY_REFUSED, "InvalidAuthenticationInfo", "NoAuthenticationInformation"})


def storage_error_code(exc):
    """The x-ms-error-code of an answer from the storage service; None for any other failure
    (an Azure AD sign-in, a control-plane error), whose answers carry no such header."""
    response = getattr(exc, "response", None)
    return response.headers.get("x-ms-error-code") if response is not None else None


def _credential_sent(exc):
    """What the refused request carried: "account key", "SAS token", "Azure AD token" or None.
    Read from the request itself (the Authorization scheme, a `sig` in the query), so it holds for
    every client, ours or the SDK's, and never touches the secret's value."""
    request = getattr(exc.response, "request", None)
    if request is None:
        return None
    scheme = (request.headers.get("Authorization") or "").split(" ", 1)[0]
    if scheme == "SharedKey":
        return "account key"
    if scheme == "Bearer":
        return "Azure AD token"
    return "SAS token" if "sig=" in urlsplit(request.url).query else None


def refused(exc, doing=None, container_name=None, role_scope=None, from_env=None):
    """One-line ServiceError for an error answer of the storage service: endpoint, HTTP status and the
    service's error code, and what to do, which depends on the credential that was refused.

    from_env: the key or SAS came from AZURE_STORAGE_CONNECTION_STRING (True), from the workspace's
    datastore (False), or from either (None: the caller cannot tell)."""
    code = getattr(exc, "error_code", None)  # azure-storage-blob sets it, a StorageErrorCode enum
    code = getattr(code, "value", code) or storage_error_code(exc)
    request = getattr(exc.response, "request", None)
    parts = urlsplit(request.url) if request is not None else None
    endpoint = f"{parts.scheme}://{parts.netloc}" if parts else "blob storage"
    where = f" while {doing}" if doing else ""
    where += f" in container '{container_name}'" if container_name else ""
    answer = f"HTTP {exc.status_code} {code}"
    sent = _credential_sent(exc)
    if code == "AuthorizationPermissionMismatch" and role_scope:
        # Owner and Contributor carry no blob data access: an Azure AD sign-in needs a data role
        return ServiceError(redact(
            f"{endpoint} refused {doing} in container '{container_name}' ({answer}): "
            f"your Azure AD sign-in lacks the role \"{DATA_ROLE}\" on the storage account {role_scope}; "
            f"grant it with `az role assignment create --assignee $(az ad signed-in-user show --query id -o tsv) "
            f"--role \"{DATA_ROLE}\" --scope {role_scope}` (a service principal: --assignee its client id; "
            "roles take a few minutes to apply)"))
    if code == KEY_REFUSED and sent in ("account key", "SAS token"):
        return ServiceError(redact(f"{endpoint} did not accept the {sent}{where} ({answer}): "
                                + _renew(sent, from_env)))
    if sent == "Azure AD token" and code in AUTHENTICATION_CODES:
        return ServiceError(redact(f"{endpoint} did not accept your Azure AD sign-in{where} ({answer}): "
                                "run `az login` again, or check AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET"))
    hint = (f": check the credentials in {CONNECTION_STRING_ENV} or your Azure login, and their permissions"
            if exc.status_code in (401, 403) else "")
    return ServiceError(redact(f"{endpoint} refused {doing or 'the request'}"
                            + (f" in container '{container_name}'" if container_name else "")
                            + f" ({answer}){hint}"))


def _renew(sent, from_env):
    """What to do about a refused key or SAS, where it came from."""
    why = "it may have been rotated" if sent == "account key" else "it may have expired or been revoked"
    if from_env:
        what = "the account's current key" if sent == "account key" else "a new SAS"
        return f"{why}; put {what} in {CONNECTION_STRING_ENV}"
    fix = ("give the workspace the new key (`az ml workspace sync-keys`) and update the datastore's credentials"
           if sent == "account key" else "update the datastore's credentials with a new SAS")
    also = f" (or renew {CONNECTION_STRING_ENV} if you set it)" if from_env is None else ""
    return (f"{why}; run the command again to fetch the datastore's current credential, and if it is "
            f"refused again, {fix}{also}")
