"""`orchestrate register RUN` and `orchestrate attach JOB_NAME`: an Azure run's life in the cloud.

register: the run's ONNX model as an Azure ML model asset (the job's `model` output, so Studio
shows the lineage; labels and test metrics as tags) and its dataset as a data asset. attach: a job
started elsewhere (another machine, Studio) into the ledger. The work is
the SDK's (Run.register, runs.attach).
"""
from pathlib import Path

import click

from .azure_options import with_settings
from .client_events import ClientEvents
from .common import print_json


def print_assets(result, err=False):
    """The registered assets, one line each (on stderr with `err`)."""
    model = result["model"]
    click.echo(f"model: {model['name']}:{model['version']} ({model['path']})", err=err)
    if "data" in result:
        data = result["data"]
        click.echo(f"data:  {data['name']}:{data['version']} ({data['path']})", err=err)


@click.command()
@click.argument("run_id")
@click.option("--name", "model_name", help="Model asset name. [default: the run's name]")
@click.option("--data-name", help="Data asset name. [default: the dataset folder's name]")
@click.option("--json", "as_json", is_flag=True, help="Print the registered assets as JSON.")
def register(run_id, model_name, data_name, as_json):
    """Register a completed Azure run's ONNX model (labels and test metrics as tags) and its
    dataset as Azure ML assets, linked to the job in Studio.

    \b
    Example:
      orchestrate register eurosat-20261123-101500-ab12 --name eurosat-resnet50
    """
    from ..runs import get

    result = get(run_id).register(model_name, data_name)
    if as_json:
        print_json(result)
    else:
        print_assets(result)


@click.command()
@click.argument("job_name")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Where the run folder is created.")
@click.option("--json", "as_json", is_flag=True, help="Print the new ledger row as JSON.")
@with_settings
def attach(settings, job_name, runs_dir, as_json):
    """Adopt an Azure ML job started elsewhere (another machine, Studio) into the run ledger, so
    logs, status, download and predict work on it.

    \b
    Example:
      orchestrate attach eurosat-20261123-101500-ab12
      orchestrate logs eurosat-20261123-101500-ab12
    """
    from ..runs import attach

    with ClientEvents() as on_event:
        run = attach(job_name, runs_dir=runs_dir, settings=settings, on_event=on_event)
    record = run.to_json()
    if as_json:
        print_json(record)
        return
    click.echo(f"attached Azure ML job {record['remote_id']} as run {record['run_id']} ({record['status']}); "
               f"folder {record['run_dir']}\nfollow with: orchestrate logs {record['run_id']}")

