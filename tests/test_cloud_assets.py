"""After the run, in the cloud (issue 7): `register`, `train --register`, `attach`, the cost in
`runs show`, `compute list` -- through the REAL azure-ai-ml MLClient, whose requests go out through
tests/azure_transport.RunHistoryPlane answering in the documented shapes (Job/CommandJob/get.json,
ModelVersion and DataVersion createOrUpdate, Compute/list.json). What is checked: the bodies the
SDK sent (model path = the job's output, so Studio shows the lineage; tags; data path), what the
CLI prints, and that no bearer token or account key shows anywhere.
"""
import json
import sys
import time
from unittest import mock

import pytest
from azure_transport import (SUB, TOKEN, RunHistoryPlane, StaticToken, add_datastore, aml_compute, command_job,
                             datastore_body, history_run)
from click.testing import CliRunner

from orchestrator.backends.azure import seam as seam_module
from orchestrator.cli.main import main
from orchestrator.ledger import Ledger

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow

WS = ["--subscription-id", SUB, "-g", "rg", "-w", "ws"]
KEY = "c2VjcmV0LWFjY291bnQta2V5LWRvLW5vdC1sZWFr"
DATA_URI = "azureml://datastores/workspaceblobstore/paths/orchestrate/datasets/EuroSAT-1a2b3c4d/"
MODEL_URI = "azureml://datastores/workspaceblobstore/paths/azureml/studio-job-1/model/"


@pytest.fixture
def plane(monkeypatch):
    plane = RunHistoryPlane()
    add_datastore(plane, datastore_body("workspaceblobstore", "wsstorage", "azureml-blobstore-1"), key=KEY)
    plane.computes["gpu-t4"] = aml_compute("gpu-t4", size="STANDARD_NC16AS_T4_V3", current=2, running=1,
                                           max_nodes=3)
    plane.jobs["studio-job-1"] = command_job("studio-job-1", compute="gpu-t4", nodes=1, data_uri=DATA_URI,
                                             model_uri=MODEL_URI, display_name="eurosat-from-studio")

    class Seam(seam_module.AzureSeam):  # the real seam, its network the plane
        def __init__(self, settings, credential=None, transport=None):
            super().__init__(settings, credential=StaticToken(), transport=plane)
    monkeypatch.setattr(seam_module, "AzureSeam", Seam)
    return plane


def invoke(*args):
    runner = CliRunner()
    with runner.isolation() as (out, err, _), mock.patch.object(sys, "argv", ["orchestrate", *map(str, args)]):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    text = stdout + stderr
    assert TOKEN not in text and KEY not in text and "Traceback" not in text
    return code, stdout, stderr


def make_dataset(root):
    from PIL import Image

    for label, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / label).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8), color).save(root / label / f"{i}.png")
    return root


def attached(plane, tmp_path):
    code, stdout, stderr = invoke("attach", "studio-job-1", "--runs-dir", tmp_path / "runs", *WS)
    assert code == 0, stderr
    return Ledger().get("studio-job-1")


def test_attach_an_unknown_job_is_one_line_and_exit_2(plane, tmp_path):
    code, stdout, stderr = invoke("attach", "no-such-job", "--runs-dir", tmp_path / "runs", *WS)
    assert code == 2
    assert stderr == "error: no Azure ML job named 'no-such-job' in workspace 'ws'\n"
    assert not (tmp_path / "runs").exists()


def test_attach_writes_the_run_folder_and_ledger_row_the_backend_reads(plane, tmp_path):
    record = attached(plane, tmp_path)
    assert (record.backend, record.remote_id, record.status) == ("azure", "studio-job-1", "completed")
    assert record.name == "eurosat-from-studio" and record.dataset == DATA_URI
    run_dir = tmp_path / "runs" / "studio-job-1"
    state = json.loads((run_dir / "azure.json").read_text())
    assert state["job"] == "studio-job-1" and state["compute"] == "gpu-t4"
    assert state["outputs"] == {"model": "azureml/studio-job-1/model"}  # where download looks
    assert state["datastore"]["name"] == "workspaceblobstore"
    assert state["workspace"] == {"subscription_id": SUB, "resource_group": "rg", "workspace_name": "ws"}
    assert KEY not in (run_dir / "azure.json").read_text()
    spec = json.loads((run_dir / "spec.json").read_text())
    assert spec["backend"] == "azure" and spec["data"] == DATA_URI and spec["backend_options"]["compute"] == "gpu-t4"
    # status finds it through azure.json, like a run of ours, with no workspace flags
    code, stdout, _ = invoke("status", "studio-job-1")
    assert (code, stdout) == (0, "completed\n")
    code, _, stderr = invoke("attach", "studio-job-1", "--runs-dir", tmp_path / "runs", *WS)
    assert code == 2 and "already in the ledger" in stderr


