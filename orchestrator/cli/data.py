"""`orchestrate data upload`: send a dataset to Azure Blob storage, incrementally.

Thin on purpose: the work is `orchestrator.storage.blob.upload_dataset`, which the Azure ML
backend calls too. This module picks the target, draws the progress bars and prints the summary.
"""
import json
import logging
import math
import os
import sys
from pathlib import Path

import click

from ..printable import printable

URI_ENV = "ORCHESTRATE_STORAGE_URI"
DEFAULT_CONTAINER = "datasets"


def warn(line):
    """A warning on stderr; it names the dataset's labels and paths, shown but never acted on."""
    click.echo(printable(line), err=True)


@click.group()
def data():
    """Manage datasets in cloud storage.

    \b
    Example:
      orchestrate data upload ./EuroSAT --to az://myaccount/datasets/eurosat
      orchestrate data upload s3://mybucket/eurosat --to az://myaccount/datasets
    """


@data.command()
@click.argument("data_dir", metavar="DATA")
@click.option("--name", help="Dataset name (default: the folder's name, or the URI's last part); the default "
                             "blob prefix.")
@click.option("--to", "to", envvar=URI_ENV, metavar="az://ACCOUNT/CONTAINER[/PREFIX]",
              help=f"Where to upload (env {URI_ENV}). Default prefix: NAME. Without it, the account "
                   f"of AZURE_STORAGE_CONNECTION_STRING and container '{DEFAULT_CONTAINER}' are used.")
@click.option("--labels", default="folder", show_default=True, metavar="SOURCE",
              help="folder, filename or a .tsv/.csv label table inside DATA (as `orchestrate train --labels`); "
                   "a table is uploaded with the images.")
@click.option("--no-pack", is_flag=True,
              help="Upload the image files one blob each (the folder layout) instead of packed shards.")
@click.option("--max-side", type=int, metavar="N", help="When packing: downscale images larger than N pixels.")
@click.option("--shard-size", type=float, metavar="MB", help="When packing: shard size in MB (default 64).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def upload(data_dir, name, to, labels, no_pack, max_side, shard_size, as_json):
    """Upload a labeled image dataset (DATA/<label>/<image>, or see --labels) to Azure Blob storage.

    DATA is a folder, or a loose dataset in object storage: s3://BUCKET/PREFIX (AWS credentials
    as the AWS CLI finds them; AWS_ENDPOINT_URL for another S3 service) or
    az://ACCOUNT/CONTAINER/PREFIX, packed as it is read (its shards in the cache folder).
    The dataset is packed first (see `orchestrate data pack`) and only the shards the container
    lacks are sent, then its index.json; --no-pack sends the files one by one instead. Either way
    what is already there (same sha256) is skipped, so running the command again after an
    interruption sends only what is missing. Credentials: AZURE_STORAGE_CONNECTION_STRING, or
    else your Azure login (az login, managed identity, AZURE_CLIENT_ID/SECRET/TENANT_ID).

    \b
    Example:
      orchestrate data upload ./EuroSAT --to az://myaccount/datasets --json
    """
    from remote_scripts.folder_dataset import DatasetError, label_source_for_job

    from ..dataset.sources import open_source
    from ..errors import UserError
    from ..storage.blob import connect
    from ..storage.packed_blob import check_layout
    from ..storage.upload_progress import UploadProgress

    source = open_source(data_dir)  # a bad URI is refused before anything else
    if no_pack and source.remote:
        raise UserError(f"--no-pack uploads the files of a local folder; {source.uri} is always packed: drop --no-pack")
    name = name or source.name
    target = _target_for(to, "upload target", default_prefix=name)
    try:
        labels = label_source_for_job(data_dir, labels)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    if not no_pack:
        _upload_packed(data_dir, target, labels, max_side, shard_size, as_json)
        return
    if max_side is not None or shard_size is not None:
        raise UserError("--max-side and --shard-size are packing options: drop them or --no-pack")

    def open_container():  # a prefix holding a packed index is refused: the job would read that
        container = connect(target, os.environ)
        check_layout(container, target.prefix, packed=False)
        return container

    with UploadProgress() as bars:
        try:
            result = bars.upload(data_dir, target.prefix, open_container, name=name, labels=labels,
                                 say=warn)
        except KeyboardInterrupt:
            bars.stop()
            click.echo(f"interrupted ({bars.sent} file(s) confirmed sent); run the same command again to resume "
                       "(files already uploaded are skipped)", err=True)
            sys.exit(130)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(f"sent {result.files_sent} file(s) ({_mb(result.bytes_sent)}), skipped {result.files_skipped} "
               f"unchanged ({_mb(result.bytes_skipped)}), deleted {result.files_deleted} stale, "
               f"in {result.seconds:.1f} s", err=True)
    click.echo(result.uri)


def _mb(n):
    return f"{n / 1e6:.1f} MB"


def _upload_packed(data_dir, target, labels, max_side, shard_size, as_json):
    from ..storage.blob import connect
    from ..storage.packed_blob import pack_and_upload
    from .dataset_progress import PackProgress

    shard_bytes = _shard_bytes(shard_size)
    with PackProgress() as bars:
        try:
            packed, result = pack_and_upload(
                data_dir, target.prefix, lambda: connect(target, os.environ), labels=labels, max_side=max_side,
                shard_bytes=shard_bytes, say=warn, **bars.hooks())
        except KeyboardInterrupt:
            bars.stop()
            click.echo(f"interrupted ({bars.shards_sent} shard(s) confirmed sent); run the same command again to "
                       "resume (shards already uploaded are skipped)", err=True)
            sys.exit(130)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "pack": packed.to_dict()}))
        return
    click.echo(f"packed {packed.files} image(s) into {packed.shards} shard(s) ({packed.shards_written} rewritten); "
               f"sent {result.shards_sent} shard(s) ({_mb(result.bytes_sent)}), skipped {result.shards_skipped} "
               f"unchanged ({_mb(result.bytes_skipped)}), index {'sent' if result.index_sent else 'unchanged'}, "
               f"deleted {result.shards_deleted} old shard(s) ({_mb(result.bytes_deleted)}), "
               f"in {result.seconds:.1f} s", err=True)
    click.echo(result.uri)


