"""`orchestrate init`: save the workspace coordinates as a named profile, so no command needs them
(a shell over orchestrator.workspace.save_profile).

Only names are stored (subscription, resource group, workspace, region): credentials are found by
DefaultAzureCredential at run time and never written.
"""
import click

from ..backends.azure.settings import DEFAULT_PROFILE
from .azure_options import workspace_options


@click.command()
@workspace_options(profile_default=DEFAULT_PROFILE)
@click.option("--make-default", is_flag=True, help="Use this profile when --profile is not given.")
def init(profile, make_default, **flags):
    """Save Azure settings to a profile (values not given are taken from the environment or an
    Azure ML config.json, when found).

    \b
    Example:
      orchestrate init --subscription-id 0000-... -g my-rg -w my-ws -l eastus
      orchestrate init --profile prod -g prod-rg -w prod-ws --make-default
    """
    from ..workspace import save_profile

    saved = save_profile(profile, make_default=make_default, **flags)
    click.echo(f"saved profile {saved.name!r} to {saved.path}")
    for key, value in saved.values.items():
        if value:
            click.echo(f"  {key:16} {value}")
