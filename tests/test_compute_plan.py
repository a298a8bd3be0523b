"""`compute create` / `compute sizes` against the service's documented shapes, through the REAL
azure-ai-ml MLClient: the seam's requests go out through tests/azure_transport.ManagementPlane, so
the SDK's own serialization, paging, deserialization (with its 1.35 camelCase quirk) and LRO
polling run. What is checked: the plan (size, GPUs, Linux prices, cost at max nodes, quota rows),
the quota rules (missing family row = none, -1 = no limit, the regional total binds, the
subscription row is the quota), and that nothing is created -- no PUT reaches the service -- when
quota is short.
"""
import json
import sys
from unittest import mock

import pytest
from azure_transport import (DOCUMENTED_USAGES, DS3_V2, SUB, TOKEN, ManagementPlane, StaticToken,
                             family_usage, regional_usage, vm_size)
from click.testing import CliRunner

import orchestrator.workspace
from orchestrator.backends.azure.catalogue import catalogue, resolve
from orchestrator.backends.azure.provision import ensure_compute, family_quota_name
from orchestrator.backends.azure.seam import AzureSeam
from orchestrator.backends.azure.settings import Settings
from orchestrator.cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow

WS = ["--subscription-id", SUB, "-g", "rg", "-w", "ws"]
T4_DEDICATED = "Standard NCASv3_T4 Family Cluster Dedicated vCPUs"
REGIONAL = "Total Cluster Dedicated Regional vCPUs"
QUOTA_URL = "https://portal.azure.com/#view/Microsoft_Azure_Capacity/QuotaMenuBlade/~/myQuotas"


@pytest.fixture
def plane(monkeypatch):
    """The management plane every `compute` command of these tests talks to."""
    plane = ManagementPlane()

    def seam_for(settings):
        return AzureSeam(settings.require("subscription_id", "resource_group", "workspace_name"),
                         credential=StaticToken(), transport=plane)
    monkeypatch.setattr(orchestrator.workspace, "seam_for", seam_for)
    return plane


def invoke(*args, input=None, tty=False):
    """The real entry point; `tty` makes stdin a terminal (the confirmation is asked only there).
    Returns (exit code, stdout, stderr); the bearer token must never show."""
    runner = CliRunner()
    with runner.isolation(input=input) as (out, err, _), \
            mock.patch.object(sys, "argv", ["orchestrate", *map(str, args)]), \
            mock.patch.object(sys.stdin, "isatty", return_value=tty):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    assert TOKEN not in stdout + stderr and "Traceback" not in stdout + stderr
    return code, stdout, stderr


def puts(plane):
    return [path for method, path in plane.requests if method == "PUT"]


def plan_row(stdout, name):
    """The plan's quota row of `name` as its columns: [needed, used, limit, notes...]."""
    line = next(line for line in stdout.splitlines() if line.strip().startswith(name))
    return line.strip()[len(name):].split()


# quota ------------------------------------------------------------------------------------------
def test_a_family_without_a_quota_row_has_no_quota_and_nothing_is_created(plane):
    """The documented usages have no NC T4 v3 row at all, like a new subscription."""
    code, stdout, stderr = invoke("compute", "create", "--compute", "gpu-t4", *WS)
    assert code == 2
    assert stderr == (
        f"error: not enough quota in eastus for 1 x Standard_NC4as_T4_v3 (dedicated): '{T4_DEDICATED}' "
        "needs 4 vCPUs, 0 available (limit 0, in use 0, no quota row); "
        f"request '{T4_DEDICATED}' to at least 4 in eastus at {QUOTA_URL}\n")
    assert plan_row(stdout, T4_DEDICATED) == ["4", "0", "0", "(no", "quota", "row:", "none", "granted)", "SHORT"]
    assert plan_row(stdout, REGIONAL) == ["4", "14", "24"]  # the documented regional total
    assert puts(plane) == [] and plane.computes == {}
    assert ("GET", f"/subscriptions/{SUB}/providers/Microsoft.MachineLearningServices/locations/eastus/usages") \
        in plane.requests