def test_register_sends_the_jobs_output_as_model_path_with_labels_and_metrics_tags(plane, tmp_path):
    record = attached(plane, tmp_path)
    out = record.output_dir
    out.mkdir(parents=True)
    (out / "labels.json").write_text(json.dumps(["AnnualCrop", "Forest", "River"]))
    (out / "metrics.json").write_text(json.dumps({"accuracy": 0.91234, "macro_accuracy": 0.9, "log_loss": 0.25}))
    (out / "model.onnx").write_bytes(b"onnx")
    code, stdout, stderr = invoke("register", "studio-job-1", "--name", "eurosat-resnet50")
    assert code == 0, stderr
    assert stdout == ("model: eurosat-resnet50:1 (azureml://jobs/studio-job-1/outputs/model)\n"
                      f"data:  EuroSAT-1a2b3c4d:1 ({DATA_URI})\n")
    (kind, name, version, model), (kind2, name2, version2, data) = plane.asset_puts
    assert (kind, name, version) == ("models", "eurosat-resnet50", "1")
    assert model["properties"]["modelUri"] == "azureml://jobs/studio-job-1/outputs/model"
    assert model["properties"]["modelType"] == "custom_model"
    assert model["properties"]["tags"] == {"orchestrate.run_id": "studio-job-1", "num_classes": "3",
                                           "labels": "AnnualCrop,Forest,River", "test_accuracy": "0.9123",
                                           "test_macro_accuracy": "0.9000", "test_log_loss": "0.2500"}
    assert (kind2, name2, version2) == ("data", "EuroSAT-1a2b3c4d", "1")
    assert data["properties"]["dataType"] == "uri_folder" and data["properties"]["dataUri"] == DATA_URI
    # a second registration is the next version, not an error
    code, stdout, _ = invoke("register", "studio-job-1", "--name", "eurosat-resnet50", "--json")
    assert code == 0 and json.loads(stdout)["model"]["version"] == "2"
    state = json.loads((tmp_path / "runs" / "studio-job-1" / "azure.json").read_text())
    assert state["registered"]["model"]["version"] == "2"


def test_register_refuses_runs_that_did_not_complete_or_are_not_azure(plane, tmp_path):
    plane.jobs["studio-job-1"]["properties"]["status"] = "Running"
    attached(plane, tmp_path)
    code, _, stderr = invoke("register", "studio-job-1")
    assert code == 2 and stderr.startswith("error: ") and len(stderr.splitlines()) == 1
    data = make_dataset(tmp_path / "colors")
    code, _, stderr = invoke("train", data, "--backend", "local", "--register")
    assert code == 2 and stderr == ("error: --register: Azure ML option(s), which --backend local has not; drop them "
                                    "or use --backend azure\n")


def test_runs_show_estimates_the_cost_and_caches_the_price(plane, tmp_path):
    record = attached(plane, tmp_path)
    Ledger().update(record.run_id, created_at=time.time() - 26 * 3600)  # looked at a day after its submit
    start = time.time() - 3 * 3600
    plane.runs["studio-job-1"] = history_run("studio-job-1", "Completed", start=start, end=start + 2 * 3600)
    code, stdout, stderr = invoke("runs", "show", "studio-job-1")
    assert code == 0, stderr
    line = next(l for l in stdout.splitlines() if l.startswith("cost"))
    # the service's 2 hours on 1 node + 10 idle minutes before scale-down, not the ledger's 26 hours
    assert ("~2.61 USD (estimate, not the bill: 2.00 h x 1 node(s) + 10 min idle before scale-down x 1 node(s) = "
            "2.17 node-h x 1.204 USD/h dedicated STANDARD_NC16AS_T4_V3") in line
    assert stdout.splitlines()[0].startswith("run_id") and "params" in stdout  # the rest unchanged
    state = json.loads((tmp_path / "runs" / "studio-job-1" / "azure.json").read_text())
    assert state["price"]["per_node_hour"] == 1.204 and state["price"]["location"] == "eastus"
    sizes = [p for m, p in plane.requests if p.endswith("/vmSizes")]
    code, stdout, _ = invoke("runs", "show", "studio-job-1", "--json")
    assert code == 0 and json.loads(stdout)["cost_estimate"]["amount"] == 2.61
    assert [p for m, p in plane.requests if p.endswith("/vmSizes")] == sizes  # cached: not asked again


def test_compute_list_shows_every_cluster_with_current_and_idle_nodes(plane):
    plane.computes["cpu"] = aml_compute("cpu", size="STANDARD_DS3_V2", tier="LowPriority", max_nodes=4)
    plane.computes["cpu"]["properties"]["properties"]["nodeStateCounts"]["idleNodeCount"] = 1
    plane.computes["cpu"]["properties"]["properties"]["currentNodeCount"] = 1
    code, stdout, stderr = invoke("compute", "list", "--json", *WS)
    assert code == 0, stderr
    rows = {r["name"]: r for r in json.loads(stdout)}
    assert rows["gpu-t4"] == {"name": "gpu-t4", "size": "STANDARD_NC16AS_T4_V3", "tier": "dedicated",
                              "min_nodes": 0, "max_nodes": 3, "current_nodes": 2, "idle_nodes": 0,
                              "busy_nodes": 1, "allocation": "Steady", "state": "Succeeded"}
    assert (rows["cpu"]["tier"], rows["cpu"]["idle_nodes"], rows["cpu"]["current_nodes"]) == ("low_priority", 1, 1)
    code, stdout, _ = invoke("compute", "list", *WS)
    assert code == 0 and "gpu-t4" in stdout and "3 node(s) up" in stdout
