"""Datasets in cloud storage, from Python: pack, upload, list and collect garbage.

What `orchestrate data pack|upload|list|gc` do, with their policy (where an upload goes, the
defaults, what is refused before anything is sent) here, so that a notebook and the CLI behave
alike. Progress arrives as event dicts through `on_event` (events.transfer for scanning, hashing,
packing and uploading; events.notice for the dataset's warnings); results are dataclasses whose
`to_dict()` is the CLI's `--json` summary.

Where an upload goes: `to` (az://ACCOUNT/CONTAINER[/PREFIX]), else $ORCHESTRATE_STORAGE_URI, else
container DEFAULT_CONTAINER of the account of $AZURE_STORAGE_CONNECTION_STRING; the prefix
defaults to the dataset's name. Credentials: AZURE_STORAGE_CONNECTION_STRING, or else the Azure
login (DefaultAzureCredential).

Example:
    >>> import orchestrator
    >>> packed = orchestrator.data.pack("./EuroSAT", "./EuroSAT.packed")
    >>> sent = orchestrator.data.upload("./EuroSAT", "az://myaccount/datasets", on_event=print)
    >>> sent.uri
    'az://myaccount/datasets/EuroSAT'
"""
from __future__ import annotations

import builtins
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import events
from .errors import UsageError, dataset_errors
from .events import OnEvent

if TYPE_CHECKING:  # imported when used: `import orchestrator` stays light
    from .dataset.pack import PackResult
    from .storage.blob import BlobTarget, UploadResult
    from .storage.packed_blob import GcResult, PackedUploadResult, StoredDataset

URI_ENV = "ORCHESTRATE_STORAGE_URI"
DEFAULT_CONTAINER = "datasets"



@dataclass
class Upload:
    """What `upload` did: `sent` (the storage's result: files or shards sent and skipped, the
    dataset's az:// `uri` and https `url`) and, for a packed upload, `pack` (the PackResult).

    Example:
        >>> result = orchestrator.data.upload("./pets", "az://myaccount/datasets")
        >>> result.sent.bytes_sent, result.to_dict()["uri"]
        (1048576, 'az://myaccount/datasets/pets')
    """

    sent: UploadResult | PackedUploadResult
    pack: PackResult | None = None

    @property
    def uri(self) -> str:
        """az://ACCOUNT/CONTAINER/PREFIX of the uploaded dataset."""
        return self.sent.uri

    def to_dict(self) -> dict:
        """The `orchestrate data upload --json` summary."""
        return {**self.sent.to_dict(), **({"pack": self.pack.to_dict()} if self.pack else {})}


def pack(source: str | os.PathLike, out: str | os.PathLike | None = None, *, labels: str | None = "folder",
         max_side: int | None = None, shard_size: float | None = None,
         on_event: OnEvent | None = None) -> PackResult:
    """Pack a labeled image folder (or s3://BUCKET/PREFIX, az://ACCOUNT/CONTAINER/PREFIX, read object
    by object) into tar shards and an index.json, which every backend trains on as it reads the folder.

    Why pack: a few large shards upload and download far faster than thousands of small files, and
    the same images always give byte-identical shards, so a re-upload sends only what changed.
    out: the packed folder (None: the source's cache folder, pack.default_pack_dir).
    labels: folder, filename or a .tsv/.csv label table inside `source` (as train's labels=; None: folder).
    max_side: downscale images whose longer side exceeds it. shard_size: largest shard in MB (default 64).
    The pack's warnings (duplicates, links left out, empty folders) reach on_event as
    events.notice("warning: ..."). Raises DatasetError or UsageError for unusable data or options.

    Example:
        >>> result = orchestrator.data.pack("./EuroSAT", "./EuroSAT.packed", max_side=256)
        >>> result.files, result.shards
        (27000, 12)
    """
    from .dataset.pack import default_pack_dir, pack_dataset

    on_event = on_event or events.ignore
    labels = _label_source(source, labels)
    options = {"shard_bytes": _shard_bytes(shard_size)} if shard_size is not None else {}
    result = pack_dataset(source, default_pack_dir(source) if out is None else out, labels=labels,
                          max_side=max_side, on_event=on_event, **options)
    for warning in result.warnings:
        on_event(events.notice(f"warning: {warning}"))
    return result