def test_the_regional_total_binds_even_when_the_family_has_room(plane):
    """Documented: DSv2 family 2 of 24 in use, the region's dedicated total 14 of 24."""
    code, stdout, stderr = invoke("compute", "create", "--compute", "cpu", "--max-nodes", 3, *WS)
    assert code == 2 and stderr.count("\n") == 1
    assert (f"'{REGIONAL}' needs 12 vCPUs, 10 available (limit 24, in use 14); "
            f"request '{REGIONAL}' to at least 26 in eastus") in stderr
    assert "DSv2" not in stderr  # the family quota is not short
    assert stderr.endswith("(or use --max-nodes 2)\n")
    assert plan_row(stdout, "Standard DSv2 Family Cluster Dedicated vCPUs") == ["12", "2", "24"]
    assert puts(plane) == []


def test_the_quota_is_the_subscription_row_not_a_workspace_share_of_it(plane):
    """The same family name comes at workspace level too; only the subscription's row is quota."""
    plane.usages = [family_usage("NCASv3_T4", "Dedicated", 4, 24, workspace="ws"),
                    family_usage("NCASv3_T4", "Dedicated", 16, 24), *DOCUMENTED_USAGES]
    code, _, stderr = invoke("compute", "create", "--compute", "gpu-t4", "--max-nodes", 3, *WS)
    assert code == 2 and f"'{T4_DEDICATED}' needs 12 vCPUs, 8 available (limit 24, in use 16)" in stderr
    code, stdout, _ = invoke("compute", "create", "--compute", "gpu-t4", "--max-nodes", 2, *WS)
    assert code == 0 and plan_row(stdout, T4_DEDICATED) == ["8", "16", "24"]
    assert puts(plane) == [f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.MachineLearningServices/"
                           "workspaces/ws/computes/gpu-t4"]


def test_low_priority_family_rows_have_no_limit_and_the_cluster_is_created_after_the_plan(plane):
    """Documented: low-priority family rows say limit -1; the low-priority regional total 18 of 50."""
    settings = Settings(subscription_id=SUB, resource_group="rg", workspace_name="ws")
    seam = AzureSeam(settings, credential=StaticToken(), transport=plane)
    said = []
    ensure_compute(seam, resolve("cpu"),
                   on_event=lambda event: said.append(event["message"]), max_nodes=3, low_priority=True)  # the train path's call
    text = "\n".join(said)
    assert plan_row(text, "Standard DSv2 Family Cluster LowPriority vCPUs") == ["12", "0", "none"]
    assert plan_row(text, "Total Cluster LowPriority Regional vCPUs") == ["12", "18", "50"]
    assert "price:   0.29 USD/h dedicated, 0.06 USD/h low-priority per node (Linux" in text  # VirtualMachineSize/list.json
    assert "cost:    0.18 USD/h at 3 low-priority node(s)" in text
    assert said[-1] == "created compute cpu: Standard_DS3_v2, 0-3 nodes (low-priority), scales down after 10 idle minutes"
    assert said.index(next(l for l in said if l.startswith("plan:"))) < len(said) - 1
    # what reached the service, in order: quota read before the one PUT, then the LRO polled
    methods = [m for m, _ in plane.requests]
    assert methods.count("PUT") == 1
    usage_read = plane.requests.index(("GET", f"/subscriptions/{SUB}/providers/Microsoft.MachineLearningServices/"
                                              "locations/eastus/usages"))
    assert usage_read < methods.index("PUT")
    sent = plane.puts[0]["properties"]["properties"]
    assert (sent["vmSize"], sent["vmPriority"], sent["scaleSettings"]) == (
        "Standard_DS3_v2", "LowPriority", {"maxNodeCount": 3, "minNodeCount": 0, "nodeIdleTimeBeforeScaleDown": "PT10M"})
    assert plane.slept == [10.0]  # after the one InProgress, the poller waited the Retry-After it was told
    assert seam.get_compute("cpu")["state"] == "Succeeded"


