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
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def upload(data_dir, name, to, as_json):
    """Upload a folder-per-label dataset (DATA/<label>/<image>) to Azure Blob storage.

    Files already uploaded with the same sha256 are skipped, so running the command again after an
    interruption sends only what is missing. Credentials: AZURE_STORAGE_CONNECTION_STRING, or
    else your Azure login (az login, managed identity, AZURE_CLIENT_ID/SECRET/TENANT_ID).

    \b
    Example:
      orchestrate data upload ./EuroSAT --to az://myaccount/datasets --json
    """
    from ..dataset.manifest import build_manifest
    from ..errors import UserError
    from ..storage.blob import connect, default_account, parse_uri, upload_dataset

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
    with _Bars() as bars:
        manifest = build_manifest(data_dir, name, progress=bars.hashed)
        bars.start_upload(len(manifest.entries), manifest.total_bytes)
        container = connect(target, os.environ)
        try:
            result = upload_dataset(data_dir, container, target.prefix, manifest=manifest, progress=bars.uploaded)
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


class _Bars:
    """rich progress on stderr (stdout carries the result): hashing, then files and bytes sent."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[unit]}"), TimeElapsedColumn(),
                                 console=console, transient=True, disable=not console.is_terminal)
        self.hash_task = self.progress.add_task("hashing", total=None, unit="files")
        self.files_task = self.bytes_task = None
        self.sent = 0

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.progress.stop()

    def hashed(self, entry):
        self.progress.advance(self.hash_task)

    def start_upload(self, files, nbytes):
        self.progress.update(self.hash_task, total=files, completed=files)
        self.files_task = self.progress.add_task("uploading", total=files, unit="files")
        self.bytes_task = self.progress.add_task("", total=max(1, nbytes // 1024), unit="KiB")

    def uploaded(self, entry, sent):
        self.sent += sent
        self.progress.advance(self.files_task)
        self.progress.advance(self.bytes_task, entry.size / 1024)
