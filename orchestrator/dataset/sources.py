"""Where a dataset is read from: a local folder, an S3 prefix or an Azure blob prefix.

Packing (pack.py) asks three things of a source: the scan (which images, under which labels),
the sha256 of each image, and the bytes of one image at a time. A local folder answers as it
always has (folder_dataset.scan, manifest's hashing with its stat-keyed cache, plain reads). An
object store answers from one listing of its prefix: the keys below it are the relative paths,
scanned by the job's own rules (folder_dataset.scan_listing), a label table is an object read
through the source, and each object is read into memory when it is hashed and again when its
shard is written, a few at a time from a thread pool. Nothing of the loose images is written to
disk: the shards are the only copy. Why twice: a shard is named by its members' digests, so no
shard can be written before every image is hashed, and keeping the bytes in between would be a
full copy of the dataset. A re-pack reads neither: digests are cached by (URI, size, ETag), and
a shard whose members have not changed is kept.

Errors are one-line UsageErrors, translated here once per store, without secrets: no
credentials, a missing bucket or container, an empty prefix, refused access, an unreachable
endpoint.
"""
import hashlib
import os
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from remote_scripts.folder_dataset import scan, scan_listing

from ..errors import ServiceError, UsageError, dataset_errors
from ..secrets import redact
from .manifest import Entry, Manifest, hash_cache, manifest_from_scan, scanned_files

S3_SCHEME, BLOB_SCHEME = "s3://", "az://"
# Reads in flight per source: small objects are latency-bound, so more than the CPUs.
READ_WORKERS = 16
# Held in memory at most while a consumer catches up: so many objects, and so many bytes (a
# prefix of 20 MB photos would otherwise hold 640 MB)
READ_AHEAD = 2 * READ_WORKERS
READ_AHEAD_BYTES = 256 << 20
# botocore retries and timeouts: a dead endpoint is said in seconds, not minutes
S3_RETRIES = 3
S3_CONNECT_TIMEOUT = 10
_BUCKET = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                     "InvalidClientTokenId", "AuthorizationHeaderMalformed"}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem"}


def is_uri(data):
    """True for DATA that names an object store prefix (s3://, az://) rather than a folder."""
    return str(data).startswith((S3_SCHEME, BLOB_SCHEME))


def open_source(data):
    """The source of DATA: S3Source for s3://, BlobSource for az://, else LocalSource. A URI is
    parsed here (a bad one is refused at once); nothing is listed or read yet."""
    data = str(data)
    if data.startswith(S3_SCHEME):
        return S3Source(data)
    if data.startswith(BLOB_SCHEME):
        return BlobSource(data)
    return LocalSource(data)


class LocalSource:
    """A folder on this machine: scanned, hashed and read exactly as before sources existed."""

    remote = False

    def __init__(self, root):
        self.root = Path(root)
        self.key = str(self.root.resolve())  # what names its pack folder (pack.default_pack_dir)
        self.name = self.root.resolve().name

    def where(self, path):
        return str(self.root / path)

    def contains(self, folder):
        """True when `folder` is the data folder or inside it (a pack there would be scanned as data)."""
        root, folder = self.root.resolve(), Path(folder).resolve()
        return folder == root or root in folder.parents

    def scan(self, labels):
        with dataset_errors():
            return scan(str(self.root), labels=labels)

    def manifest(self, found, labels, cache, progress):
        return manifest_from_scan(self.root, found, labels=labels, cache=cache, progress=progress)

    def read_many(self, paths):
        """The bytes of each path in turn (a local read is fast: no read-ahead)."""
        return ((self.root / path).read_bytes() for path in paths)


@dataclass(frozen=True)
class StoredObject:
    """One object of a listing: its size and its version (the ETag, new with every write)."""

    size: int
    version: str


