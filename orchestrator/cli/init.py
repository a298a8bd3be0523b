"""`orchestrate init`: save the workspace coordinates as a named profile, so no command needs them.

Only names are stored (subscription, resource group, workspace, region): credentials are found by
DefaultAzureCredential at run time and never written.
"""
import click

from ..errors import UserError


@click.command()
@click.option("--subscription-id", help="Azure subscription id.")
@click.option("--resource-group", "-g", help="Resource group.")
@click.option("--workspace", "-w", "workspace_name", help="Azure ML workspace name.")
@click.option("--location", "-l", help="Azure region, e.g. eastus.")
@click.option("--profile", default="default", show_default=True, help="Profile name.")
@click.option("--make-default", is_flag=True, help="Use this profile when --profile is not given.")
def init(subscription_id, resource_group, workspace_name, location, profile, make_default):
    """Save Azure settings to a profile (values not given are taken from the environment or an
    Azure ML config.json, when found).

    \b
    Example:
      orchestrate init --subscription-id 0000-... -g my-rg -w my-ws -l eastus
      orchestrate init --profile prod -g prod-rg -w prod-ws --make-default
    """
    from ..config import PROFILE_FIELDS, load_settings, save_profile

    flags = {"subscription_id": subscription_id, "resource_group": resource_group,
             "workspace_name": workspace_name, "location": location}
    # fill what is not given from the environment, config.json and this profile's earlier
    # values -- never from another profile
    resolved = load_settings(flags, profile=profile, new_profile=True)
    values = {k: getattr(resolved, k) for k in PROFILE_FIELDS}
    if not any(values.values()):
        raise UserError("nothing to save: give --subscription-id, --resource-group, --workspace "
                        "or --location")
    path = save_profile(profile, values, make_default=make_default)
    click.echo(f"saved profile {profile!r} to {path}")
    for key in PROFILE_FIELDS:
        if values[key]:
            click.echo(f"  {key:16} {values[key]}")

