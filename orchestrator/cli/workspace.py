"""`orchestrate workspace create|show|delete`: a shell over orchestrator.workspace.

Settings come from the workspace flags (flags > env > profile > config.json, resolved by the
SDK); each command makes one call to orchestrator.workspace and prints what it returns.
"""
import click

from .azure_options import workspace_options


@click.group()
def workspace():
    """Create, show or delete the Azure ML workspace.

    \b
    Example:
      orchestrate workspace create -g my-rg -w my-ws --location eastus
    """


@workspace.command()
@workspace_options()
def create(**flags):
    """Create the workspace (and its resource group when missing); idempotent."""
    from .. import workspace as sdk

    click.echo("\n".join(sdk.create(**flags)))


@workspace.command()
@workspace_options()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(as_json, **flags):
    """Show the workspace, where its settings came from, and its Studio URL."""
    from .. import workspace as sdk
    from .common import print_json

    info = sdk.show(**flags)
    if as_json:
        print_json(info)
        return
    for key in ("workspace_name", "resource_group", "subscription_id"):
        click.echo(f"{key:16} {info[key]}  ({info['sources'][key]})")
    click.echo(f"{'location':16} {info['location']}")
    click.echo(f"{'studio':16} {info['studio_url']}")


@workspace.command()
@workspace_options()
@click.option("--delete-dependent-resources", is_flag=True,
              help="Also delete its storage account, key vault and Application Insights.")
@click.option("--permanently", is_flag=True,
              help="No soft delete: the name is free again at once (else Azure keeps the workspace "
                   "recoverable, and its name taken, for 14 days).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(delete_dependent_resources, permanently, yes, **flags):
    """Delete the workspace (its jobs, models and clusters go with it).

    \b
    Example:
      orchestrate workspace delete -g rg -w ws --permanently --yes
    """
    from .. import workspace as sdk

    result = sdk.delete(delete_dependent_resources=delete_dependent_resources, permanently=permanently,
                        approve=None if yes else (lambda question: click.confirm(question, abort=True)), **flags)
    name = result["workspace"]
    if not result["deleted"]:
        click.echo(f"workspace {name} does not exist")
        return
    click.echo(f"deleted workspace {name}"
               + (" permanently" if permanently else " (soft delete: recoverable, name taken, for 14 days)"))