def test_the_low_priority_regional_total_binds(plane):
    code, _, stderr = invoke("compute", "create", "--compute", "cpu", "--max-nodes", 9, "--low-priority", *WS)
    assert code == 2
    assert ("'Total Cluster LowPriority Regional vCPUs' needs 36 vCPUs, 32 available (limit 50, in use 18)"
            in stderr) and "Family" not in stderr and stderr.endswith("(or use --max-nodes 8)\n")
    assert puts(plane) == []


def test_family_names_of_vm_sizes_become_the_usage_rows_prose():
    assert family_quota_name("standardDSv2Family", False) == "Standard DSv2 Family Cluster Dedicated vCPUs"
    assert family_quota_name("standardNCASv3_T4Family", True) == "Standard NCASv3_T4 Family Cluster LowPriority vCPUs"
    assert family_quota_name("standardNCADSA100v4Family", False) == \
        "Standard NCADSA100v4 Family Cluster Dedicated vCPUs"


# the plan ---------------------------------------------------------------------------------------
def test_the_plan_shows_gpus_linux_prices_and_the_cost_at_max_nodes(plane):
    plane.usages = [*DOCUMENTED_USAGES, family_usage("NCASv3_T4", "Dedicated", 0, 24),
                    family_usage("NCASv3_T4", "LowPriority", 0, -1)]
    code, stdout, _ = invoke("compute", "create", "--compute", "gpu-t4", "--max-nodes", 2, *WS)
    assert code == 0, stdout
    assert stdout.splitlines()[:4] == [
        "plan: compute gpu-t4 in eastus",
        "  size:    Standard_NC4as_T4_v3: 1x T4, 16 GiB GPU memory, 4 vCPUs per node",
        "  price:   0.53 USD/h dedicated, 0.10 USD/h low-priority per node (Linux, Azure's estimate)",
        "  cost:    1.05 USD/h at 2 dedicated node(s), the most it scales to"]
    assert "0.86" not in stdout  # the Windows price
    assert plan_row(stdout, T4_DEDICATED) == ["8", "0", "24"]
    code, stdout, _ = invoke("compute", "create", "--compute", "Standard_NC8as_T4_v3", "--max-nodes", 4,
                             "--low-priority", *WS)
    assert code == 0 and "  cost:    0.60 USD/h at 4 low-priority node(s), the most it scales to" in stdout


def test_a_size_without_price_estimates_says_so(plane):
    plane.vm_sizes = [{k: v for k, v in DS3_V2.items() if k != "estimatedVMPrices"}]
    code, stdout, _ = invoke("compute", "create", "--compute", "cpu", *WS)
    assert code == 0
    assert "  price:   no estimate dedicated, no estimate low-priority per node" in stdout
    assert "  cost:    no estimate at 1 dedicated node(s)" in stdout


def test_a_retired_alias_plans_and_creates_its_substitute(plane):
    # a subscription granted T4 quota: 16 vCPUs would not fit the documented regional total (14 of 24)
    plane.usages = [regional_usage("Dedicated", 0, 100), family_usage("NCASv3_T4", "Dedicated", 0, 24)]
    code, stdout, stderr = invoke("compute", "create", "--compute", "gpu-nc12", *WS)
    assert code == 0, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("notice: Standard_NC12 (2x K80) was retired on 2023-09-06")
    assert "GPUs per node: 2 -> 1" in stderr and "notice" not in stdout
    assert "  size:    Standard_NC16as_T4_v3: 1x T4, 16 GiB GPU memory, 16 vCPUs per node" in stdout
    assert puts(plane)[0].endswith("/computes/nc16as-t4-v3")
    assert plane.puts[0]["properties"]["properties"]["vmSize"] == "Standard_NC16as_T4_v3"
    plane.requests.clear()
    code, stdout, _ = invoke("compute", "create", "--compute", "Standard_NC12", *WS)
    # the service answers vmSize in upper case: still the same size, no warning, nothing sent again
    assert code == 0 and stdout == "compute nc16as-t4-v3 already exists (STANDARD_NC16AS_T4_V3, 0-1 nodes)\n"
    assert puts(plane) == [] and not any(path.endswith("/usages") for _, path in plane.requests)


