"""The cost estimate of an Azure run (issue 19, item 2), through the REAL azure-ai-ml MLClient.

The price comes from list_sizes (VirtualMachineSize/list.json's shape) and the run's times from
run history (runs/{id}, runs/{id}/children: models.Run's startTimeUtc/endTimeUtc), both served by
tests/azure_transport.RunHistoryPlane. The ledger row and azure.json are written in the shapes the
runner and each job kind's submit write them. What is checked: the size and node count come from
the run's own record (a score run's cluster and instances, a search's trials at once), the time
from the service's start and end (summed over a search's trials), not from the ledger's submit to
the moment the client saw the end, plus the idle minutes before the cluster scales down, and the
output says it is an estimate.
"""
import json
import sys
import time
from unittest import mock

import pytest
from azure_transport import SUB, TOKEN, RunHistoryPlane, StaticToken, history_run
from click.testing import CliRunner

import orchestrator
from orchestrator.backends.azure import seam as seam_module
from orchestrator.backends.azure.score_job import plan_params, plan_score
from orchestrator.cli.main import main
from orchestrator.ledger import Ledger, RunRecord

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow

WORKSPACE = {"subscription_id": SUB, "resource_group": "rg", "workspace_name": "ws"}
DATASTORE = {"name": "workspaceblobstore", "account": "wsstorage", "container": "azureml-blobstore-1",
             "endpoint": "core.windows.net"}
T0 = time.time() - 3 * 3600  # the runs ran three hours ago
DAY = 24 * 3600
T4, A100 = 0.526, 3.673  # Linux dedicated per node-hour of Standard_NC4as_T4_v3, Standard_NC24ads_A100_v4


@pytest.fixture
def plane(monkeypatch):
    plane = RunHistoryPlane()

    class Seam(seam_module.AzureSeam):  # the real seam, its network the plane
        def __init__(self, settings, credential=None, transport=None):
            super().__init__(settings, credential=StaticToken(), transport=plane)
    monkeypatch.setattr(seam_module, "AzureSeam", Seam)
    return plane


def recorded(tmp_path, run_id, params, state, created_at, status="completed"):
    """A run as the runner (ledger row, params) and the submit (runs/<id>/azure.json) record it,
    checked a day after its submit: the ledger's updated_at is now."""
    run_dir = tmp_path / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "azure.json").write_text(json.dumps({"job": run_id, "studio_url": None, "datastore": DATASTORE,
                                                    "workspace": WORKSPACE, **state}))
    Ledger().add(RunRecord(run_id=run_id, name=run_id, backend="azure", status=status, dataset="az://x/y",
                           run_dir=str(run_dir), remote_id=run_id, params=params, created_at=created_at))
    return run_dir


