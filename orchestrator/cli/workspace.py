"""`orchestrate workspace create|show|delete`.

The commands are thin: settings come from orchestrator.backends.azure.settings (flags > env >
profile > config.json), the work from its provision module, the network from its seam.
"""
import click

from ..errors import UserError
from .azure_options import with_settings


def make_seam(settings):
    """The network seam for `settings`; tests replace this function."""
    from ..backends.azure.seam import AzureSeam

    return AzureSeam(settings.require("subscription_id", "resource_group", "workspace_name"))


@click.group()
def workspace():
    """Create, show or delete the Azure ML workspace.

    \b
    Example:
      orchestrate workspace create -g my-rg -w my-ws --location eastus
    """


@workspace.command()
@with_settings
def create(settings):
    """Create the workspace (and its resource group when missing); idempotent."""
    from ..backends.azure.provision import ensure_workspace
    from ..backends.azure.seam import azure_errors

    seam = make_seam(settings)
    with azure_errors():
        lines = ensure_workspace(seam, settings.location)
    click.echo("\n".join(lines))


@workspace.command()
@with_settings
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(settings, as_json):
    """Show the workspace, where its settings came from, and its Studio URL."""
    from ..backends.azure.seam import azure_errors
    from ..backends.azure.settings import studio_url
    from .common import print_json

    seam = make_seam(settings)
    with azure_errors():
        found = seam.get_workspace()
    if found is None:
        raise UserError(f"workspace {settings.workspace_name!r} not found in resource group "
                        f"{settings.resource_group!r}; create it with `orchestrate workspace create`")
    info = {**settings.public(), "location": found["location"], "studio_url": studio_url(settings),
            "sources": settings.sources}
    if as_json:
        print_json(info)
        return
    for key in ("workspace_name", "resource_group", "subscription_id"):
        click.echo(f"{key:16} {info[key]}  ({settings.sources[key]})")
    click.echo(f"{'location':16} {info['location']}")
    click.echo(f"{'studio':16} {info['studio_url']}")


@workspace.command()
@with_settings
@click.option("--delete-dependent-resources", is_flag=True,
              help="Also delete its storage account, key vault and Application Insights.")
@click.option("--permanently", is_flag=True,
              help="No soft delete: the name is free again at once (else Azure keeps the workspace "
                   "recoverable, and its name taken, for 14 days).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(settings, delete_dependent_resources, permanently, yes):
    """Delete the workspace (its jobs, models and clusters go with it).

    \b
    Example:
      orchestrate workspace delete -g rg -w ws --permanently --yes
    """
    from ..backends.azure.seam import azure_errors

    seam = make_seam(settings)
    if not yes:
        click.confirm(f"delete workspace {settings.workspace_name}?", abort=True)
    with azure_errors():
        if seam.get_workspace() is None:
            click.echo(f"workspace {settings.workspace_name} does not exist")
            return
        seam.delete_workspace(delete_dependent_resources, permanently=permanently)
    click.echo(f"deleted workspace {settings.workspace_name}"
               + (" permanently" if permanently else " (soft delete: recoverable, name taken, for 14 days)"))