def test_sizes_the_region_does_not_offer_or_that_cannot_run_low_priority(plane):
    code, _, stderr = invoke("compute", "create", "--compute", "gpu-h100", *WS)
    assert code == 2 and "Standard_NC40ads_H100_v5 is not offered for Azure ML compute in eastus" in stderr
    plane.vm_sizes = [vm_size("Standard_NC4as_T4_v3", "standardNCASv3_T4Family", 4, 1, 28.0, 0.526, 0.105,
                              low_priority_capable=False)]
    code, _, stderr = invoke("compute", "create", "--compute", "gpu-t4", "--low-priority", *WS)
    assert code == 2 and "cannot run low-priority nodes in eastus; drop --low-priority" in stderr
    assert puts(plane) == []


# the confirmation -------------------------------------------------------------------------------
def test_the_confirmation_is_asked_only_on_a_terminal_and_yes_skips_it(plane):
    code, stdout, stderr = invoke("compute", "create", "--compute", "cpu", *WS, input="n\n", tty=True)
    assert code == 130 and "create compute cpu? [y/N]" in stdout and "plan: compute cpu" in stdout
    assert puts(plane) == []
    code, stdout, _ = invoke("compute", "create", "--compute", "cpu", *WS, "--yes", tty=True)
    assert code == 0 and "[y/N]" not in stdout and "created compute cpu" in stdout
    assert len(puts(plane)) == 1


def test_no_question_when_stdin_is_not_a_terminal(plane):
    code, stdout, _ = invoke("compute", "create", "--compute", "cpu", *WS, input="n\n")
    assert code == 0 and "[y/N]" not in stdout and len(puts(plane)) == 1


# compute sizes ----------------------------------------------------------------------------------
def test_compute_sizes_shows_the_workspace_regions_prices(plane):
    code, stdout, _ = invoke("compute", "sizes", *WS)
    assert code == 0
    assert "USD/h dedicated" in stdout.splitlines()[0] and "USD/h low-pri" in stdout.splitlines()[0]
    cpu = next(line for line in stdout.splitlines() if line.startswith("cpu "))
    assert cpu.split()[-2:] == ["0.29", "0.06"]  # VirtualMachineSize/list.json, Linux
    h100 = next(line for line in stdout.splitlines() if line.startswith("gpu-h100 "))
    assert h100.split()[-2:] == ["-", "-"]  # not offered in the region
    assert stdout.splitlines()[-1].startswith("prices: eastus, Linux, per node-hour")
    rows = json.loads(invoke("compute", "sizes", "--json", *WS)[1])
    a100 = next(r for r in rows if r["alias"] == "gpu-a100")
    assert a100["prices"] == {"currency": "USD", "dedicated": 3.673, "low_priority": 0.735}
    assert next(r for r in rows if r["alias"] == "gpu-h100")["prices"] is None
    assert ("GET", f"/subscriptions/{SUB}/providers/Microsoft.MachineLearningServices/locations/eastus/vmSizes") \
        in plane.requests


def test_compute_sizes_without_a_reachable_workspace_is_the_catalogue(plane):
    code, stdout, stderr = invoke("compute", "sizes", "--json")
    assert code == 0 and json.loads(stdout) == catalogue() and stderr == ""
    assert plane.requests == []  # nothing configured: no call at all
    plane.workspace = None
    code, stdout, stderr = invoke("compute", "sizes", "--json", *WS)
    assert code == 0 and json.loads(stdout) == catalogue()
    assert stderr == "note: no prices (workspace 'ws' does not exist); showing the catalogue only\n"
