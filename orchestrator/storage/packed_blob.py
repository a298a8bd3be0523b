"""Packed datasets in Azure Blob storage: content-addressed upload, listing and garbage collection.

A packed dataset (orchestrator/dataset/pack.py) goes under its prefix as it lies on disk:

    <prefix>/shards/<sha256>.tar   one blob per shard, named by the sha256 of its bytes
    <prefix>/index.json            written last (its sha256 in its metadata): a complete dataset

so an Azure ML `download` input of the prefix is a folder train.py reads as a packed dataset.
Why content addressing: a shard's name says what it holds, so one listing of shard names (no
metadata) tells what is there; nothing there is ever sent again, an interrupted upload resumes
by running it again (a blob appears under its name only once all of it is committed), and a
changed image re-sends only its shard. An upload that replaces an index removes the shards of
the index it replaced that the new one does not name and that are older than the grace period;
other shards no index names (an upload that never finished) stay until `orchestrate data gc`.

Uploads and gc may run at once: before it writes its index, an upload refreshes the metadata of
the shards it found there (which changes their ETag and Last-Modified, and re-sends any that
vanished), and a deletion re-reads the index just before it and deletes only a shard whose ETag
is still the one it listed. One prefix holds one layout: a packed upload refuses a prefix with a
loose (--no-pack) dataset and the loose upload one with a packed index. Every index read here
goes through the job's parser (packed_dataset.parse_index); an index.json that is not one (a
loose dataset's own file, a damaged one) is reported, its folder's shards left alone.
Connections and errors: storage/blob.py.
"""
import os
import threading
import time
from hashlib import sha256
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

from remote_scripts import packed_dataset as layout

from .. import events
from ..dataset.manifest import sha256_file
from ..errors import UsageError, dataset_errors
from .blob import MANIFEST_NAME, SHA256_KEY, blob_name, location, storage_errors

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
    shards_deleted: int
    bytes_deleted: int
    listings: int
    seconds: float
    uri: str
    url: str

    def to_dict(self):
        return asdict(self)


def shard_blob(prefix, name):
    return blob_name(prefix, f"{layout.SHARDS_DIR}/{name}")


def check_layout(container_client, prefix, packed):
    """Refuse to upload one layout under a prefix that holds the other: a packed dataset where a
    loose one (--no-pack, its manifest.json) is, or a loose one where a packed index is (the
    job would take the folder for the packed copy and train on stale data)."""
    from azure.core.exceptions import ResourceNotFoundError

    uri = location(container_client, prefix)[0]
    with storage_errors(container_client, "listing"):
        if packed:
            if container_client.get_blob_client(blob_name(prefix, MANIFEST_NAME)).exists():
                raise UsageError(f"{uri} holds a dataset uploaded with --no-pack; upload the packed one under "
                                "another prefix (--to az://ACCOUNT/CONTAINER/PREFIX) or delete that one first")
            return
        try:
            head = container_client.download_blob(blob_name(prefix, layout.INDEX_NAME), offset=0,
                                                  length=len(layout.INDEX_START)).readall()
        except ResourceNotFoundError:
            return
        if head == layout.INDEX_START:
            raise UsageError(f"{uri} holds a packed dataset; upload --no-pack under another prefix "
                            "(--to az://ACCOUNT/CONTAINER/PREFIX) or delete that one first")


