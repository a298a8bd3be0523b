"""Packed datasets in Azure Blob storage: content-addressed upload, listing and garbage collection.

A packed dataset (orchestrator/dataset/pack.py) goes under its prefix as it lies on disk:

    <prefix>/shards/<sha256>.tar   one blob per shard, named by the sha256 of its bytes
    <prefix>/index.json            written last (its sha256 in its metadata): a complete dataset

so an Azure ML `download` input of the prefix is a folder train.py reads as a packed dataset.
Why content addressing: a shard's name says what it holds, so one listing of shard names (no
metadata) tells what is there; nothing there is ever sent again, an interrupted upload resumes
by running it again (a blob appears under its name only once all of it is committed), and a
changed image re-sends only its shard. Shards that no index names any more (after a change, or
an upload that never finished) stay until `orchestrate data gc` removes them, so a job that
started on the previous index keeps its files. Connections and errors: storage/blob.py.
"""
import time
from hashlib import sha256
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

from remote_scripts import packed_dataset as layout

from ..dataset.manifest import sha256_file
from ..errors import UserError
from .blob import MANIFEST_NAME, SHA256_KEY, _azure_errors, _blob_name, location

# Shards are a few tens of MB: a few in parallel, each in parallel blocks, keeps the link busy
# without exceeding requests' 10 connections per host.
SHARD_WORKERS = 4
BLOCK_CONCURRENCY = 2
SHARD_CONTENT_TYPE = "application/x-tar"
INDEX_CONTENT_TYPE = "application/json"
# gc keeps unnamed shards younger than this: an upload in progress writes its index last.
DEFAULT_GC_GRACE_HOURS = 1.0


@dataclass
class PackedUploadResult:
    """What a packed upload did; `to_dict` is the `--json` summary."""

    images: int
    shards_sent: int
    bytes_sent: int
    shards_skipped: int
    bytes_skipped: int
    index_sent: bool
    listings: int
    seconds: float
    uri: str
    url: str

    def to_dict(self):
        return asdict(self)


def shard_blob(prefix, name):
    return _blob_name(prefix, f"{layout.SHARDS_DIR}/{name}")


def upload_packed(pack_dir, container_client, prefix, *, on_shard=None, on_bytes=None, workers=SHARD_WORKERS):
    """Upload the packed dataset in `pack_dir` under `prefix`, sending only the shards the
    container lacks, then the index if it changed.

    on_shard(shard, sent): called on this thread as each shard is sent or found there;
    on_bytes(n): called (from upload threads) as bytes go out.
    Raises UserError for a bad folder, missing credentials, refused requests, unreachable endpoints.
    """
    from azure.storage.blob import ContentSettings

    started = time.perf_counter()
    try:
        doc = layout.read_index(str(pack_dir))
    except layout.DatasetError as exc:
        raise UserError(str(exc)) from None
    with open(layout.index_path(str(pack_dir)), "rb") as handle:
        index_data = handle.read()
    index_digest = sha256(index_data).hexdigest()
    with _azure_errors(container_client, "listing"):
        present = _shard_names(container_client, prefix)
    todo = [s for s in doc["shards"] if shard_blob(prefix, s["name"]) not in present]
    skipped = [s for s in doc["shards"] if shard_blob(prefix, s["name"]) in present]
    for shard in skipped:
        if on_shard:
            on_shard(shard, False)

    def send(shard):
        path = f"{pack_dir}/{layout.SHARDS_DIR}/{shard['name']}"
        try:
            if sha256_file(path) != shard["sha256"]:
                raise UserError(f"{path} does not match its name (changed or damaged since it was packed); "
                                "pack the dataset again")
            with open(path, "rb") as handle:
                container_client.upload_blob(
                    shard_blob(prefix, shard["name"]), handle, length=shard["size"], overwrite=True,
                    max_concurrency=BLOCK_CONCURRENCY, metadata={SHA256_KEY: shard["sha256"]},
                    content_settings=ContentSettings(content_type=SHARD_CONTENT_TYPE),
                    progress_hook=_progress_hook(on_bytes))
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from None
        return shard

    with _azure_errors(container_client, "uploading"), ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(send, shard) for shard in todo]
        try:
            for future in as_completed(futures):
                shard = future.result()
                if on_shard:
                    on_shard(shard, True)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
        index_sent = _recorded_digest(container_client, _blob_name(prefix, layout.INDEX_NAME)) != index_digest
        if index_sent:
            container_client.upload_blob(_blob_name(prefix, layout.INDEX_NAME), index_data, overwrite=True,
                                         metadata={SHA256_KEY: index_digest},
                                         content_settings=ContentSettings(content_type=INDEX_CONTENT_TYPE))
    uri, url = location(container_client, prefix)
    return PackedUploadResult(images=len(doc["files"]), shards_sent=len(todo), bytes_sent=sum(s["size"] for s in todo),
                              shards_skipped=len(skipped), bytes_skipped=sum(s["size"] for s in skipped),
                              index_sent=index_sent, listings=1, seconds=round(time.perf_counter() - started, 3),
                              uri=uri, url=url)