class RemoteSource:
    """An object store prefix: one listing, the job's scan rules on its keys, reads in a pool.

    Subclasses give `uri`, `key`, `name`, `prefix`, `holder` (what holds the prefix: bucket,
    container) and implement `_list(start)` (yielding key, size and ETag of every object whose
    key begins with `start`) and `_read(key)` (its bytes), both raising UsageError for what the
    store refuses.
    """

    remote = True

    def __init__(self):
        self._objects = None

    def where(self, path):
        return f"{self.uri}/{path}"

    def contains(self, folder):
        return False

    def objects(self):
        """{relative path: StoredObject} under the prefix, listed once. Folder markers (keys
        ending in '/') and keys that are no path inside the prefix ('a//b', '../b') are no
        files of a folder and are left out; an empty prefix is an error."""
        if self._objects is None:
            start = f"{self.prefix}/" if self.prefix else ""
            found = {}
            for key, size, etag in self._list(start):
                relative = key[len(start):]
                if not any(part in ("", ".", "..") for part in relative.split("/")):
                    # "etag ...": text that the hash cache's INTEGER column never takes for a number
                    found[relative] = StoredObject(size, f"etag {etag}")
            if not found:
                raise UsageError(f"{self.uri} is empty: no objects under it (check the {self.holder} and the prefix)")
            self._objects = found
        return self._objects

    def scan(self, labels):
        with dataset_errors():
            return scan_listing(self.uri, list(self.objects()), self.read, labels=labels)

    def read(self, path):
        return self._read(f"{self.prefix}/{path}" if self.prefix else path)

    def read_many(self, paths):
        """The bytes of each path, in order, read ahead by a thread pool: at most READ_AHEAD
        objects and READ_AHEAD_BYTES (by the listing's sizes) in flight or held at once, whatever
        the dataset's size; an object larger than that is read alone."""
        sizes = self.objects()
        pool = ThreadPoolExecutor(READ_WORKERS)
        pending, held = deque(), 0
        try:
            for path in paths:
                size = sizes[path].size
                while pending and (len(pending) >= READ_AHEAD or held + size > READ_AHEAD_BYTES):
                    done, future = pending.popleft()
                    held -= done
                    yield future.result()
                pending.append((size, pool.submit(self.read, path)))
                held += size
            while pending:
                yield pending.popleft()[1].result()
        finally:
            pool.shutdown(cancel_futures=True)

    def manifest(self, found, labels, cache, progress):
        """The Manifest of a scan: digests cached under (URI of the object, size, ETag) are
        taken as they are, the other objects are read and hashed."""
        objects = self.objects()
        entries, todo = [], []
        with hash_cache(cache) as opened:
            known = opened.under(self.uri) if opened else {}
            for path, label in scanned_files(found, labels):
                path = os.path.normpath(path).replace(os.sep, "/")  # a table given as ./tags.tsv
                stored = objects[path]
                cached = known.get(self.where(path))
                entry = Entry(path, stored.size, "", label)
                if cached and cached[:2] == (stored.size, stored.version):
                    entries.append(replace(entry, sha256=cached[2]))
                    if progress:
                        progress(entries[-1])
                else:
                    todo.append(entry)
            rows = []
            for entry, data in zip(todo, self.read_many(entry.path for entry in todo)):
                if len(data) != entry.size:
                    raise UsageError(f"{self.where(entry.path)} changed while it was read; run the command again")
                entries.append(replace(entry, sha256=hashlib.sha256(data).hexdigest()))
                rows.append((self.where(entry.path), entry.size, objects[entry.path].version, entries[-1].sha256))
                if progress:
                    progress(entries[-1])
            if opened and rows:
                opened.put_many(rows)
        return Manifest(self.name, list(found.classes), sorted(entries, key=lambda e: e.path))