def upload_packed(pack_dir, container_client, prefix, *, on_event=events.ignore, workers=SHARD_WORKERS,
                  grace_hours=DEFAULT_GC_GRACE_HOURS, now=None):
    """Upload the packed dataset in `pack_dir` under `prefix`, sending only the shards the
    container lacks, then the index if it changed; then remove the shards of the index it
    replaced that the new one does not name, when older than `grace_hours` (as `data gc`);
    a PackedUploadResult.

    on_event receives events.transfer("uploading", ...) in shards and in bytes of what is sent
    (shards found there are not counted), one call at a time (bytes come from the upload threads).
    Raises UsageError for a bad folder or a prefix holding a loose dataset, ServiceError for
    missing credentials, refused requests, unreachable endpoints.

    Example:
        >>> result = upload_packed("./pets.packed", container, "pets", on_event=print)
        >>> result.shards_sent, result.index_sent
        (3, True)
    """
    from azure.storage.blob import ContentSettings

    started = time.perf_counter()
    with dataset_errors():
        doc = layout.read_index(str(pack_dir))
    index_data = layout.index_bytes(doc)  # as packed, also where another tool re-wrote the file (is_packed)
    index_digest = sha256(index_data).hexdigest()
    with storage_errors(container_client, "listing"):
        present = _shard_blobs(container_client, prefix)
    check_layout(container_client, prefix, packed=True)
    todo = [s for s in doc["shards"] if shard_blob(prefix, s["name"]) not in present]
    skipped = [s for s in doc["shards"] if shard_blob(prefix, s["name"]) in present]
    progress = _ShardProgress(on_event, todo)

    def send(shard):
        path = f"{pack_dir}/{layout.SHARDS_DIR}/{shard['name']}"
        try:
            if sha256_file(path) != shard["sha256"]:
                raise UsageError(f"{path} does not match its name (changed or damaged since it was packed); "
                                "pack the dataset again")
            if os.path.getsize(path) != shard["size"]:  # the index's size is the length sent
                raise UsageError(f"{path} is {os.path.getsize(path)} bytes, not the {shard['size']} the index "
                                f"{layout.index_path(str(pack_dir))} says (damaged since it was packed); pack "
                                "the dataset again")
            with open(path, "rb") as handle:
                container_client.upload_blob(
                    shard_blob(prefix, shard["name"]), handle, length=shard["size"], overwrite=True,
                    max_concurrency=BLOCK_CONCURRENCY, metadata={SHA256_KEY: shard["sha256"]},
                    content_settings=ContentSettings(content_type=SHARD_CONTENT_TYPE),
                    progress_hook=progress.bytes_hook())
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        return shard

    index_name = blob_name(prefix, layout.INDEX_NAME)
    sent, deleted = list(todo), []
    with storage_errors(container_client, "uploading"), ThreadPoolExecutor(max(1, workers)) as pool:
        try:
            for future in as_completed([pool.submit(send, shard) for shard in todo]):
                future.result()
                progress.shard_sent()
            index_sent = _recorded_digest(container_client, index_name) != index_digest
            if index_sent:
                replaced = _read_stored_index(container_client, prefix)[0]
                # a gc may have listed the shards found there as unreferenced: refresh them (the new
                # ETag stops its deletion) and send again those it deleted since the listing
                vanished = [s for s, there in zip(skipped, pool.map(lambda s: _touch(container_client, prefix, s),
                                                                   skipped)) if not there]
                progress.add(vanished)
                for shard in pool.map(send, vanished):
                    sent.append(shard)
                    progress.shard_sent()
                container_client.upload_blob(index_name, index_data, overwrite=True,
                                             metadata={SHA256_KEY: index_digest},
                                             content_settings=ContentSettings(content_type=INDEX_CONTENT_TYPE))
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    if index_sent and replaced:
        named = {shard_blob(prefix, s["name"]) for s in doc["shards"]}
        cutoff = (now or datetime.now(timezone.utc)) - timedelta(hours=grace_hours)
        old = [present[shard_blob(prefix, s["name"])] for s in replaced["shards"]
               if shard_blob(prefix, s["name"]) in present and shard_blob(prefix, s["name"]) not in named]
        deleted = _delete_unreferenced(container_client, {prefix: [b for b in old if b.last_modified <= cutoff]},
                                       workers)
    uri, url = location(container_client, prefix)
    resent = {s["name"] for s in sent}
    kept = [s for s in skipped if s["name"] not in resent]
    return PackedUploadResult(images=len(doc["files"]), shards_sent=len(sent), bytes_sent=sum(s["size"] for s in sent),
                              shards_skipped=len(kept), bytes_skipped=sum(s["size"] for s in kept),
                              index_sent=index_sent, shards_deleted=len(deleted),
                              bytes_deleted=sum(b.size for b in deleted), listings=1,
                              seconds=round(time.perf_counter() - started, 3), uri=uri, url=url)