def pack_and_upload(data_dir, prefix, open_container, *, labels="folder", max_side=None, shard_bytes=None,
                    say=None, progress=None, on_upload_start=None, on_shard=None, on_bytes=None):
    """Pack `data_dir` into its packing folder (pack.default_pack_dir; a folder packed already is
    taken as it is), then send what the container lacks under `prefix`; (PackResult, PackedUploadResult).

    `open_container` is called after packing, so a bad folder is reported before any login;
    say(line) receives the pack's warnings; progress is pack_dataset's, on_upload_start(shards,
    bytes) is called before the upload, on_shard and on_bytes are upload_packed's.
    """
    from ..dataset.pack import DEFAULT_SHARD_MB, PackResult, default_pack_dir, pack_dataset

    if layout.is_packed(str(data_dir)):  # packed already (orchestrate data pack): sent as it is
        doc = layout.read_index(str(data_dir))
        packed = PackResult(out_dir=str(data_dir), files=len(doc["files"]), unique=sum(s["count"] for s in doc["shards"]),
                            shards=len(doc["shards"]), shards_written=0, shards_kept=len(doc["shards"]),
                            bytes=sum(s["size"] for s in doc["shards"]))
    else:
        packed = pack_dataset(data_dir, default_pack_dir(data_dir), labels=labels, max_side=max_side,
                              shard_bytes=shard_bytes or DEFAULT_SHARD_MB << 20, progress=progress)
    for warning in packed.warnings:
        if say:
            say(f"warning: {warning}")
    if on_upload_start:
        on_upload_start(packed.shards, packed.bytes)
    return packed, upload_packed(packed.out_dir, open_container(), prefix, on_shard=on_shard, on_bytes=on_bytes)


def _progress_hook(on_bytes):
    """azure's progress_hook(current, total) as deltas for on_bytes."""
    if on_bytes is None:
        return None
    last = [0]

    def hook(current, total):
        on_bytes(current - last[0])
        last[0] = current
    return hook


