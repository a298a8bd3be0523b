"""`orchestrate init|workspace|compute`: exit codes, one-line errors, no secrets, fast --help.

The commands run in-process through click's runner with the network seam replaced by the
RecordingSeam of test_azure_backend; the import-time check runs in a real subprocess.
"""
import json
import subprocess
import sys
from dataclasses import dataclass
from unittest import mock

import pytest
from click.testing import CliRunner
from test_azure_backend import World

import orchestrator.workspace
from orchestrator.cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow

ACCOUNT_KEY = "c2VjcmV0LWFjY291bnQta2V5LWRvLW5vdC1sZWFr"
SAS_SIG = "U0VDUkVUU0lHTkFUVVJF"
WS = ["--subscription-id", "sub", "-g", "rg", "-w", "ws"]


@pytest.fixture
def world(monkeypatch):
    world = World()
    def seam_for(settings):
        return world.seam(settings.require("subscription_id", "resource_group", "workspace_name"))
    monkeypatch.setattr(orchestrator.workspace, "seam_for", seam_for)
    return world


@pytest.fixture
def secrets_in_env(monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={ACCOUNT_KEY}")
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", f"sv=2024-11-04&sp=rl&sig={SAS_SIG}")


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self):
        return self.stdout


def invoke(*args):
    """Run the real entry point (orchestrator.cli.main.main: errors -> one line + exit code)."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _), mock.patch.object(sys, "argv", ["orchestrate", *map(str, args)]):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        return Result(code, out.getvalue().decode(), err.getvalue().decode())


def assert_clean(result):
    text = result.stdout + result.stderr
    assert ACCOUNT_KEY not in text and SAS_SIG not in text and "Traceback" not in text


def test_help_does_not_import_the_azure_sdk():
    code = ("import sys\nfrom orchestrator.cli.main import cli\n"
            "for args in (['--help'], ['compute', '--help'], ['workspace', '--help'], ['init', '--help'],"
            " ['compute', 'sizes']):\n"
            "    try:\n        cli(args)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('azure.ai.ml', 'azure.identity', 'azure.mgmt.resource') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_compute_sizes_table_and_json():
    result = invoke("compute", "sizes")
    assert result.exit_code == 0
    row = next(line for line in result.output.splitlines() if line.startswith("gpu-nc12"))
    assert "Standard_NC12" in row and "K80" in row and "retired 2023-09-06 -> Standard_NC16as_T4_v3" in row
    rows = json.loads(invoke("compute", "sizes", "--json").output)
    a100 = next(r for r in rows if r["alias"] == "gpu-a100")
    assert a100 == {"alias": "gpu-a100", "name": "Standard_NC24ads_A100_v4", "gpus": 1, "gpu_type": "A100 80GB",
                    "gpu_memory_gib": 80, "vcpus": 24, "retired": None, "status": "current"}


def test_compute_create_with_a_retired_alias(world, secrets_in_env):
    result = invoke("compute", "create", "--compute", "gpu-nc12", "--max-nodes", 1, "--low-priority",
                    "--idle-minutes", 5, *WS)
    assert result.exit_code == 0, result.output
    notices = [l for l in result.stderr.splitlines() if l.startswith("notice:")]
    assert len(notices) == 1 and "Standard_NC12" in notices[0] and "Standard_NC16as_T4_v3" in notices[0]
    assert "notice" not in result.stdout
    assert "created compute nc16as-t4-v3: Standard_NC16as_T4_v3, 0-1 nodes (low-priority)" in result.stdout
    created = world.computes["nc16as-t4-v3"]
    assert (created["tier"], created["idle_seconds"], created["min_instances"]) == ("low_priority", 300, 0)
    assert_clean(result)
    again = invoke("compute", "create", "--compute", "Standard_NC16as_T4_v3", *WS)
    assert again.exit_code == 0 and "already exists" in again.output


def test_compute_create_short_of_quota_exits_2_with_one_line(world):
    result = invoke("compute", "create", "--compute", "gpu-t4", *WS)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: not enough quota in eastus for 1 x Standard_NC4as_T4_v3")
    assert "'Standard NCASv3_T4 Family Cluster Dedicated vCPUs' needs 4 vCPUs, 0 available" in lines[0]
    assert world.computes == {}


@pytest.mark.parametrize("args,match", [
    (["compute", "create", "--compute", "gpu-k80", *WS], "unknown compute 'gpu-k80'; use an alias (cpu, gpu-t4"),
    (["compute", "show", "--compute", "gpu-t4"], "missing Azure setting(s): --subscription-id"),
    (["compute", "create", "--compute", "gpu-t4", "--max-nodes", 0, *WS], "--max-nodes"),
    (["workspace", "show", "--profile", "nope", *WS], "unknown profile 'nope'"),
    (["init"], "nothing to save"),
])
def test_bad_input_exits_2_with_one_line(world, args, match):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and match in result.stderr
    assert_clean(result)


def test_workspace_create_show_delete(world, secrets_in_env):
    world.resource_group, world.workspace = False, None
    result = invoke("workspace", "create", *WS, "--location", "eastus")
    assert result.exit_code == 0, result.output
    assert "created resource group rg in eastus" in result.output
    assert "studio: https://ml.azure.com/?wsid=/subscriptions/sub/resourcegroups/rg/workspaces/ws" in result.output
    assert "already exists" in invoke("workspace", "create", *WS).output
    shown = invoke("workspace", "show", *WS, "--json")
    info = json.loads(shown.output)
    assert info["workspace_name"] == "ws" and info["sources"]["workspace_name"] == "flag"
    assert_clean(shown)
    deleted = invoke("workspace", "delete", *WS, "--yes", "--permanently")
    assert deleted.exit_code == 0 and world.workspace is None
    assert ("delete_workspace", False, True) in world.calls and "deleted workspace ws permanently" in deleted.output
    missing = invoke("workspace", "show", *WS)
    assert missing.exit_code == 2 and "not found" in missing.stderr


def test_init_saves_a_profile_the_other_commands_use(world, tmp_path, secrets_in_env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("init", "--profile", "lab", "--subscription-id", "s-lab", "-g", "rg-lab", "-w", "ws-lab",
                    "-l", "westeurope")
    assert result.exit_code == 0, result.output
    stored = (tmp_path / "config" / "orchestrate" / "config.json").read_text()
    assert "rg-lab" in stored and ACCOUNT_KEY not in stored and "AccountKey" not in stored
    shown = invoke("workspace", "show", "--profile", "lab")
    assert shown.exit_code == 0, shown.output
    assert "ws-lab" in shown.output and "(profile 'lab')" in shown.output
    assert_clean(shown)
    # an update keeps the profile's other values
    invoke("init", "--profile", "lab", "-l", "northeurope")
    profile = json.loads((tmp_path / "config" / "orchestrate" / "config.json").read_text())["profiles"]["lab"]
    assert profile == {"subscription_id": "s-lab", "resource_group": "rg-lab", "workspace_name": "ws-lab",
                       "location": "northeurope"}


def test_train_dry_run_export_to_a_missing_folder_exits_2_with_one_line(tmp_path):
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "data" / label / f"{i}.png").write_bytes(b"not decoded by a dry run")
    result = invoke("train", tmp_path / "data", "--backend", "azure", "--dry-run",
                    "--export", "/nonexistent/dir/job.yml")
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stderr == "error: cannot write /nonexistent/dir/job.yml: no such folder\n"


def test_train_dry_run_prints_nothing_of_the_azure_sdk_on_stderr(cli, tmp_path):
    """azure-ai-ml's import gives its logger a stderr handler of its own: a dry run (which loads the
    SDK to build and validate the job) must still print only its plan, on stdout."""
    from imagegen import make_dataset

    data = make_dataset(tmp_path / "data", per_class=4, size=16)
    result = cli("train", data, "--compute", "gpu-nc12", "--dry-run", "--export", tmp_path / "job.yml",
                 cwd=tmp_path)
    assert result.returncode == 0 and (tmp_path / "job.yml").is_file(), result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("command", [["init"], ["workspace", "show"], ["workspace", "create"],
                                     ["compute", "create"], ["compute", "show"], ["compute", "delete"]])
def test_every_azure_command_takes_the_same_workspace_flags(command):
    """One declaration: the same long and short names, the same parameter names, everywhere."""
    import click

    from orchestrator.cli.main import cli

    group = cli
    for name in command:
        group = group.get_command(click.Context(group), name)
    params = {p.name: sorted(p.opts) for p in group.params}
    assert params["subscription_id"] == ["--subscription-id"]
    assert params["resource_group"] == ["--resource-group", "-g"]
    assert params["workspace_name"] == ["--workspace", "-w"]
    assert params["location"] == ["--location", "-l"]
    assert params["profile"] == ["--profile"]


def test_init_without_profile_writes_the_default_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("init", "-g", "rg1").exit_code == 0
    stored = json.loads((tmp_path / "config" / "orchestrate" / "config.json").read_text())
    assert stored["profiles"]["default"]["resource_group"] == "rg1"


# --------------------------------------------------------------------------------------------
# Backend choice (issue 7, story 1): an Azure-only option means Azure, never a silent local run


@pytest.fixture
def dataset(tmp_path):
    from imagegen import make_dataset
    return make_dataset(tmp_path / "data", per_class=4, size=16)


def test_an_azure_option_without_a_workspace_exits_2_naming_init(cli, dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no Azure ML config.json up the tree either
    result = cli("train", dataset, "--compute", "gpu-nc12", "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "orchestrate init" in result.stderr
    assert "AZURE_SUBSCRIPTION_ID" in result.stderr and "AZUREML_WORKSPACE_NAME" in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing started, on any backend


def test_an_azure_option_with_another_backend_is_refused(cli, dataset, tmp_path):
    result = cli("train", dataset, "--backend", "local", "--nodes", "2", "--low-priority",
                 "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert result.returncode == 2
    assert "--nodes, --low-priority: Azure ML option(s), which --backend local has not" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_auto_names_the_workspace_it_found_and_where(monkeypatch, tmp_path):
    from orchestrator.training import choose_backend
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "0000-sub")
    monkeypatch.setenv("AZURE_RESOURCE_GROUP", "rg-ml")
    monkeypatch.setenv("AZUREML_WORKSPACE_NAME", "ws-ml")
    backend, line = choose_backend("auto", {})
    assert backend == "azure"
    assert line == "Azure ML workspace ws-ml (resource group rg-ml, subscription 0000-sub) from environment"
    backend, line = choose_backend("auto", {"workspace_name": "other"})  # a flag wins and is named
    assert "workspace other" in line and line.endswith("from environment, flag")


def test_auto_without_azure_options_or_workspace_stays_on_this_machine(monkeypatch, tmp_path):
    from orchestrator.training import choose_backend
    monkeypatch.chdir(tmp_path)
    backend, line = choose_backend("auto", {"cpus": 2})
    assert backend in ("docker", "local") and line is None