def pack_and_upload(data_dir, prefix, open_container, *, labels="folder", max_side=None, shard_bytes=None,
                    on_event=events.ignore):
    """Pack `data_dir` into its packing folder (pack.default_pack_dir; a folder packed already is
    taken as it is), then send what the container lacks under `prefix`; (PackResult, PackedUploadResult).

    Why `open_container` is a callable: it is called after packing, so a bad folder is reported
    before any sign-in. on_event receives pack_dataset's events, the pack's warnings as
    events.notice("warning: ..."), then upload_packed's.

    Example:
        >>> packed, sent = pack_and_upload("./pets", "pets", lambda: container, on_event=print)
        >>> packed.shards == sent.shards_sent + sent.shards_skipped
        True
    """
    from ..dataset.pack import DEFAULT_SHARD_MB, default_pack_dir, pack_dataset, packed_summary

    if layout.is_packed(str(data_dir)):  # packed already (orchestrate data pack): sent as it is
        packed = packed_summary(data_dir)
    else:
        packed = pack_dataset(data_dir, default_pack_dir(data_dir), labels=labels, max_side=max_side,
                              shard_bytes=DEFAULT_SHARD_MB << 20 if shard_bytes is None else shard_bytes,
                              on_event=on_event)
    for warning in packed.warnings:
        on_event(events.notice(f"warning: {warning}"))
    return packed, upload_packed(packed.out_dir, open_container(), prefix, on_event=on_event)


class _ShardProgress:
    """upload_packed's transfer events: shards and bytes sent of those to send, one on_event call
    at a time (azure's progress hooks run on the upload threads)."""

    def __init__(self, on_event, todo):
        self.on_event = on_event
        self.lock = threading.Lock()
        self.shards = self.bytes = 0
        self.total_shards, self.total_bytes = len(todo), sum(s["size"] for s in todo)
        self._emit()

    def _emit(self):
        self.on_event(events.transfer("uploading", self.shards, self.total_shards, "shards"))
        self.on_event(events.transfer("uploading", self.bytes, self.total_bytes, "bytes"))

    def add(self, shards):
        """More shards to send (those a gc deleted since the listing)."""
        with self.lock:
            self.total_shards += len(shards)
            self.total_bytes += sum(s["size"] for s in shards)

    def shard_sent(self):
        with self.lock:
            self.shards += 1
            self._emit()

    def bytes_hook(self):
        """azure's progress_hook(current, total) of one blob, as this upload's bytes sent."""
        last = [0]

        def hook(current, total):
            with self.lock:
                self.bytes += current - last[0]
                last[0] = current
                self.on_event(events.transfer("uploading", self.bytes, self.total_bytes, "bytes"))
        return hook


def _shard_blobs(container_client, prefix):
    """{blob name: properties} of the shards under the prefix, in one listing (no metadata);
    creates a missing container (listing first, so that a SAS without create permission still works)."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    try:
        return {blob.name: blob for blob in container_client.list_blobs(name_starts_with=shard_blob(prefix, ""))}
    except ResourceNotFoundError:
        try:
            container_client.create_container()
        except ResourceExistsError:  # created by a concurrent upload
            pass
        return {}


def _touch(container_client, prefix, shard):
    """Rewrite a shard blob's metadata, which gives it a new ETag and Last-Modified (so a gc that
    listed it before deletes it no more, and one after keeps it for the grace period); False
    when it is gone."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        container_client.get_blob_client(shard_blob(prefix, shard["name"])).set_blob_metadata(
            {SHA256_KEY: shard["sha256"]})
        return True
    except ResourceNotFoundError:
        return False


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
    """{folder: {"index": blob, "manifest": blob, "shards": {name: blob}, "blobs": [blobs]}} in one
    listing. A shard's folder may lie above the prefix (--to .../DATASET/shards): its index is
    then not in the listing, and is read by name (_read_stored_index) all the same."""
    from azure.core.exceptions import ResourceNotFoundError

    folders = {}
    start = f"{prefix.strip('/')}/" if prefix.strip("/") else None
    try:
        blobs = list(container_client.list_blobs(name_starts_with=start))
    except ResourceNotFoundError:
        raise UsageError(f"container '{container_client.container_name}' does not exist") from None
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


def _read_stored_index(container_client, folder):
    """(document, last modified, problem) of <folder>/index.json, read by name and checked by the
    job's parser: (None, None, None) when there is none, (None, time, reason) when it is not a
    packed dataset's index (a loose dataset's own file, damaged, another version)."""
    from azure.core.exceptions import ResourceNotFoundError

    name = blob_name(folder, layout.INDEX_NAME)
    try:
        stream = container_client.download_blob(name)
        data = stream.readall()
    except ResourceNotFoundError:
        return None, None, None
    try:
        return layout.parse_index(data, name), stream.properties.last_modified, None
    except layout.DatasetError as exc:
        return None, stream.properties.last_modified, str(exc)


