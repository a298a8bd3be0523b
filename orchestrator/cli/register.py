"""`orchestrate register RUN` and `orchestrate attach JOB_NAME`: an Azure run's life in the cloud.

register: the run's ONNX model as an Azure ML model asset (the job's `model` output, so Studio
shows the lineage; labels and test metrics as tags) and its dataset as a data asset. attach: a job
started elsewhere (another machine, Studio) into the ledger. The work is
orchestrator.backends.azure.assets; the network the seam's.
"""
from pathlib import Path

import click

from ..errors import UserError
from .azure_options import with_settings
from .common import print_json
from .workspace import make_seam


def run_seam(record):
    """The seam on the workspace a run's azure.json names (no flags needed)."""
    from ..backends.azure.assets import read_state
    from ..backends.azure.settings import Settings, load_settings

    if record.backend != "azure":
        raise UserError(f"run {record.run_id} ran on the {record.backend} backend: only Azure runs can be "
                        "registered as Azure ML assets")
    state = read_state(record.run_dir)
    if state is None:
        raise UserError(f"{Path(record.run_dir) / 'azure.json'} is missing or unreadable: "
                        f"cannot find the Azure ML job of run {record.run_id}")
    secret = load_settings().storage_connection_string
    return make_seam(Settings(**state["workspace"], storage_connection_string=secret)), state


def register_and_report(run_id, model_name=None, data_name=None, as_json=False, err=False):
    """Register run `run_id` (downloading its outputs first when needed) and print the assets
    (on stderr with `err`)."""
    from ..backends.azure.assets import register_run
    from ..backends.azure.seam import azure_errors
    from ..runner import fetch_outputs
    from .common import find_run

    ledger, record, backend, _ = find_run(run_id)
    seam, state = run_seam(record)
    if not (record.output_dir / "labels.json").is_file():
        fetch_outputs(backend, ledger, record)
    with azure_errors():
        result = register_run(seam, record, state, model_name, data_name)
    if as_json:
        print_json(result)
        return result
    model = result["model"]
    click.echo(f"model: {model['name']}:{model['version']} ({model['path']})", err=err)
    if "data" in result:
        data = result["data"]
        click.echo(f"data:  {data['name']}:{data['version']} ({data['path']})", err=err)
    return result


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
    register_and_report(run_id, model_name, data_name, as_json)


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
    from ..backends.azure.assets import attach_job
    from ..backends.azure.seam import azure_errors
    from ..ledger import Ledger

    seam = make_seam(settings)
    with azure_errors():
        record = attach_job(seam, Ledger(), job_name, runs_dir, say=lambda line: click.echo(line, err=True))
    if as_json:
        print_json(record.to_json())
        return
    click.echo(f"attached Azure ML job {record.remote_id} as run {record.run_id} ({record.status}); "
               f"folder {record.run_dir}\nfollow with: orchestrate logs {record.run_id}")


def cost_of(record):
    """`runs show`: the cost estimate of an Azure run (assets.cost_estimate), or None for others.

    The price comes from azure.json when cached there, else from the workspace's list_sizes (then
    cached); no reachable workspace is a reason in the estimate, never an error of `runs show`."""
    from ..backends.azure.assets import cost_estimate, read_state

    if record.backend != "azure":
        return None
    state = read_state(record.run_dir)
    if state is None:
        return {"error": "azure.json is missing"}
    return cost_estimate(record, state, seam_factory=lambda: run_seam(record)[0])