def show(run_id):
    """`orchestrate runs show RUN`'s cost line."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _), mock.patch.object(sys, "argv", ["orchestrate", "runs", "show", run_id]):
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, err.getvalue().decode()
        stdout = out.getvalue().decode()
    assert TOKEN not in stdout
    return next(line for line in stdout.splitlines() if line.startswith("cost"))


def history_requests(plane):
    return [path for method, path in plane.requests if path.startswith("/history/")]


def test_a_detached_run_checked_a_day_later_is_billed_for_its_run_not_the_day(plane, tmp_path):
    params = {"train_args": ["--epochs", "3"], "backend_options": {"compute": "gpu-t4", "nodes": 2}}
    recorded(tmp_path, "eurosat-1", params, {"compute": "gpu-t4"}, created_at=T0 - DAY)
    plane.runs["eurosat-1"] = history_run("eurosat-1", "Completed", start=T0, end=T0 + 30 * 60)
    cost = orchestrator.runs.get("eurosat-1").cost()
    # 30 min x 2 nodes + 10 idle minutes on each node before scale-down: 1.33 node-hours, not 2 x 25 h
    assert (cost["hours"], cost["nodes"], cost["idle_nodes"], cost["node_hours"]) == (0.5, 2, 2, 1.333)
    assert cost["size"] == "Standard_NC4as_T4_v3" and cost["tier"] == "dedicated"
    assert cost["amount"] == round((2 * 0.5 + 2 * 10 / 60) * T4, 2) == 0.70
    assert cost["final"] and cost["estimate"] and "estimate" in cost["basis"]
    assert (cost["start"], cost["end"]) == (pytest.approx(T0, abs=1e-3), pytest.approx(T0 + 1800, abs=1e-3))
    line = show("eurosat-1")
    assert line.startswith("cost       ~0.70 USD (estimate, not the bill: 0.50 h x 2 node(s) + 10 min idle before "
                           "scale-down x 2 node(s) = 1.33 node-h x 0.526 USD/h dedicated Standard_NC4as_T4_v3")
    # an ended run's times are kept in azure.json: run history is not asked again
    asked = history_requests(plane)
    assert orchestrator.runs.get("eurosat-1").cost()["amount"] == 0.70 and history_requests(plane) == asked
    state = json.loads((tmp_path / "runs" / "eurosat-1" / "azure.json").read_text())
    assert state["times"]["hours"] == 0.5 and state["price"]["per_node_hour"] == T4


def test_a_run_still_going_is_priced_so_far_without_idle_time_and_asked_again(plane, tmp_path):
    params = {"train_args": [], "backend_options": {"compute": "gpu-t4"}}
    recorded(tmp_path, "eurosat-2", params, {"compute": "gpu-t4"}, created_at=T0 - DAY, status="running")
    plane.runs["eurosat-2"] = history_run("eurosat-2", "Running", start=T0)
    cost = orchestrator.runs.get("eurosat-2").cost()
    assert not cost["final"] and cost["idle_nodes"] == 0 and cost["hours"] == pytest.approx(3, abs=0.01)
    assert "so far" in show("eurosat-2")
    assert "times" not in json.loads((tmp_path / "runs" / "eurosat-2" / "azure.json").read_text())
    plane.runs["eurosat-2"] = history_run("eurosat-2", "Completed", start=T0, end=T0 + 3600)
    cost = orchestrator.runs.get("eurosat-2").cost()
    assert cost["final"] and cost["node_hours"] == round(1 + 10 / 60, 3)


def test_a_score_run_is_priced_on_its_cluster_and_instances_for_its_steps_time(plane, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    plan = plan_score(model, "az://workspaceblobstore/images/", run_id="score-1", compute="gpu-a100", instances=3)
    recorded(tmp_path, "score-1", {"score": plan_params(plan)},
             {"compute": plan.compute.cluster, "kind": "score", "outputs": {"predictions": "x"}}, created_at=T0 - DAY)
    # the pipeline's own run starts at once; its parallel step only once the nodes are there
    plane.runs["score-1"] = history_run("score-1", "Completed", start=T0 - 3600, end=T0 + 20 * 60)
    plane.runs["score-1-step"] = history_run("score-1-step", "Completed", start=T0, end=T0 + 20 * 60, parent="score-1")
    plane.children["score-1"] = ["score-1-step"]
    cost = orchestrator.runs.get("score-1").cost()
    assert (cost["size"], cost["nodes"]) == ("Standard_NC24ads_A100_v4", 3)
    assert cost["hours"] == 0.333 and cost["node_hours"] == 1.5  # 3 x 20 min + 3 x 10 idle minutes
    assert cost["amount"] == round(1.5 * A100, 2)


def test_a_search_sums_its_trials_hours_on_one_node_each_and_idles_its_nodes_at_once(plane, tmp_path):
    trials = [{"lr": lr} for lr in (0.1, 0.03, 0.01, 0.003, 0.001)]
    params = {"train_args": ["--time-budget", "3600"], "trials": trials,
              "backend_options": {"compute": "gpu-t4", "max_concurrent_trials": 2}}
    recorded(tmp_path, "search-1", params, {"compute": "gpu-t4", "search": {"trials": trials}}, created_at=T0 - DAY)
    plane.runs["search-1"] = history_run("search-1", "Completed", start=T0 - 600, end=T0 + 2 * 3600)
    minutes = [30, 20, 10, 40, None]  # the last trial was never started (the early termination policy)
    names = [f"search-1_{i}" for i in range(5)]
    for name, ran in zip(names, minutes):
        plane.runs[name] = history_run(name, "Completed" if ran else "Canceled", parent="search-1",
                                       start=T0 if ran else None, end=T0 + ran * 60 if ran else None)
    plane.children["search-1"] = names
    cost = orchestrator.runs.get("search-1").cost()
    # 100 trial-minutes on one node each, + 10 idle minutes on each of the 2 nodes at once: 2 node-hours
    assert (cost["trials"], cost["hours"], cost["nodes"], cost["idle_nodes"]) == (4, 1.667, 2, 2)
    assert cost["node_hours"] == 2.0 and cost["amount"] == round(2 * T4, 2)
    assert show("search-1").startswith("cost       ~1.05 USD (estimate, not the bill: 4 trial(s), 1.67 h in all x "
                                       "1 node each + 10 min idle before scale-down x 2 node(s) = 2.00 node-h")


def test_a_run_that_never_started_on_a_node_costs_nothing(plane, tmp_path):
    params = {"train_args": [], "backend_options": {"compute": "gpu-t4"}}
    recorded(tmp_path, "eurosat-3", params, {"compute": "gpu-t4"}, created_at=T0 - DAY, status="canceled")
    plane.runs["eurosat-3"] = history_run("eurosat-3", "Canceled")  # canceled while queued: no start
    cost = orchestrator.runs.get("eurosat-3").cost()
    assert cost["final"] and (cost["hours"], cost["idle_nodes"], cost["amount"]) == (0, 0, 0)


def test_run_history_out_of_reach_is_a_reason_not_an_error(plane, tmp_path):
    params = {"train_args": [], "backend_options": {"compute": "gpu-t4"}}
    recorded(tmp_path, "eurosat-4", params, {"compute": "gpu-t4"}, created_at=T0 - DAY)
    cost = orchestrator.runs.get("eurosat-4").cost()  # run history has no such run: 404
    assert cost.get("amount") is None and cost["error"].startswith("Azure: "), cost
    line = show("eurosat-4")
    assert line.startswith("cost       unknown (Azure: ") and "eurosat-4" in line, line