def _named_shards(folder, doc):
    return {shard_blob(folder, s["name"]) for s in doc["shards"]}


def list_datasets(container_client, prefix=""):
    """The datasets under `prefix`, sorted by prefix: one listing, plus one read per index.
    A folder whose index.json is not a packed index is listed as "unknown" when it has shards
    (which gc leaves alone), else not at all."""
    datasets = []
    with storage_errors(container_client, "listing"):
        for folder, found in sorted(_scan_container(container_client, prefix).items()):
            shards = found.get("shards", {})
            doc, modified, problem = (_read_stored_index(container_client, folder) if shards or "index" in found
                                      else (None, None, None))
            if doc is not None:
                referenced = _named_shards(folder, doc)
                used = [b for n, b in shards.items() if n in referenced]
                unused = [b for n, b in shards.items() if n not in referenced]
                datasets.append(StoredDataset(folder, "packed", len(doc["files"]), len(used), sum(b.size for b in used),
                                              len(unused), sum(b.size for b in unused), modified.isoformat()))
            elif shards:  # shards of an upload that never wrote its index, or of an index not read here
                datasets.append(StoredDataset(folder, "unknown" if problem else "incomplete", 0, 0, 0, len(shards),
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
    unreadable: list  # folders whose index.json is not a packed index: their shards are left alone

    def to_dict(self):
        return asdict(self)


def collect_garbage(container_client, prefix="", *, grace_hours=DEFAULT_GC_GRACE_HOURS, dry_run=False,
                    now=None, workers=SHARD_WORKERS):
    """Remove the shards under `prefix` that no index names; a GcResult.

    A shard younger than `grace_hours` is kept even so: an upload in progress sends its shards
    before its index. Each shard folder's index is read by name, also when it lies above the
    prefix, and read again just before deleting (_delete_unreferenced).
    """
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(hours=grace_hours)
    candidates, recent, unreadable = {}, 0, []
    with storage_errors(container_client, "listing"):
        for folder, found in sorted(_scan_container(container_client, prefix).items()):
            if not found.get("shards"):
                continue
            doc, _, problem = _read_stored_index(container_client, folder)
            if problem:
                unreadable.append(folder)
                continue
            referenced = _named_shards(folder, doc) if doc else set()
            for name, blob in found["shards"].items():
                if name in referenced:
                    continue
                if blob.last_modified > cutoff:
                    recent += 1
                else:
                    candidates.setdefault(folder, []).append(blob)
    if dry_run:
        doomed = [blob for blobs in candidates.values() for blob in blobs]
    else:
        doomed = _delete_unreferenced(container_client, candidates, workers)
    return GcResult(removed=sorted(b.name for b in doomed), bytes=sum(b.size for b in doomed),
                    kept_recent=recent, dry_run=dry_run, unreadable=unreadable)


def _delete_unreferenced(container_client, candidates, workers=SHARD_WORKERS):
    """Delete the shard blobs of {folder: [listed blobs]} that its index (read again now) does
    not name, each only if its ETag is still the listed one (an upload that found it there since
    has refreshed it); the blobs deleted."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

    doomed = []
    with storage_errors(container_client, "listing"):
        for folder, blobs in candidates.items():
            if not blobs:
                continue
            doc, _, problem = _read_stored_index(container_client, folder)
            if not problem:
                referenced = _named_shards(folder, doc) if doc else set()
                doomed += [blob for blob in blobs if blob.name not in referenced]

    def delete(blob):
        try:
            container_client.delete_blob(blob.name, etag=blob.etag, match_condition=MatchConditions.IfNotModified)
            return True
        except (ResourceModifiedError, ResourceNotFoundError):  # claimed by an upload, or gone already
            return False

    if not doomed:
        return []
    with storage_errors(container_client, "deleting"), ThreadPoolExecutor(max(1, workers)) as pool:
        return [blob for blob, gone in zip(doomed, pool.map(delete, doomed)) if gone]