def _shard_names(container_client, prefix):
    """The shard blob names under the prefix, in one listing of names only; creates a missing
    container (listing first, so that a SAS without create permission still works)."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    try:
        return set(container_client.list_blob_names(name_starts_with=shard_blob(prefix, "")))
    except ResourceNotFoundError:
        try:
            container_client.create_container()
        except ResourceExistsError:  # created by a concurrent upload
            pass
        return set()


def _recorded_digest(container_client, name):
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return (container_client.get_blob_client(name).get_blob_properties().metadata or {}).get(SHA256_KEY)
    except ResourceNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# What a container holds: `orchestrate data list` and `data gc`


@dataclass
class StoredDataset:
    """One dataset under a prefix: packed (index.json, shards/) or loose (manifest.json)."""

    prefix: str
    kind: str
    images: int
    shards: int
    bytes: int
    unreferenced_shards: int
    unreferenced_bytes: int
    last_upload: str

    def to_dict(self):
        return asdict(self)


def _dataset_folder(name):
    """(folder, what) of a blob: ("a/b", "index") for a/b/index.json, ("a/b", "shard") for
    a/b/shards/<name>.tar, ("a/b", "manifest") for a/b/manifest.json, else (None, None)."""
    head, _, leaf = name.rpartition("/")
    if leaf == layout.INDEX_NAME:
        return head, "index"
    if leaf == MANIFEST_NAME:
        return head, "manifest"
    folder, _, kind = head.rpartition("/")
    if kind == layout.SHARDS_DIR and leaf.endswith(layout.SHARD_SUFFIX) and len(leaf) == 64 + len(layout.SHARD_SUFFIX):
        return folder, "shard"
    return None, None


def _scan_container(container_client, prefix):
    """{folder: {"index": blob, "manifest": blob, "shards": {name: blob}, "blobs": [blobs]}} in one listing."""
    from azure.core.exceptions import ResourceNotFoundError

    folders = {}
    start = f"{prefix.strip('/')}/" if prefix.strip("/") else None
    try:
        blobs = list(container_client.list_blobs(name_starts_with=start))
    except ResourceNotFoundError:
        raise UserError(f"container '{container_client.container_name}' does not exist") from None
    for blob in blobs:
        folder, what = _dataset_folder(blob.name)
        if what == "shard":
            folders.setdefault(folder, {}).setdefault("shards", {})[blob.name] = blob
        elif what:
            folders.setdefault(folder, {})[what] = blob
    for blob in blobs:  # the files of loose datasets: everything under a manifest's folder
        for folder, found in folders.items():
            if "manifest" in found and (not folder or blob.name.startswith(folder + "/")):
                found.setdefault("blobs", []).append(blob)
    return folders


def _referenced(container_client, folder, index_blob):
    """The shard blob names and image count of the index `index_blob`."""
    import json

    doc = json.loads(container_client.download_blob(index_blob.name).readall())
    return {shard_blob(folder, s["name"]) for s in doc.get("shards", [])}, len(doc.get("files", []))


def list_datasets(container_client, prefix=""):
    """The datasets under `prefix`, sorted by prefix: one listing, plus one read per index."""
    datasets = []
    with _azure_errors(container_client, "listing"):
        for folder, found in sorted(_scan_container(container_client, prefix).items()):
            shards = found.get("shards", {})
            if "index" in found:
                referenced, images = _referenced(container_client, folder, found["index"])
                used = [b for n, b in shards.items() if n in referenced]
                unused = [b for n, b in shards.items() if n not in referenced]
                datasets.append(StoredDataset(folder, "packed", images, len(used), sum(b.size for b in used),
                                              len(unused), sum(b.size for b in unused),
                                              found["index"].last_modified.isoformat()))
            elif shards:  # shards of an upload that never wrote its index
                datasets.append(StoredDataset(folder, "incomplete", 0, 0, 0, len(shards),
                                              sum(b.size for b in shards.values()),
                                              max(b.last_modified for b in shards.values()).isoformat()))
            if "manifest" in found:
                blobs = found.get("blobs", [])
                datasets.append(StoredDataset(folder, "loose", sum(1 for b in blobs if b.name != found["manifest"].name),
                                              0, sum(b.size for b in blobs), 0, 0,
                                              found["manifest"].last_modified.isoformat()))
    return datasets


@dataclass
class GcResult:
    removed: list
    bytes: int
    kept_recent: int
    dry_run: bool

    def to_dict(self):
        return asdict(self)


def collect_garbage(container_client, prefix="", *, grace_hours=DEFAULT_GC_GRACE_HOURS, dry_run=False,
                    now=None, workers=SHARD_WORKERS):
    """Remove the shards under `prefix` that no index names; a GcResult.

    A shard younger than `grace_hours` is kept even so: an upload in progress sends its shards
    before its index.
    """
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(hours=grace_hours)
    doomed, recent = [], 0
    with _azure_errors(container_client, "listing"):
        for folder, found in _scan_container(container_client, prefix).items():
            referenced = _referenced(container_client, folder, found["index"])[0] if "index" in found else set()
            for name, blob in found.get("shards", {}).items():
                if name in referenced:
                    continue
                if blob.last_modified > cutoff:
                    recent += 1
                else:
                    doomed.append(blob)
    if not dry_run and doomed:
        with _azure_errors(container_client, "deleting"), ThreadPoolExecutor(workers) as pool:
            list(pool.map(container_client.delete_blob, [b.name for b in doomed]))
    return GcResult(removed=sorted(b.name for b in doomed), bytes=sum(b.size for b in doomed),
                    kept_recent=recent, dry_run=dry_run)
