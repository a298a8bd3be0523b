"""Settings precedence: flags > environment > profile > Azure ML config.json; secrets never stored."""
import json

import pytest

from orchestrator.backends.azure.settings import (config_path, find_azureml_config, load_settings,
                                                 save_profile)
from orchestrator.errors import UsageError

CONN = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0LWtleQ==;EndpointSuffix=core.windows.net"


def azureml_config(folder, **values):
    path = folder / ".azureml" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(values))
    return path


@pytest.fixture
def env(tmp_path):
    """A clean environment with its own config home."""
    return {"XDG_CONFIG_HOME": str(tmp_path / "config")}


def test_each_field_comes_from_the_highest_layer_that_sets_it(tmp_path, env):
    project = tmp_path / "project"
    cfg = azureml_config(project, subscription_id="sub-file", resource_group="rg-file",
                         workspace_name="ws-file")
    save_profile("default", {"resource_group": "rg-profile", "workspace_name": "ws-profile",
                             "location": "westeurope"}, env=env)
    env["AZUREML_WORKSPACE_NAME"] = "ws-env"
    env["AZURE_LOCATION"] = "eastus"
    s = load_settings({"location": "northeurope", "subscription_id": None}, env=env, cwd=project)
    assert (s.subscription_id, s.resource_group, s.workspace_name, s.location) == \
        ("sub-file", "rg-profile", "ws-env", "northeurope")
    assert s.sources == {"subscription_id": str(cfg), "resource_group": "profile 'default'",
                         "workspace_name": "environment", "location": "flag"}


def test_azureml_config_is_found_in_parent_folders_and_by_scope(tmp_path, env):
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (tmp_path / "a" / "config.json").write_text(json.dumps({
        "Scope": "/subscriptions/S1/resourceGroups/R1/providers/"
                 "Microsoft.MachineLearningServices/workspaces/W1"}))
    assert find_azureml_config(deep) == tmp_path / "a" / "config.json"
    s = load_settings(env=env, cwd=deep)
    assert (s.subscription_id, s.resource_group, s.workspace_name) == ("S1", "R1", "W1")
    assert load_settings(env=env, cwd=tmp_path).workspace_name is None


def test_named_profiles_and_the_default_profile(tmp_path, env):
    save_profile("dev", {"subscription_id": "s", "resource_group": "rg-dev", "workspace_name": "w"}, env=env)
    save_profile("prod", {"subscription_id": "s", "resource_group": "rg-prod", "workspace_name": "w"}, env=env)
    # the first profile saved becomes the default until another is made default
    assert load_settings(env=env, cwd=tmp_path).resource_group == "rg-dev"
    assert load_settings(profile="prod", env=env, cwd=tmp_path).resource_group == "rg-prod"
    save_profile("prod", {"location": "eastus"}, make_default=True, env=env)
    s = load_settings(env=env, cwd=tmp_path)
    assert (s.profile, s.resource_group, s.location) == ("prod", "rg-prod", "eastus")
    with pytest.raises(UsageError, match="unknown profile 'nope'.*dev, prod"):
        load_settings(profile="nope", env=env, cwd=tmp_path)


def test_missing_settings_name_the_flags_and_variables(tmp_path, env):
    with pytest.raises(UsageError) as exc:
        load_settings({"workspace_name": "w"}, env=env, cwd=tmp_path).require(
            "subscription_id", "resource_group", "workspace_name")
    message = str(exc.value)
    assert "--subscription-id or AZURE_SUBSCRIPTION_ID" in message
    assert "--resource-group or AZURE_RESOURCE_GROUP" in message
    assert "--workspace" not in message


def test_storage_secret_comes_from_env_only_and_is_never_saved_or_shown(tmp_path, env):
    env["AZURE_STORAGE_CONNECTION_STRING"] = CONN
    save_profile("default", {"workspace_name": "w", "storage_connection_string": CONN}, env=env)
    assert "AccountKey" not in config_path(env).read_text()
    s = load_settings(env=env, cwd=tmp_path)
    assert s.storage_connection_string == CONN
    assert "AccountKey" not in repr(s) and "AccountKey" not in json.dumps(s.public())


def test_unreadable_profile_file_is_a_user_error(tmp_path, env):
    path = config_path(env)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(UsageError, match="cannot read the profile file"):
        load_settings(env=env, cwd=tmp_path)