class S3Source(RemoteSource):
    """s3://BUCKET[/PREFIX] through boto3, with the usual AWS credentials chain (environment,
    ~/.aws files, AWS_PROFILE, instance roles) and AWS_ENDPOINT_URL (which boto3 reads itself)
    for another S3 service."""

    holder = "bucket"

    def __init__(self, uri):
        super().__init__()
        m = _BUCKET.match(uri)
        prefix = ((m["prefix"] or "") if m else "").strip("/")
        if not m or any(part in (".", "..") for part in prefix.split("/")):
            raise UsageError(f"bad S3 URI {redact(uri)!r}: expected s3://BUCKET[/PREFIX] (bucket: 3-63 lowercase "
                            "letters, digits, dots, hyphens)")
        self.bucket, self.prefix = m["bucket"], prefix
        self.uri = self.key = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.name = self.prefix.rsplit("/", 1)[-1] or self.bucket
        self._client = None

    def client(self):
        """The boto3 S3 client, made once (clients are thread-safe; the pool reads through one)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            with self._errors("connecting to"):
                self._client = boto3.session.Session().client("s3", config=Config(
                    max_pool_connections=READ_WORKERS, connect_timeout=S3_CONNECT_TIMEOUT,
                    retries={"max_attempts": S3_RETRIES, "mode": "standard"}))
        return self._client

    def _list(self, start):
        client = self.client()
        with self._errors("listing"):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents", []):
                    yield item["Key"], item["Size"], item["ETag"]

    def _read(self, key):
        client = self.client()
        with self._errors("reading", key):
            return client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    @contextmanager
    def _errors(self, doing, key=None):
        """botocore's exceptions as one-line ServiceErrors, built from the error code (never from
        the request, which carries the access key id in its signature)."""
        from botocore.exceptions import BotoCoreError, ClientError
        from botocore.exceptions import ConnectionError as UnreachableError
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError, ProfileNotFound

        endpoint = self._client.meta.endpoint_url if self._client else "S3"
        what = f"s3://{self.bucket}/{key}" if key else self.uri
        try:
            yield
        except (NoCredentialsError, PartialCredentialsError):
            raise ServiceError(f"no AWS credentials for {self.uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                            "or AWS_PROFILE with ~/.aws/credentials (`aws configure`)") from None
        except ProfileNotFound as exc:
            raise ServiceError(f"AWS profile '{exc.kwargs.get('profile')}' is not in ~/.aws/config or "
                            "~/.aws/credentials: check AWS_PROFILE") from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                raise ServiceError(f"S3 bucket '{self.bucket}' does not exist at {endpoint}") from None
            if code in _CREDENTIAL_CODES:
                raise ServiceError(f"{endpoint} refused the AWS credentials ({code}) while {doing} {what}: check "
                                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE") from None
            if code in _DENIED_CODES or status == 403:
                raise ServiceError(f"{endpoint} denied {doing} {what} ({code or status}): the AWS credentials need "
                                "s3:ListBucket on the bucket and s3:GetObject on the prefix") from None
            if key and (code == "NoSuchKey" or status == 404):
                raise UsageError(f"{what} is gone (deleted since it was listed); run the command again") from None
            raise ServiceError(redact(f"{endpoint} refused {doing} {what} (HTTP {status} {code})")) from None
        except UnreachableError as exc:
            raise ServiceError(f"cannot reach S3 at {endpoint} while {doing} {what} ({type(exc).__name__}); check "
                            "AWS_ENDPOINT_URL and the network") from None
        except BotoCoreError as exc:
            raise ServiceError(redact(f"S3 error while {doing} {what}: {exc}")) from None


class BlobSource(RemoteSource):
    """az://ACCOUNT/CONTAINER[/PREFIX]: a loose, folder-per-label dataset in Azure Blob storage,
    through the product's one client factory (storage.blob.connect: the connection string, or
    else the Azure login)."""

    holder = "container"

    def __init__(self, uri):
        from ..storage.blob import parse_uri

        super().__init__()
        self.target = parse_uri(uri)
        self.prefix = self.target.prefix
        self.uri = self.key = self.target.uri
        self.name = self.prefix.rsplit("/", 1)[-1] or self.target.container
        self._container = None

    def container(self):
        if self._container is None:
            from ..storage.blob import connect

            self._container = connect(self.target, os.environ)
        return self._container

    def _list(self, start):
        from azure.core.exceptions import ResourceNotFoundError

        from ..storage.blob import storage_errors

        container = self.container()
        with storage_errors(container, "listing"):
            try:
                for blob in container.list_blobs(name_starts_with=start or None, include=["metadata"]):
                    if (blob.metadata or {}).get("hdi_isfolder") != "true":  # hierarchical namespace folders
                        yield blob.name, blob.size, blob.etag
            except ResourceNotFoundError:
                raise UsageError(f"container '{self.target.container}' does not exist in storage account "
                                f"'{self.target.account}'") from None

    def _read(self, key):
        from azure.core.exceptions import ResourceNotFoundError

        from ..storage.blob import storage_errors

        container = self.container()
        with storage_errors(container, "reading"):
            try:
                return container.download_blob(key).readall()
            except ResourceNotFoundError:
                raise UsageError(f"az://{self.target.account}/{self.target.container}/{key} is gone (deleted since "
                                "it was listed); run the command again") from None
