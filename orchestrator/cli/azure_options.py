"""The workspace flags every Azure command shares, declared once.

Why one place: `init`, `workspace`, `compute` and `train` all name a workspace the same way; a flag
declared per command drifts (a missing short form, another help text, another parameter name).
The parameter names are the fields of orchestrator.backends.azure.settings.Settings, so the
flags pass straight to load_settings as its highest-precedence layer. Only the click declarations
live here (they are CLI code); what the flags mean is the settings module's.
"""
import functools

import click

from ..backends.azure.settings import ENV_VARS, FLAGS, PROFILE_FIELDS, load_settings

# the long flags and the variables come from settings (its error messages name them too)
SHORT = {"resource_group": "-g", "workspace_name": "-w", "location": "-l"}
HELP = {"subscription_id": "Azure subscription.", "resource_group": "Resource group.",
        "workspace_name": "Azure ML workspace.", "location": "Azure region, e.g. eastus."}


def workspace_options(location=True, prefix="", profile_default=None):
    """Decorator adding --subscription-id, -g, -w, [-l], --profile; the command receives them as
    the keyword arguments subscription_id, resource_group, workspace_name, [location], profile.

    location: False for commands that only use an existing workspace (train).
    prefix: put before each help text, e.g. "azure: " on a command with several backends.
    profile_default: the profile `init` writes to when --profile is not given.
    """
    def decorate(command):
        fields = [f for f in PROFILE_FIELDS if location or f != "location"]
        options = [click.option(FLAGS[f], *([SHORT[f]] if f in SHORT else []), f,
                                help=f"{prefix}{HELP[f]} [env {ENV_VARS[f]}]") for f in fields]
        options.append(click.option("--profile", default=profile_default, show_default=bool(profile_default),
                                    help=prefix + "Named profile of the config file (see `orchestrate init`)."))
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def workspace_flags(kwargs):
    """Take the workspace flags out of a command's `kwargs`: {Settings field: value} for
    load_settings (profile stays in kwargs: it selects a layer, it is not one)."""
    return {f: kwargs.pop(f, None) for f in PROFILE_FIELDS}


def with_settings(command):
    """Decorator: all the workspace flags, resolved by load_settings and passed as `settings`."""
    @workspace_options()
    @functools.wraps(command)
    def wrapper(profile, **kwargs):
        return command(settings=load_settings(workspace_flags(kwargs), profile=profile), **kwargs)
    return wrapper