def upload(source: str | os.PathLike, to: str | None = None, *, name: str | None = None,
           labels: str | None = "folder",
           pack: bool = True, max_side: int | None = None, shard_size: float | None = None,
           on_event: OnEvent | None = None) -> Upload:
    """Upload a labeled image dataset to Azure Blob storage, sending only what the container lacks.

    Why incremental: what is already there (same sha256) is skipped, so running it again after an
    interruption sends only what is missing. pack=True (the default) packs first (see `pack`)
    and sends the shards, then the index; pack=False sends a local folder's files one blob each.
    to: az://ACCOUNT/CONTAINER[/PREFIX] (default: $ORCHESTRATE_STORAGE_URI, else container
    'datasets' of $AZURE_STORAGE_CONNECTION_STRING's account); the prefix defaults to `name`
    (default: the folder's name, or the URI's last part).
    Raises UsageError/DatasetError for bad input, ServiceError for refused or unreachable storage.

    Example:
        >>> result = orchestrator.data.upload("./EuroSAT", "az://myaccount/datasets")
        >>> result.sent.shards_sent, result.uri
        (12, 'az://myaccount/datasets/EuroSAT')
    """
    from .dataset.sources import open_source
    from .storage.blob import connect, upload_folder
    from .storage.packed_blob import check_layout, pack_and_upload

    on_event = on_event or events.ignore
    found = open_source(source)  # a bad URI is refused before anything else
    if not pack and found.remote:
        raise UsageError(f"--no-pack uploads the files of a local folder; {found.uri} is always packed: "
                         "drop --no-pack")
    name = name or found.name
    target = storage_target(to, "upload target", default_prefix=name)
    labels = _label_source(source, labels)
    if pack:
        packed, sent = pack_and_upload(source, target.prefix, lambda: connect(target, os.environ), labels=labels,
                                       max_side=max_side, shard_bytes=_shard_bytes(shard_size), on_event=on_event)
        return Upload(sent, packed)
    if max_side is not None or shard_size is not None:
        raise UsageError("--max-side and --shard-size are packing options: drop them or --no-pack")

    def open_container():  # a prefix holding a packed index is refused: the job would read that
        container = connect(target, os.environ)
        check_layout(container, target.prefix, packed=False)
        return container

    return Upload(upload_folder(source, target.prefix, open_container, name=name, labels=labels, on_event=on_event))


def list(to: str | None = None) -> builtins.list[StoredDataset]:  # noqa: A001 (orchestrator.data.list)
    """The datasets a container holds under its prefix: packed (images, shards, bytes, shards no
    index names), loose (pack=False uploads) and incomplete (shards of an upload without its index).

    to: az://ACCOUNT/CONTAINER[/PREFIX], defaulted as `upload`'s.

    Example:
        >>> for d in orchestrator.data.list("az://myaccount/datasets"):
        ...     print(d.prefix, d.kind, d.images)
        EuroSAT packed 27000
    """
    from .storage.packed_blob import list_datasets

    container, prefix = _container_for(to)
    return list_datasets(container, prefix)


def gc(to: str | None = None, *, grace_hours: float | None = None, dry_run: bool = False) -> GcResult:
    """Remove the packed shards that no dataset index names any more (those of replaced datasets
    and of uploads that never finished).

    Why a grace period: an upload in progress sends its shards before its index, so shards younger
    than `grace_hours` are kept (None: packed_blob.DEFAULT_GC_GRACE_HOURS, one hour). dry_run:
    only say what would be removed.

    Example:
        >>> result = orchestrator.data.gc("az://myaccount/datasets", dry_run=True)
        >>> len(result.removed), result.bytes
        (3, 201326592)
    """
    from .storage.packed_blob import DEFAULT_GC_GRACE_HOURS, collect_garbage

    grace_hours = DEFAULT_GC_GRACE_HOURS if grace_hours is None else grace_hours
    if grace_hours < 0:
        raise UsageError("--grace-hours must be 0 or more")
    container, prefix = _container_for(to)
    return collect_garbage(container, prefix, grace_hours=grace_hours, dry_run=dry_run)


def storage_target(to: str | None, what: str = "storage target", default_prefix: str = "") -> BlobTarget:
    """The storage.blob.BlobTarget that `to` names: az://ACCOUNT/CONTAINER[/PREFIX], else
    $ORCHESTRATE_STORAGE_URI, else container DEFAULT_CONTAINER of $AZURE_STORAGE_CONNECTION_STRING's
    account; `what` names it in the UsageError when there is none.

    Example:
        >>> storage_target("az://myaccount/datasets", default_prefix="pets").uri
        'az://myaccount/datasets/pets'
    """
    from .storage.blob import default_account, parse_uri

    to = to or os.environ.get(URI_ENV)
    if not to:
        account = default_account(os.environ)
        if not account:
            raise UsageError(f"no {what}: pass --to az://ACCOUNT/CONTAINER[/PREFIX] or set {URI_ENV} "
                             "(or AZURE_STORAGE_CONNECTION_STRING to use its account)")
        to = f"az://{account}/{DEFAULT_CONTAINER}"
    return parse_uri(to, default_prefix=default_prefix)


def _container_for(to):
    """(ContainerClient, prefix) for `to` (see storage_target)."""
    from .storage.blob import connect

    target = storage_target(to, "container")
    return connect(target, os.environ), target.prefix


def _label_source(source, labels):
    """The job's label source for `labels` (None: folder) in `source`; its DatasetError as the SDK's."""
    from remote_scripts.folder_dataset import FOLDER, label_source_for_job

    with dataset_errors():
        return label_source_for_job(source, labels or FOLDER)


def _shard_bytes(shard_size):
    """Bytes of a shard size in MB; None stays None (the default size)."""
    if shard_size is None:
        return None
    if not math.isfinite(shard_size):
        raise UsageError(f"--shard-size {shard_size}: give a number of MB (default 64)")
    return int(shard_size * (1 << 20))
