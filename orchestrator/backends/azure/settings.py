"""Where the Azure settings come from: flags > environment > profile file > Azure ML config.json.

Why per field: a user with a workspace in config.json (the Azure ML convention) may still override
just the resource group with an environment variable or a flag. Each resolved value remembers its
source so error messages can say where a wrong value came from.

Credentials are never stored: DefaultAzureCredential finds them (az login, managed identity, env).
The one secret read here, AZURE_STORAGE_CONNECTION_STRING, comes from the environment only, is
never written to a profile and is hidden from repr(). Nothing here imports azure: the choice of
`--backend auto` (`workspace_line()`, AzureBackend.auto_choice) must cost no network and no SDK import.
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from remote_scripts.atomic import write_atomically

from ...errors import UsageError
# the storage secret: environment only, never a profile field (the blob client's own constant)
from ...storage.blob import CONNECTION_STRING_ENV

# field -> environment variable (MLClient itself reads none of these)
ENV_VARS = {
    "subscription_id": "AZURE_SUBSCRIPTION_ID",
    "resource_group": "AZURE_RESOURCE_GROUP",
    "workspace_name": "AZUREML_WORKSPACE_NAME",
    "location": "AZURE_LOCATION",
}
# field -> the flag that sets it, for messages
FLAGS = {
    "subscription_id": "--subscription-id",
    "resource_group": "--resource-group",
    "workspace_name": "--workspace",
    "location": "--location",
}
PROFILE_FIELDS = tuple(ENV_VARS)
DEFAULT_PROFILE = "default"
# The workspace an Azure run uses, and the flags of train() and score() that set it (the backend's
# `setting_flags`: strings beside its options; a profile selects a layer rather than being one).
WORKSPACE_FIELDS = ("subscription_id", "resource_group", "workspace_name")
WORKSPACE_FLAGS = {**{f: FLAGS[f] for f in WORKSPACE_FIELDS}, "profile": "--profile"}


@dataclass
class Settings:
    """Resolved Azure settings; `sources` maps each set field to where it came from."""
    subscription_id: str = None
    resource_group: str = None
    workspace_name: str = None
    location: str = None
    storage_connection_string: str = field(default=None, repr=False)
    profile: str = DEFAULT_PROFILE
    sources: dict = field(default_factory=dict)

    def require(self, *names):
        """Raise UsageError naming every missing field and the ways to set it."""
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            how = "; ".join(f"{FLAGS[n]} or {ENV_VARS[n]}" for n in missing)
            raise UsageError(f"missing Azure setting(s): {how} (or run `orchestrate init`, "
                            f"or put an Azure ML config.json in this folder)")
        return self

    def public(self):
        """The non-secret settings, safe to print, export or write next to a run."""
        return {n: getattr(self, n) for n in PROFILE_FIELDS if getattr(self, n)}


def config_path(env=None):
    """$XDG_CONFIG_HOME/orchestrate/config.json (default ~/.config/orchestrate/config.json)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "orchestrate" / "config.json"


def read_profiles(path):
    """The profile file's content: {"default_profile": name, "profiles": {name: {...}}}."""
    if not path.exists():
        return {"profiles": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the profile file {path}: {exc}")
    if not isinstance(data, dict) or not isinstance(data.get("profiles", {}), dict):
        raise UsageError(f"the profile file {path} is not an orchestrate profile file")
    data.setdefault("profiles", {})
    return data


def save_profile(name, values, make_default=False, env=None):
    """Write (merge) one named profile; only the non-secret PROFILE_FIELDS are ever stored."""
    path = config_path(env)
    data = read_profiles(path)
    profile = data["profiles"].setdefault(name, {})
    profile.update({k: v for k, v in values.items() if k in PROFILE_FIELDS and v})
    if make_default or "default_profile" not in data:
        data["default_profile"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def find_azureml_config(start=None):
    """The Azure ML config.json that MLClient.from_config would find, or None.

    Same search: the start folder and up to 20 parents, in each `.azureml/`, `aml_config/` and the
    folder itself, `config.json` before `project.json`.
    """
    folder = Path(start or os.getcwd()).resolve()
    for _ in range(21):
        for sub in (".azureml", "aml_config", ""):
            for name in ("config.json", "project.json"):
                candidate = folder / sub / name
                if candidate.is_file():
                    return candidate
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


def _azureml_values(path):
    """subscription_id / resource_group / workspace_name from config.json (or its "Scope")."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read Azure ML config {path}: {exc}")
    values = {"subscription_id": data.get("subscription_id"),
              "resource_group": data.get("resource_group"),
              "workspace_name": data.get("workspace_name")}
    scope = data.get("Scope") or data.get("scope")
    if scope:  # /subscriptions/S/resourceGroups/R/providers/Microsoft.MachineLearningServices/workspaces/W
        parts = scope.strip("/").split("/")
        pairs = {k.lower(): v for k, v in zip(parts[::2], parts[1::2])}
        values = {"subscription_id": pairs.get("subscriptions"),
                  "resource_group": pairs.get("resourcegroups"),
                  "workspace_name": pairs.get("workspaces")}
    return {k: v for k, v in values.items() if v}


def load_settings(flags=None, profile=None, env=None, cwd=None, new_profile=False):
    """Resolve the settings, field by field: flags > environment > profile > Azure ML config.json.

    `flags` maps field names to values given on the command line (None = not given). An explicit
    `profile` that does not exist is an error (unless `new_profile`: `orchestrate init` creating
    it); the implicit default profile may be absent.
    """
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v}
    path = config_path(env)
    data = read_profiles(path)
    name = profile or env.get("ORCHESTRATE_PROFILE") or data.get("default_profile") or DEFAULT_PROFILE
    if (profile or env.get("ORCHESTRATE_PROFILE")) and name not in data["profiles"] \
            and not new_profile:
        known = ", ".join(sorted(data["profiles"])) or "none yet; create one with `orchestrate init`"
        raise UsageError(f"unknown profile {name!r} in {path} (profiles: {known})")
    layers = [("flag", flags),
              ("environment", {f: env.get(v) for f, v in ENV_VARS.items() if env.get(v)}),
              (f"profile {name!r}", data["profiles"].get(name, {}))]
    azureml = find_azureml_config(cwd)
    if azureml:
        layers.append((str(azureml), _azureml_values(azureml)))
    settings = Settings(profile=name,
                        storage_connection_string=env.get(CONNECTION_STRING_ENV))
    for key in PROFILE_FIELDS:
        for source, values in layers:
            if values.get(key):
                setattr(settings, key, values[key])
                settings.sources[key] = source
                break
    return settings


def workspace_line(options, required=False):
    """The line naming the workspace a job with `options` (its workspace flags among them) would run
    in and where each setting came from; None when none is fully named, or with `required` the
    one-line UsageError naming each missing setting and `orchestrate init`. No network, no SDK."""
    settings = load_settings({f: options.get(f) for f in WORKSPACE_FIELDS}, profile=options.get("profile"))
    if not all(getattr(settings, f) for f in WORKSPACE_FIELDS):
        if required:
            settings.require(*WORKSPACE_FIELDS)
        return None
    sources = sorted({settings.sources[f] for f in WORKSPACE_FIELDS})
    return (f"Azure ML workspace {settings.workspace_name} (resource group {settings.resource_group}, "
            f"subscription {settings.subscription_id}) from {', '.join(sources)}")


def studio_url(settings):
    """The Azure ML Studio link of the workspace."""
    return (f"https://ml.azure.com/?wsid=/subscriptions/{settings.subscription_id}"
            f"/resourcegroups/{settings.resource_group}/workspaces/{settings.workspace_name}")
