"""`orchestrate data pack|upload|list|gc`: a shell over orchestrator.data.

Each command parses its options, makes one call to orchestrator.data (where the policy lives:
the target, the defaults, what is refused), draws its events as progress bars
(client_events.ClientEvents) and prints the summary.
"""
import json
import sys

import click

from ..data import DEFAULT_CONTAINER, URI_ENV
from ..printable import printable


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
    from .. import data as sdk
    from .client_events import ClientEvents

    what = "file" if no_pack else "shard"
    with ClientEvents() as bars:
        try:
            result = sdk.upload(data_dir, to, name=name, labels=labels, pack=not no_pack, max_side=max_side,
                                shard_size=shard_size, on_event=bars)
        except KeyboardInterrupt:
            bars.stop()
            click.echo(f"interrupted ({bars.sent(what + 's')} {what}(s) confirmed sent); run the same command again "
                       f"to resume ({what}s already uploaded are skipped)", err=True)
            sys.exit(130)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    sent, packed = result.sent, result.pack
    if packed is None:
        click.echo(f"sent {sent.files_sent} file(s) ({_mb(sent.bytes_sent)}), skipped {sent.files_skipped} "
                   f"unchanged ({_mb(sent.bytes_skipped)}), deleted {sent.files_deleted} stale, "
                   f"in {sent.seconds:.1f} s", err=True)
    else:
        click.echo(f"packed {packed.files} image(s) into {packed.shards} shard(s) ({packed.shards_written} "
                   f"rewritten); sent {sent.shards_sent} shard(s) ({_mb(sent.bytes_sent)}), skipped "
                   f"{sent.shards_skipped} unchanged ({_mb(sent.bytes_skipped)}), index "
                   f"{'sent' if sent.index_sent else 'unchanged'}, deleted {sent.shards_deleted} old shard(s) "
                   f"({_mb(sent.bytes_deleted)}), in {sent.seconds:.1f} s", err=True)
    click.echo(result.uri)


def _mb(n):
    return f"{n / 1e6:.1f} MB"


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
    from .. import data as sdk
    from .client_events import ClientEvents

    with ClientEvents() as bars:
        result = sdk.pack(data_dir, out_dir, labels=labels, max_side=max_side, shard_size=shard_size, on_event=bars)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(f"packed {result.files} image(s) ({result.unique} unique) into {result.shards} shard(s), "
               f"{_mb(result.bytes)}: {result.shards_written} written, {result.shards_kept} unchanged", err=True)
    click.echo(result.out_dir)


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
    from .. import data as sdk

    datasets = sdk.list(to)
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
    from .. import data as sdk

    result = sdk.gc(to, grace_hours=grace_hours, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    verb = "would remove" if dry_run else "removed"
    for folder in result.unreadable:
        click.echo(f"warning: left the shards under '{folder or '/'}' alone: its index.json is not a packed "
                   "dataset's index", err=True)
    click.echo(f"{verb} {len(result.removed)} unreferenced shard(s) ({_mb(result.bytes)}); kept "
               f"{result.kept_recent} younger than {grace_hours:g} h", err=True)