def _shard_bytes(shard_size):
    from ..errors import UserError

    if shard_size is None:
        return None
    if not math.isfinite(shard_size):
        raise UserError(f"--shard-size {shard_size}: give a number of MB (default 64)")
    return int(shard_size * (1 << 20))


@data.command()
@click.argument("data_dir", metavar="DATA")
@click.option("--out", "out_dir", required=True, metavar="DIR", help="Folder of the packed dataset (index.json, shards/).")
@click.option("--labels", default="folder", show_default=True, metavar="SOURCE",
              help="folder, filename or a .tsv/.csv label table inside DATA (as `orchestrate train --labels`).")
@click.option("--max-side", type=int, metavar="N", help="Downscale images whose longer side exceeds N pixels "
                                                         "(aspect kept; default: keep every image as it is).")
@click.option("--shard-size", type=float, metavar="MB", help="Largest shard in MB (default 64).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def pack(data_dir, out_dir, labels, max_side, shard_size, as_json):
    """Pack a labeled image folder (or s3://BUCKET/PREFIX, az://ACCOUNT/CONTAINER/PREFIX: read
    object by object, never copied to disk) into tar shards and an index, for upload and training.

    Identical images are stored once (the same image under two labels is warned about); the same
    images always give byte-identical shards and index.json, and a few changed images rewrite few
    shards. `orchestrate train DIR` (every backend) reads the packed folder as it reads DATA.

    \b
    Examples:
      orchestrate data pack ./EuroSAT --out ./EuroSAT.packed
      orchestrate data pack s3://mybucket/eurosat --out ./EuroSAT.packed
    """
    from remote_scripts.folder_dataset import DatasetError, label_source_for_job

    from ..dataset.pack import pack_dataset
    from ..errors import UserError
    from .dataset_progress import PackProgress

    try:
        labels = label_source_for_job(data_dir, labels)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    with PackProgress() as bars:
        result = pack_dataset(data_dir, out_dir, labels=labels, max_side=max_side,
                              **({"shard_bytes": _shard_bytes(shard_size)} if shard_size is not None else {}),
                              progress=bars.phase)
    for warning in result.warnings:
        warn(f"warning: {warning}")
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(f"packed {result.files} image(s) ({result.unique} unique) into {result.shards} shard(s), "
               f"{_mb(result.bytes)}: {result.shards_written} written, {result.shards_kept} unchanged", err=True)
    click.echo(result.out_dir)


def pack_source(uri, labels):
    """`orchestrate train s3://... | az://...`: pack the dataset at `uri` into its cache folder
    (pack.default_pack_dir, so a re-run reads only what changed) with progress bars; the folder,
    which every backend trains on as a packed dataset."""
    from remote_scripts.folder_dataset import FOLDER

    from ..dataset.pack import default_pack_dir, pack_dataset
    from .dataset_progress import PackProgress

    with PackProgress() as bars:
        result = pack_dataset(uri, default_pack_dir(uri), labels=labels or FOLDER, progress=bars.phase)
    for warning in result.warnings:
        warn(f"warning: {warning}")
    return Path(result.out_dir)


def _target_for(to, what, default_prefix=""):
    """The BlobTarget of --to, defaulting to container DEFAULT_CONTAINER of the connection
    string's account; `what` names it in the error when there is neither."""
    from ..errors import UserError
    from ..storage.blob import default_account, parse_uri

    # azure.identity logs each failed sign-in attempt at WARNING; the errors say it in one line.
    logging.getLogger("azure").setLevel(logging.ERROR)
    if not to:
        account = default_account(os.environ)
        if not account:
            raise UserError(f"no {what}: pass --to az://ACCOUNT/CONTAINER[/PREFIX] or set {URI_ENV} "
                            "(or AZURE_STORAGE_CONNECTION_STRING to use its account)")
        to = f"az://{account}/{DEFAULT_CONTAINER}"
    return parse_uri(to, default_prefix=default_prefix)


def _container_for(to):
    """(ContainerClient, prefix) for --to (see _target_for)."""
    from ..storage.blob import connect

    target = _target_for(to, "container")
    return connect(target, os.environ), target.prefix


@data.command(name="list")
@click.option("--to", "to", envvar=URI_ENV, metavar="az://ACCOUNT/CONTAINER[/PREFIX]",
              help=f"What to list (env {URI_ENV}; default: container '{DEFAULT_CONTAINER}' of "
                   "AZURE_STORAGE_CONNECTION_STRING's account).")
@click.option("--json", "as_json", is_flag=True, help="Print the datasets as JSON on stdout.")
def list_(to, as_json):
    """List the datasets a container holds: packed (shards, bytes, unreferenced shards), loose, incomplete.

    \b
    Example:
      orchestrate data list --to az://myaccount/datasets
    """
    from ..storage.packed_blob import list_datasets

    container, prefix = _container_for(to)
    datasets = list_datasets(container, prefix)
    if as_json:
        click.echo(json.dumps([d.to_dict() for d in datasets]))
        return
    if not datasets:
        click.echo("no datasets", err=True)
        return
    click.echo(f"{'PREFIX':<40} {'KIND':<10} {'IMAGES':>7} {'SHARDS':>6} {'MB':>9} {'UNUSED MB':>9}  LAST UPLOAD")
    for d in datasets:
        click.echo(printable(f"{d.prefix or '/':<40} {d.kind:<10} {d.images:>7} {d.shards:>6} {d.bytes / 1e6:>9.1f} "
                             f"{d.unreferenced_bytes / 1e6:>9.1f}  {d.last_upload[:19]}"))


@data.command()
@click.option("--to", "to", envvar=URI_ENV, metavar="az://ACCOUNT/CONTAINER[/PREFIX]",
              help=f"Where to collect (env {URI_ENV}; default: container '{DEFAULT_CONTAINER}' of "
                   "AZURE_STORAGE_CONNECTION_STRING's account).")
@click.option("--grace-hours", type=float, default=1.0, show_default=True,
              help="Keep unreferenced shards younger than this (an upload in progress writes its index last).")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def gc(to, grace_hours, dry_run, as_json):
    """Remove packed shards that no dataset index refers to any more.

    \b
    Example:
      orchestrate data gc --to az://myaccount/datasets --dry-run
    """
    from ..errors import UserError
    from ..storage.packed_blob import collect_garbage

    if grace_hours < 0:
        raise UserError("--grace-hours must be 0 or more")
    container, prefix = _container_for(to)
    result = collect_garbage(container, prefix, grace_hours=grace_hours, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    verb = "would remove" if dry_run else "removed"
    for folder in result.unreadable:
        click.echo(f"warning: left the shards under '{folder or '/'}' alone: its index.json is not a packed "
                   "dataset's index", err=True)
    click.echo(f"{verb} {len(result.removed)} unreferenced shard(s) ({_mb(result.bytes)}); kept "
               f"{result.kept_recent} younger than {grace_hours:g} h", err=True)
