"""`orchestrate init`: save the workspace coordinates as a named profile, so no command needs them.

Only names are stored (subscription, resource group, workspace, region): credentials are found by
DefaultAzureCredential at run time and never written.
"""
import click

from ..backends.azure.settings import DEFAULT_PROFILE, PROFILE_FIELDS, load_settings, save_profile
from ..errors import UserError
from .azure_options import workspace_flags, workspace_options


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
    # fill what is not given from the environment, config.json and this profile's earlier
    # values -- never from another profile
    resolved = load_settings(workspace_flags(flags), profile=profile, new_profile=True)
    values = {k: getattr(resolved, k) for k in PROFILE_FIELDS}
    if not any(values.values()):
        raise UserError("nothing to save: give --subscription-id, --resource-group, --workspace "
                        "or --location")
    path = save_profile(profile, values, make_default=make_default)
    click.echo(f"saved profile {profile!r} to {path}")
    for key in PROFILE_FIELDS:
        if values[key]:
            click.echo(f"  {key:16} {values[key]}")

