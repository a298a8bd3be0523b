"""The Azure ML workspace, from Python: create, show, delete, and the saved profiles.

What `orchestrate workspace create|show|delete` and `orchestrate init` do. Every function takes
the workspace as the CLI's flags do, as keyword arguments (subscription_id=, resource_group=,
workspace_name=, location=, profile=); what is not given comes from the environment, the
profile file or an Azure ML config.json (backends.azure.settings.load_settings, field by field).
Credentials are never passed or stored: DefaultAzureCredential finds them (az login, managed
identity, service principal variables).

Example:
    >>> import orchestrator
    >>> orchestrator.workspace.save_profile(subscription_id="0000-...", resource_group="rg",
    ...                                     workspace_name="ws", location="eastus")
    >>> orchestrator.workspace.create()          # the resource group too, when missing
    >>> orchestrator.workspace.show()["studio_url"]
    'https://ml.azure.com/?wsid=/subscriptions/0000-.../resourcegroups/rg/workspaces/ws'
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError
from .events import Approve

if TYPE_CHECKING:  # imported when used: `import orchestrator` stays light
    from .backends.azure.seam import AzureSeam
    from .backends.azure.settings import Settings



def settings(*, subscription_id: str | None = None, resource_group: str | None = None,
             workspace_name: str | None = None, location: str | None = None,
             profile: str | None = None) -> Settings:
    """The workspace settings the arguments name, each field resolved flags (these arguments) >
    environment > profile > Azure ML config.json, remembering where it came from (`sources`).

    Example:
        >>> s = orchestrator.workspace.settings(resource_group="rg")
        >>> s.sources["resource_group"]
        'flag'
    """
    from .backends.azure.settings import load_settings

    flags = {"subscription_id": subscription_id, "resource_group": resource_group,
             "workspace_name": workspace_name, "location": location}
    return load_settings(flags, profile=profile)


def seam_for(settings: Settings) -> AzureSeam:
    """The network seam (every Azure call) of the workspace `settings` fully name; UsageError
    naming each missing setting. Tests replace this function to run against a recorded service.

    Example:
        >>> seam = seam_for(orchestrator.workspace.settings(profile="prod"))
        >>> seam.get_workspace()["location"]
        'eastus'
    """
    from .backends.azure.seam import AzureSeam

    return AzureSeam(settings.require("subscription_id", "resource_group", "workspace_name"))


def create(*, subscription_id: str | None = None, resource_group: str | None = None,
           workspace_name: str | None = None, location: str | None = None,
           profile: str | None = None) -> list[str]:
    """Create the workspace, and its resource group when missing (which needs `location`);
    idempotent. Returns what was done, one line each (the last one the Studio URL).

    Example:
        >>> orchestrator.workspace.create(resource_group="rg", workspace_name="ws", location="eastus")
        ['created resource group rg in eastus', 'created workspace ws', 'studio: https://ml.azure.com/...']
    """
    from .backends.azure.provision import ensure_workspace
    from .backends.azure.seam import azure_errors

    resolved = settings(subscription_id=subscription_id, resource_group=resource_group,
                        workspace_name=workspace_name, location=location, profile=profile)
    seam = seam_for(resolved)
    with azure_errors():
        return ensure_workspace(seam, resolved.location)


def show(*, subscription_id: str | None = None, resource_group: str | None = None,
         workspace_name: str | None = None, location: str | None = None, profile: str | None = None) -> dict:
    """The workspace: its coordinates, region and Studio URL, and where each setting came from
    (`sources`: flag, environment, profile, config.json). UsageError when it does not exist.

    Example:
        >>> info = orchestrator.workspace.show(profile="prod")
        >>> info["location"], info["sources"]["workspace_name"]
        ('eastus', "profile 'prod'")
    """
    from .backends.azure.seam import azure_errors
    from .backends.azure.settings import studio_url

    resolved = settings(subscription_id=subscription_id, resource_group=resource_group,
                        workspace_name=workspace_name, location=location, profile=profile)
    seam = seam_for(resolved)
    with azure_errors():
        found = seam.get_workspace()
    if found is None:
        raise UsageError(f"workspace {resolved.workspace_name!r} not found in resource group "
                         f"{resolved.resource_group!r}; create it with `orchestrate workspace create`")
    return {**resolved.public(), "location": found["location"], "studio_url": studio_url(resolved),
            "sources": resolved.sources}


def delete(*, delete_dependent_resources: bool = False, permanently: bool = False, approve: Approve | None = None,
           subscription_id: str | None = None, resource_group: str | None = None,
           workspace_name: str | None = None, location: str | None = None,
           profile: str | None = None) -> dict:
    """Delete the workspace (its jobs, models and clusters go with it); {"workspace": name,
    "deleted": False when there was none}.

    delete_dependent_resources: its storage account, key vault and Application Insights too.
    permanently: no soft delete (else Azure keeps it recoverable, its name taken, for 14 days).
    approve(question): asked first ("delete workspace NAME?"); False stops with a UsageError.

    Example:
        >>> orchestrator.workspace.delete(workspace_name="scratch", permanently=True)
        {'workspace': 'scratch', 'deleted': True}
    """
    from .backends.azure.seam import azure_errors

    resolved = settings(subscription_id=subscription_id, resource_group=resource_group,
                        workspace_name=workspace_name, location=location, profile=profile)
    seam = seam_for(resolved)
    question = f"delete workspace {resolved.workspace_name}?"
    if approve and not approve(question):
        raise UsageError(f"workspace {resolved.workspace_name} not deleted: not approved")
    with azure_errors():
        if seam.get_workspace() is None:
            return {"workspace": resolved.workspace_name, "deleted": False}
        seam.delete_workspace(delete_dependent_resources, permanently=permanently)
    return {"workspace": resolved.workspace_name, "deleted": True}


@dataclass(frozen=True)
class SavedProfile:
    """A profile `save_profile` wrote: its `name`, the file (`path`) and the `values` saved."""

    name: str
    path: Path
    values: dict


def save_profile(profile: str | None = None, *, subscription_id: str | None = None,
                 resource_group: str | None = None, workspace_name: str | None = None,
                 location: str | None = None, make_default: bool = False) -> SavedProfile:
    """Save the workspace coordinates as a named profile, so no later call or command needs them.

    Why: a profile makes `train(..., compute="gpu-t4")` and every command work without flags.
    Values not given are taken from the environment, an Azure ML config.json and this profile's
    earlier values (never another profile's). Only names are stored (subscription, resource
    group, workspace, region), never a credential. profile: None is "default"; make_default: use
    it when no profile is named. UsageError when there is nothing to save.

    Example:
        >>> saved = orchestrator.workspace.save_profile("prod", resource_group="prod-rg",
        ...                                             workspace_name="prod-ws", make_default=True)
        >>> saved.path
        PosixPath('/home/me/.config/orchestrate/config.json')
    """
    from .backends.azure.settings import DEFAULT_PROFILE, PROFILE_FIELDS, load_settings
    from .backends.azure.settings import save_profile as write_profile

    name = profile or DEFAULT_PROFILE
    flags = {"subscription_id": subscription_id, "resource_group": resource_group,
             "workspace_name": workspace_name, "location": location}
    resolved = load_settings(flags, profile=name, new_profile=True)
    values = {k: getattr(resolved, k) for k in PROFILE_FIELDS}
    if not any(values.values()):
        raise UsageError("nothing to save: give --subscription-id, --resource-group, --workspace "
                         "or --location")
    path = write_profile(name, values, make_default=make_default, env=os.environ)
    return SavedProfile(name, Path(path), values)
