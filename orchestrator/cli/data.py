"""`orchestrate data upload`: send a dataset to Azure Blob storage, incrementally.

Thin on purpose: the work is `orchestrator.storage.blob.upload_dataset`, which the Azure ML
backend calls too. This module picks the target, draws the progress bars and prints the summary.
"""
import json
import logging
import os
import sys
from pathlib import Path

import click

URI_ENV = "ORCHESTRATE_STORAGE_URI"
DEFAULT_CONTAINER = "datasets"


@click.group()
def data():
    """Manage datasets in cloud storage.

    \b
    Example:
      orchestrate data upload ./EuroSAT --to az://myaccount/datasets/eurosat
    """


@data.command()
@click.argument("data_dir", metavar="DATA")
@click.option("--name", help="Dataset name (default: the folder's name); the default blob prefix.")
@click.option("--to", "to", envvar=URI_ENV, metavar="az://ACCOUNT/CONTAINER[/PREFIX]",
              help=f"Where to upload (env {URI_ENV}). Default prefix: NAME. Without it, the account "
                   f"of AZURE_STORAGE_CONNECTION_STRING and container '{DEFAULT_CONTAINER}' are used.")
@click.option("--labels", default="folder", show_default=True, metavar="SOURCE",
              help="folder, filename or a .tsv/.csv label table inside DATA (as `orchestrate train --labels`); "
                   "a table is uploaded with the images.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def upload(data_dir, name, to, labels, as_json):
    """Upload a labeled image dataset (DATA/<label>/<image>, or see --labels) to Azure Blob storage.

    Files already uploaded with the same sha256 are skipped, so running the command again after an
    interruption sends only what is missing. Credentials: AZURE_STORAGE_CONNECTION_STRING, or
    else your Azure login (az login, managed identity, AZURE_CLIENT_ID/SECRET/TENANT_ID).

    \b
    Example:
      orchestrate data upload ./EuroSAT --to az://myaccount/datasets --json
    """
    from remote_scripts.folder_dataset import DatasetError, label_source_for_job

    from ..errors import UserError
    from ..storage.blob import connect, default_account, parse_uri
    from ..storage.upload_progress import UploadProgress

    # azure.identity logs each failed sign-in attempt at WARNING; the error below says it in one line.
    logging.getLogger("azure").setLevel(logging.ERROR)
    name = name or Path(data_dir).resolve().name
    if not to:
        account = default_account(os.environ)
        if not account:
            raise UserError(f"no upload target: pass --to az://ACCOUNT/CONTAINER[/PREFIX] or set {URI_ENV} "
                            "(or AZURE_STORAGE_CONNECTION_STRING to use its account)")
        to = f"az://{account}/{DEFAULT_CONTAINER}"
    target = parse_uri(to, default_prefix=name)
    try:
        labels = label_source_for_job(data_dir, labels)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    with UploadProgress() as bars:
        try:
            result = bars.upload(data_dir, target.prefix, lambda: connect(target, os.environ), name=name,
                                 labels=labels)
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
