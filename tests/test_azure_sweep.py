"""A search on Azure ML: the sweep job, offline and through the REAL azure-ai-ml SDK.

The sweep is built from real azure-ai-ml entities (Command -> Sweep), exported and loaded back with
load_job; its submission goes through the real MLClient to tests/azure_transport.ManagementPlane,
and the PUT body is checked against the service's SweepJob shape (azure-rest-api-specs,
machinelearningservices stable/2024-04-01 examples/Job/SweepJob/createOrUpdate.json: jobType Sweep,
samplingAlgorithm {samplingAlgorithmType}, limits {jobLimitsType Sweep, maxTotalTrials,
maxConcurrentTrials, trialTimeout}, earlyTermination {policyType, evaluationInterval,
delayEvaluation}, objective {primaryMetric, goal}, trial {command, codeId, environmentId,
resources}, searchSpace). The trials after the submit come from run history as the SDK's
runhistory client reads it (runs/{id} and runs/{id}/children: PaginatedRunList {value, nextLink}
of Run {runId, parentRunId, status, startTimeUtc, endTimeUtc, tags, properties,
cancelationReason, error}; cancelationReason stays null: no document gives its wording, and why a
trial was canceled is read from statuses and times), with each trial's sampled values as the
parent's "<parent>_<index>" tags (the HyperDrive convention azureml-train-core's
HyperDriveRun.get_hyperparameters reads); the trials' files and logs are blobs in Azurite, read
through the datastore's own credential.
"""
import json
from datetime import datetime, timedelta, timezone

import pytest
from azure_transport import (SUB, ManagementPlane, Response, StaticToken, add_datastore, aml_compute, blob_container,
                             code_and_environment_as_arm_ids, datastore_body, notices, run_error, set_job_status)
from services.azurite import ACCOUNT, ACCOUNT_KEY

from orchestrator.backends.azure import AzureBackend
from orchestrator.backends.azure.backend import describe_plan, export_job_yaml
from orchestrator.backends.azure.seam import AzureSeam
from orchestrator.backends.azure.sweep_job import build_sweep, sweep_plan_from_spec, trial_prefix
from orchestrator.backends.azure.sweep_results import retag, trial_numbers, trial_summary
from orchestrator.backends.base import COMPLETED, JobSpec, RunRef
from orchestrator.errors import UsageError
from orchestrator.events import parse_line
from remote_scripts.search_space import PRIMARY_METRIC, trials_argument

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow

WS = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
RUN = "search-eurosat-20261203-101500-cd34"
CONTAINER = "azureml-blobstore-sweep"
TRIALS = [
    {"mode": "linear", "arch": "resnet50", "lr": 0.001, "weight_decay": 0.0001},
    {"mode": "linear", "arch": "resnet50", "lr": 0.003, "weight_decay": 0.0001},
    {"mode": "head", "arch": "resnet50", "lr": 0.001},
    {"mode": "full", "arch": "resnet50", "lr": 0.0001},
    {"mode": "full", "arch": "resnet18", "lr": 0.001},
]
SHARED = ["--epochs", "3", "--weights", "none", "--time-budget", "600"]


def spec(tmp_path, trials=TRIALS, train_args=SHARED, **options):
    data = tmp_path / "EuroSAT"
    data.mkdir(exist_ok=True)
    return JobSpec(run_id=RUN, data=data, run_dir=tmp_path / "runs" / RUN, train_args=list(train_args),
                   backend_options={"compute": "gpu-t4", "subscription_id": SUB, "resource_group": "rg",
                                    "workspace_name": "ws", **options}, trials=trials)


def rest(sweep):
    """What the SDK would send for the Sweep node (offline)."""
    return sweep._to_job()._to_rest_object().as_dict()["properties"]


# --- the run-history side of the plane: the sweep's run, its trial runs, their log files --------
def _iso(seconds):
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run_body(name, status, parent=None, start=None, end=None, tags=None, properties=None, error=None):
    """A run-history Run record (runhistory models.Run's wire names)."""
    return {"runId": name, "parentRunId": parent, "rootRunId": parent or name, "runUuid": f"uuid-{name}",
            "status": status, "startTimeUtc": _iso(start) if start else None,
            "endTimeUtc": _iso(end) if end else None, "tags": tags or {}, "properties": properties or {},
            "cancelationReason": None, "error": error, "runType": "azureml.scriptrun",
            "target": "gpu-t4", "displayName": name, "experimentId": "4d1c2e7a-0000-0000-0000-000000000001"}


class Plane(ManagementPlane):
    """The management plane plus run history's runs/{id}, runs/{id}/children and the trials' details."""

    def __init__(self):
        super().__init__()
        self.runs = {}      # name -> run body (the sweep's parent and its trials)
        self.children = {}  # parent -> [trial names]

    def send(self, request, **kwargs):
        path = request.url.split("?")[0].split("://", 1)[-1]
        path = path[path.index("/"):]
        base = f"/history/v1.0{WS}/runs/"
        if request.method == "GET" and path.startswith(base):
            rest_of = path[len(base):].split("/")
            name = rest_of[0]
            if len(rest_of) == 1 and name in self.runs:
                self.requests.append(("GET", path))
                body = dict(self.runs[name])
                if name in self.jobs:  # the parent: its status is the job's
                    body["status"] = self.jobs[name]["properties"]["status"]
                return Response(request, 200, body)
            if rest_of[1:] == ["children"]:
                self.requests.append(("GET", path))
                return Response(request, 200, {"value": [self.runs[c] for c in self.children.get(name, [])],
                                               "continuationToken": None, "nextLink": None})
            if rest_of[1:] == ["details"] and name in self.runs and name not in self.jobs:
                self.requests.append(("GET", path))
                run = self.runs[name]
                return Response(request, 200, {"runId": name, "runUuid": run["runUuid"], "target": "gpu-t4",
                                               "status": run["status"], "warnings": [], "tags": {}, "properties": {},
                                               "logFiles": self.log_files.get(name, {})})
        return super().send(request, **kwargs)


@pytest.fixture
def plane(azurite):
    plane = Plane()
    admin = blob_container(azurite, CONTAINER, empty=True)
    add_datastore(plane, datastore_body("workspaceblobstore", ACCOUNT, CONTAINER), key=ACCOUNT_KEY)
    plane.computes["gpu-t4"] = aml_compute("gpu-t4", size="STANDARD_NC4AS_T4_V3", max_nodes=2)
    plane.admin = admin
    return plane


def real_seam(plane, azurite):
    return lambda settings: AzureSeam(settings, credential=StaticToken(), transport=plane,
                                      blob_endpoint=azurite.endpoint)


def submitted(tmp_path, plane, azurite, monkeypatch, **options):
    code_and_environment_as_arm_ids(monkeypatch)
    said = []
    backend = AzureBackend(seam_factory=real_seam(plane, azurite), sleep=lambda s: None, on_event=notices(said),
                           clock=iter(range(0, 10**6, 5)).__next__)
    s = spec(tmp_path, **options)
    run = backend.submit(s)
    return backend, run, said


# --- the PUT body the SDK sends ------------------------------------------------------------------
def test_a_search_is_submitted_as_a_sweep_job_in_the_services_shape(tmp_path, plane, azurite, monkeypatch):
    backend, run, said = submitted(tmp_path, plane, azurite, monkeypatch)
    assert run.remote_id == RUN
    assert [(m, p.rsplit("/", 1)[-1]) for m, p in plane.requests if p.endswith(f"/jobs/{RUN}")] == \
        [("GET", RUN), ("PUT", RUN)]  # get-then-create, as for a command job
    (name, body), = plane.job_puts
    props = body["properties"]
    assert name == RUN and props["jobType"] == "Sweep"
    assert (props["displayName"], props["experimentName"]) == (RUN, "orchestrate")
    assert props["tags"] == {"orchestrate.run_id": RUN, "orchestrate.kind": "search"}
    assert props["computeId"].endswith("/computes/gpu-t4")
    assert props["samplingAlgorithm"] == {"samplingAlgorithmType": "Grid"}
    assert props["searchSpace"] == {"trial": ["choice", [[1, 2, 3, 4, 5]]]}
    assert props["objective"]["primaryMetric"] == PRIMARY_METRIC == "val_accuracy"
    assert props["objective"]["goal"].lower() == "maximize"
    # budget 600 s: the sweep 600 s + 30 min, a trial 600 s + 10 min; 4 at once by default
    assert props["limits"] == {"jobLimitsType": "Sweep", "maxTotalTrials": 5, "maxConcurrentTrials": 4,
                               "timeout": "PT40M", "trialTimeout": "PT20M"}
    assert props["earlyTermination"] == {"policyType": "MedianStopping", "evaluationInterval": 1,
                                         "delayEvaluation": 2}
    trial = props["trial"]
    command = trial["command"]
    assert command.startswith("python search.py --data ${{inputs.data}} --output ${{outputs.model}} "
                              "--checkpoint-dir ${{outputs.checkpoints}} --cache-dir image-cache --trials ")
    assert f"--trials '{trials_argument(TRIALS)}' --trial ${{{{search_space.trial}}}} " in command
    assert command.endswith("--epochs 3 --weights none --time-budget 600")
    assert (trial["codeId"], trial["environmentId"]) == (f"{WS}/codes/remote-scripts/versions/1",
                                                         f"{WS}/environments/orchestrate/versions/1")
    assert trial["environmentVariables"] == {"PYTHONUNBUFFERED": "1"}
    assert trial["resources"]["shmSize"] == "16g" and "distribution" not in trial
    assert set(props["inputs"]) == {"data"}  # the literal `trial` input became the search space
    assert props["inputs"]["data"]["uri"].startswith(
        "azureml://datastores/workspaceblobstore/paths/orchestrate/packed/")
    for output in ("model", "checkpoints"):
        assert props["outputs"][output]["uri"] == (f"azureml://datastores/workspaceblobstore/paths/orchestrate/"
                                                   f"runs/{RUN}/trials/${{{{name}}}}/{output}/")
        assert props["outputs"][output]["mode"] == "ReadWriteMount"
    state = json.loads((run.run_dir / "azure.json").read_text())
    assert state["search"] == {"trials": TRIALS, "budget_seconds": 600.0, "timeout_seconds": 2400,
                               "trial_timeout_seconds": 1200}  # the limits it was sent with
    assert state["job"] == RUN and "ml.azure.com/runs/" in state["studio_url"]
    assert ACCOUNT_KEY not in json.dumps(state)


def test_concurrency_policy_and_limits_follow_the_options(tmp_path):
    two = rest(build_sweep(sweep_plan_from_spec(spec(tmp_path, max_concurrent_trials=2, early_termination="bandit"))))
    assert two["limits"]["maxConcurrentTrials"] == 2
    assert two["earlyTermination"] == {"policyType": "Bandit", "slackFactor": 0.1, "evaluationInterval": 1,
                                       "delayEvaluation": 2}
    none = rest(build_sweep(sweep_plan_from_spec(spec(tmp_path, early_termination="none", max_concurrent_trials=9))))
    assert none.get("earlyTermination") is None
    assert none["limits"]["maxConcurrentTrials"] == 5  # never more than there are trials
    # no budget: the sweep's timeout is --max-hours (24 h by default) and no trial has its own
    unbounded = rest(build_sweep(sweep_plan_from_spec(spec(tmp_path, train_args=["--weights", "none"]))))
    assert unbounded["limits"]["timeout"] == "P1D" and unbounded["limits"].get("trialTimeout") is None
    # --max-hours caps a budget's timeouts
    capped = rest(build_sweep(sweep_plan_from_spec(spec(tmp_path, max_hours=0.5,
                                                        train_args=["--time-budget", "7200"]))))
    assert (capped["limits"]["timeout"], capped["limits"]["trialTimeout"]) == ("PT30M", "PT30M")
    small = sweep_plan_from_spec(spec(tmp_path, trials=TRIALS[:2]))
    assert small.max_concurrent == 2 and rest(build_sweep(small))["searchSpace"] == {"trial": ["choice", [[1, 2]]]}


@pytest.mark.parametrize("options,match", [
    ({"nodes": 2}, "each trial on one node"),
    ({"max_concurrent_trials": 0}, "at least 1"),
    ({"max_concurrent_trials": "many"}, "whole number"),
    ({"early_termination": "truncation"}, "median, bandit, none"),
])
def test_bad_search_options_are_user_errors(tmp_path, options, match):
    with pytest.raises(UsageError, match=match):
        sweep_plan_from_spec(spec(tmp_path, **options))


def test_trial_options_may_not_smuggle_in_bindings(tmp_path):
    bad = spec(tmp_path, train_args=["--labels", "${{inputs.secret}}"])
    with pytest.raises(UsageError, match="must not contain"):
        build_sweep(sweep_plan_from_spec(bad))


# --- dry run: the plan and the exported YAML --------------------------------------------------
def test_exported_yaml_loads_back_as_the_same_sweep_job(tmp_path):
    from azure.ai.ml import load_job
    from azure.ai.ml.sweep import SweepJob

    s = spec(tmp_path, max_concurrent_trials=3)
    path = tmp_path / "job.yml"
    export_job_yaml(s, path)
    loaded = load_job(str(path))
    assert isinstance(loaded, SweepJob)  # load_job ran the sweep YAML schema's validation
    built = build_sweep(sweep_plan_from_spec(s))._to_job()
    assert loaded.name == RUN and loaded.compute == "gpu-t4" and loaded.sampling_algorithm == "grid"
    assert loaded.search_space["trial"].values == [1, 2, 3, 4, 5]
    assert (loaded.objective.primary_metric, loaded.objective.goal) == ("val_accuracy", "maximize")
    assert (loaded.limits.max_total_trials, loaded.limits.max_concurrent_trials, loaded.limits.timeout,
            loaded.limits.trial_timeout) == (5, 3, 2400, 1200)
    assert loaded.early_termination.type == "median_stopping"
    assert (loaded.early_termination.evaluation_interval, loaded.early_termination.delay_evaluation) == (1, 2)
    assert loaded.trial.command == built.trial.command and "--trial ${{search_space.trial}}" in loaded.trial.command
    assert loaded.inputs["data"].path == built.inputs["data"].path
    assert {k: v.path for k, v in loaded.outputs.items()} == {k: v.path for k, v in built.outputs.items()}
    # what the service would get from the file equals what a submit sends, field by field
    sent, again = rest(build_sweep(sweep_plan_from_spec(s))), loaded._to_rest_object().as_dict()["properties"]
    for key in ("searchSpace", "samplingAlgorithm", "objective", "limits", "earlyTermination"):
        assert again[key] == sent[key], key
    assert again["trial"]["command"] == sent["trial"]["command"]


def test_dry_run_plan_names_trials_concurrency_timeout_and_policy(tmp_path):
    text = describe_plan(spec(tmp_path, compute="gpu-t4x4"))
    for expected in ("sweep job, 5 trial(s) (grid over trial = 1..5, each once), up to 4 at once",
                     "maximize val_accuracy", "median stopping from the 2nd epoch",
                     "timeout:     sweep 40 min (--time-budget 600 s for the whole search + 30 min",
                     "each trial at most 20 min",
                     "  t01  linear resnet50 lr 0.001 weight-decay 0.0001", "  t05  full resnet18 lr 0.001",
                     "nodes:       1 per trial, 1 process (a trial uses 1 of the node's 4 GPUs)",
                     f"orchestrate/runs/{RUN}/trials/${{{{name}}}}/model/ (per trial)",
                     "--trial ${{search_space.trial}}", "python search.py", "workspace:   ws (resource group rg)"):
        assert expected in text, expected
    assert "${{inputs.trial}}" not in text and "PyTorch distribution" not in text
    one_run = describe_plan(spec(tmp_path, trials=None))  # no trials: the command job as before
    assert "python train.py" in one_run and "sweep" not in one_run


# --- following the trials and downloading the best -------------------------------------------
def epoch(n, val_accuracy, val_loss, best):
    return {"epoch": n, "epochs": 3, "train_loss": 0.5, "train_accuracy": 0.8, "val_loss": val_loss,
            "val_accuracy": val_accuracy, "lr": 0.001, "best": best, "seconds": 10.0}


def history(*rows):
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def event(kind, **fields):
    return "@@orchestrate " + json.dumps({"v": 1, "type": kind, **fields})


def put_trial(plane, azurite, child, files, log_lines=(), partial=""):
    """A trial job's model output files and its std_log (with a SAS URL, as run history gives):
    `log_lines`, then `partial`, a last line without its newline yet."""
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    for name, body in files.items():
        plane.admin.upload_blob(f"{trial_prefix(RUN, child, 'model')}/{name}", body, overwrite=True)
    if log_lines:
        blob = f"ExperimentRun/dcid.{child}/user_logs/std_log.txt"
        plane.admin.upload_blob(blob, ("".join(line + "\n" for line in log_lines) + partial).encode(),
                                overwrite=True)
        sas = generate_blob_sas(ACCOUNT, CONTAINER, blob, account_key=ACCOUNT_KEY,
                                permission=BlobSasPermissions(read=True),
                                expiry=datetime.now(timezone.utc) + timedelta(hours=1))
        plane.log_files[child] = {"user_logs/std_log.txt": f"{azurite.endpoint}/{CONTAINER}/{blob}?{sas}"}


T0 = 1796292000  # 2026-12-03T10:40:00Z


def ended_sweep(plane, azurite):
    """Five trials: three ran to their end, one was stopped by the policy, one failed, one never started.

    The service's best (best_child_run_id, by the best val_accuracy any epoch logged) is _0, trial 3,
    whose last epoch logged 0.95; by the kept epoch (lowest val_loss, search.py's rule) trial 1 leads."""
    p = RUN
    children = {
        f"{p}_0": (3, "Completed", T0 + 60, T0 + 360, None),
        f"{p}_1": (1, "Completed", T0 + 60, T0 + 300, None),
        f"{p}_2": (2, "Canceled", T0 + 60, T0 + 140, None),  # in a sweep that went on to complete: the policy
        f"{p}_3": (4, "Failed", T0 + 300, T0 + 320, run_error("UserError", "CUDA out of memory")),
    }
    tags = {"_aml_system_max_concurrent_jobs": "4", "_aml_system_max_total_jobs": "5",
            **{name: json.dumps({"trial": number}) for name, (number, *_rest) in children.items()}}
    plane.runs[p] = run_body(p, "Completed", start=T0, end=T0 + 400, tags=tags,
                             properties={"best_child_run_id": f"{p}_0", "score": "0.95"})
    plane.children[p] = list(children)
    for name, (number, status, start, end, error) in children.items():
        plane.runs[name] = run_body(name, status, parent=p, start=start, end=end, error=error)
    put_trial(plane, azurite, f"{p}_0", {
        "history.jsonl": history(epoch(1, 0.85, 0.40, True), epoch(2, 0.91, 0.30, True), epoch(3, 0.95, 0.33, False)),
        "metrics.json": json.dumps({"accuracy": 0.90, "macro_accuracy": 0.89, "macro_f1": 0.88, "log_loss": 0.31,
                                    "stopped": "completed", "best_epoch": 2, "epochs_completed": 3}).encode(),
        "model.onnx": b"onnx-of-trial-3", "labels.json": b'["a", "b"]', "predictions.csv": b"path,label\n"})
    put_trial(plane, azurite, f"{p}_1", {
        "history.jsonl": history(epoch(1, 0.88, 0.30, True), epoch(2, 0.93, 0.22, True), epoch(3, 0.92, 0.25, False)),
        "metrics.json": json.dumps({"accuracy": 0.92, "macro_accuracy": 0.91, "macro_f1": 0.90, "log_loss": 0.24,
                                    "stopped": "time_budget", "best_epoch": 2, "epochs_completed": 3}).encode(),
        "model.onnx": b"onnx-of-trial-1", "labels.json": b'["a", "b"]', "predictions.csv": b"path,label\n"},
        log_lines=[
        "starting trial",
        event("run_start", classes=["a", "b"], split={"train": 8, "val": 2, "test": 2}, device="cuda",
              config={"lr": 0.001, "mode": "linear"}),
        event("epoch_end", epoch=1, epochs=3, val_accuracy=0.88, val_loss=0.3),
        event("run_end", status="completed", seconds=240, exit_code=0)])
    put_trial(plane, azurite, f"{p}_2", {
        "history.jsonl": history(epoch(1, 0.60, 0.90, True), epoch(2, 0.61, 0.89, True))})
    set_job_status(plane, p, "Completed")


def test_following_a_sweep_streams_its_trials_and_the_download_is_the_best_trials_model(tmp_path, plane, azurite,
                                                                                         monkeypatch):
    backend, run, said = submitted(tmp_path, plane, azurite, monkeypatch)
    ended_sweep(plane, azurite)
    lines = list(backend.log_lines(run))
    texts = [line.text for line in lines]
    assert [line.cursor for line in lines] == list(range(1, len(lines) + 1))
    events = [parse_line(text) for text in texts]
    first = events[0]
    assert first["type"] == "run_start" and first["search"] == {"trials": TRIALS, "budget_seconds": 600.0}
    assert "[t01] starting trial" in texts
    start = next(e for e in events if e and e["type"] == "trial_start")
    assert (start["trial"], start["config"], start["settings"]) == ("t01", TRIALS[0], {"lr": 0.001, "mode": "linear"})
    assert start["classes"] == ["a", "b"]
    epoch_end = next(e for e in events if e and e["type"] == "epoch_end")
    assert (epoch_end["trial"], epoch_end["epoch"], epoch_end["val_accuracy"]) == ("t01", 1, 0.88)
    assert not [e for e in events[1:-1] if e and e["type"] == "run_end"]  # a trial's run_end is its trial_end
    ends = {e["trial"]: e for e in events if e and e["type"] == "trial_end"}
    assert sorted(ends) == ["t01", "t02", "t03", "t04"]  # t05 never started: no event
    assert (ends["t02"]["status"], ends["t02"]["stopped"]) == ("canceled", "early_termination")
    assert (ends["t04"]["status"], ends["t04"]["error"]) == ("failed", "CUDA out of memory")
    assert events[-1] == {"v": 1, "type": "run_end", "status": "completed", "seconds": 400.0}
    assert said[1:] == ["Azure ML job: Completed"]  # after the submit's line
    assert backend.status(run) == COMPLETED
    # a re-attach from a cursor shows nothing twice
    assert [l.text for l in backend.log_lines(run, cursor=3)] == texts[3:]

    out = run.run_dir / "outputs"
    backend.download(run, out)
    assert (out / "model.onnx").read_bytes() == b"onnx-of-trial-1"  # the kept epoch's rank, as search.py
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == 0.92
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "history.jsonl", "labels.json", "metrics.json", "model.onnx", "predictions.csv",
        "search.json"]
    doc = json.loads((out / "search.json").read_text())
    assert (doc["search_id"], doc["primary_metric"], doc["budget_seconds"], doc["best"], doc["service_best"]) == \
        (RUN, "val_accuracy", 600.0, "t01", "t03")
    rows = {row["trial"]: row for row in doc["trials"]}
    assert [row["trial"] for row in doc["trials"]] == ["t01", "t02", "t03", "t04", "t05"]
    assert rows["t01"] == {
        "trial": "t01", "config": TRIALS[0], "status": "completed", "stopped": "time_budget",
        "val_accuracy": 0.93, "val_loss": 0.22, "best_epoch": 2, "epochs": 3, "accuracy": 0.92,
        "macro_accuracy": 0.91, "macro_f1": 0.90, "log_loss": 0.24, "seconds": 240.0, "error": None,
        "remote_id": f"{RUN}_1"}
    assert (rows["t03"]["val_accuracy"], rows["t03"]["remote_id"]) == (0.91, f"{RUN}_0")
    assert (rows["t02"]["status"], rows["t02"]["stopped"], rows["t02"]["val_accuracy"], rows["t02"]["accuracy"]) == \
        ("canceled", "early_termination", 0.61, None)
    assert (rows["t04"]["status"], rows["t04"]["error"], rows["t04"]["seconds"]) == \
        ("failed", "CUDA out of memory", 20.0)
    assert rows["t05"]["status"] == "not_started" and rows["t05"]["remote_id"] is None
    # the small files of every trial that wrote some, in the local search's layout
    assert (out / "trials" / "t03" / "outputs" / "metrics.json").is_file()
    assert (out / "trials" / "t02" / "outputs" / "history.jsonl").is_file()
    assert not (out / "trials" / "t02" / "outputs" / "metrics.json").exists()
    assert any("best trial t01" in line for line in said)


def test_the_trials_become_ledger_runs_when_the_outputs_come_later(tmp_path, plane, azurite, monkeypatch):
    """`status` records the ended sweep without its outputs; the first command that fetches them
    (download, predict, register) records the trials from the search.json that comes with them."""
    from orchestrator import runner
    from orchestrator.backends.base import QUEUED
    from orchestrator.ledger import Ledger, RunRecord

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    backend, run, _ = submitted(tmp_path, plane, azurite, monkeypatch)
    ledger = Ledger()
    ledger.add(RunRecord(run_id=RUN, name="search", backend="azure", status=QUEUED, dataset="d",
                         run_dir=str(run.run_dir), remote_id=RUN,
                         params={"train_args": SHARED, "backend_options": {}, "trials": TRIALS}))
    ended_sweep(plane, azurite)
    assert runner.finish(backend, run, ledger, download=False).status == COMPLETED
    assert ledger.children(RUN) == []
    runner.fetch_outputs(backend, ledger, ledger.get(RUN))
    children = {child.run_id: child for child in ledger.children(RUN)}
    assert sorted(children) == [f"{RUN}-t0{n}" for n in range(1, 5)]  # t05 never started: no run
    assert (children[f"{RUN}-t01"].status, children[f"{RUN}-t01"].remote_id) == (COMPLETED, f"{RUN}_1")
    assert children[f"{RUN}-t01"].metrics["accuracy"] == 0.92
    runner.fetch_outputs(backend, ledger, ledger.get(RUN))  # again: nothing twice
    assert len(ledger.children(RUN)) == 4


def test_a_sweep_without_a_completed_trial_writes_search_json_and_refuses_the_model(tmp_path, plane, azurite,
                                                                                    monkeypatch):
    backend, run, said = submitted(tmp_path, plane, azurite, monkeypatch)
    p = RUN
    plane.runs[p] = run_body(p, "Failed", start=T0, end=T0 + 100, tags={f"{p}_0": json.dumps({"trial": 2})})
    plane.children[p] = [f"{p}_0"]
    plane.runs[f"{p}_0"] = run_body(f"{p}_0", "Failed", parent=p, start=T0, end=T0 + 50,
                                    error=run_error("UserError", "bad data"))
    set_job_status(plane, p, "Failed", error=run_error("UserError", "every trial failed"))
    events = [parse_line(line.text) for line in backend.log_lines(run)]
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "failed"
    assert events[-1]["error"] == "UserError: every trial failed"
    out = run.run_dir / "outputs"
    with pytest.raises(UsageError, match="no trial of search .* completed"):
        backend.download(run, out)
    doc = json.loads((out / "search.json").read_text())
    assert doc["best"] is None and [r["status"] for r in doc["trials"]] == [
        "not_started", "failed", "not_started", "not_started", "not_started"]


def test_following_a_running_sweep_shows_each_trial_as_it_goes(tmp_path, plane, azurite, monkeypatch):
    """Round 1: trial 1 running (its log so far); round 2: it has completed and the sweep too."""
    backend, run, said = submitted(tmp_path, plane, azurite, monkeypatch)
    p = RUN
    plane.runs[p] = run_body(p, "Running", start=T0, tags={f"{p}_0": json.dumps({"trial": 1})})
    plane.children[p] = [f"{p}_0"]
    plane.runs[f"{p}_0"] = run_body(f"{p}_0", "Running", parent=p, start=T0 + 10)
    put_trial(plane, azurite, f"{p}_0", {}, log_lines=["line one"], partial="half a li")
    set_job_status(plane, p, "Running")
    texts = []
    for line in backend.log_lines(run):
        texts.append(line.text)
        if line.text == "[t01] line one":  # what the first round had: the unfinished line waits
            put_trial(plane, azurite, f"{p}_0", {
                "history.jsonl": history(epoch(1, 0.7, 0.5, True)),
                "metrics.json": json.dumps({"accuracy": 0.7, "stopped": "completed"}).encode()},
                log_lines=["line one", "half a line", "done"])
            plane.runs[f"{p}_0"].update(status="Completed", endTimeUtc=_iso(T0 + 70))
            plane.runs[p].update(endTimeUtc=_iso(T0 + 80))
            set_job_status(plane, p, "Completed")
    assert texts[1:4] == ["[t01] line one", "[t01] half a line", "[t01] done"]
    end = parse_line(texts[4])
    assert (end["type"], end["trial"], end["status"], end["val_accuracy"], end["seconds"]) == \
        ("trial_end", "t01", "completed", 0.7, 60.0)
    assert parse_line(texts[-1])["type"] == "run_end" and len(texts) == 6


def test_an_existing_smaller_cluster_runs_fewer_trials_at_once(tmp_path, plane, azurite):
    from orchestrator.backends.azure.job import plan_from_spec

    said = []
    backend = AzureBackend(seam_factory=real_seam(plane, azurite), on_event=notices(said))
    s = spec(tmp_path)
    seam = backend._spec_seam(s)
    assert backend._nodes_needed(seam, s, plan_from_spec(s)) == 2  # the cluster scales to 2, 4 wanted
    assert said == ["compute gpu-t4 scales to 2 node(s): 2 of the 4 concurrent trials run at once, the others queue"]
    del plane.computes["gpu-t4"]
    assert backend._nodes_needed(seam, s, plan_from_spec(s)) == 4  # a new cluster is made for 4
    assert backend._nodes_needed(seam, spec(tmp_path, trials=None), plan_from_spec(s)) == 1


# --- the pieces ------------------------------------------------------------------------------
def test_each_child_is_matched_to_its_trial_by_the_parents_tags_else_by_its_index():
    children = [{"name": "s_0"}, {"name": "s_1"}, {"name": "s_2"}, {"name": "other"}]
    tags = {"s_0": '{"trial": 3}', "s_1": '{"search_space.trial": 1}', "s_9": "not json", "_aml_system_x": "1"}
    numbers = trial_numbers("s", tags, children, 3)
    assert numbers["s_0"] == 3 and numbers["s_1"] == 1
    assert "s_2" not in numbers  # index 2 -> trial 3, which s_0 ran: not guessed twice
    assert trial_numbers("s", {}, children, 3) == {"s_0": 1, "s_1": 2, "s_2": 3}
    assert trial_numbers("s", {"s_0": '{"trial": 7}'}, children[:1], 3) == {"s_0": 1}  # out of range: by index


def test_trial_lines_are_retagged_as_the_local_search_tags_them():
    assert retag("plain", "t02", {}) == "[t02] plain"
    assert retag(event("run_end", status="completed"), "t02", {}) is None
    start = parse_line(retag(event("run_start", config={"lr": 1}, device="cpu"), "t02", {"lr": 0.1}))
    assert start == {"v": 1, "type": "trial_start", "trial": "t02", "device": "cpu", "settings": {"lr": 1},
                     "config": {"lr": 0.1}}
    assert parse_line(retag(event("epoch_end", epoch=1), "t02", {}))["trial"] == "t02"


LIMITS = {"timeout_seconds": 2400, "trial_timeout_seconds": 1200}  # what a 600 s budget is sent with


@pytest.mark.parametrize("trial_seconds,sweep,sweep_seconds,limits,stopped", [
    (80, "Running", None, LIMITS, "early_termination"),     # the policy, while the sweep goes on
    (80, "Completed", 1500, LIMITS, "early_termination"),   # ... or before it completed
    (1200, "Running", None, LIMITS, "time_budget"),         # it ran its trialTimeout
    (1201, "Completed", 2000, LIMITS, "time_budget"),
    (500, "Canceled", 2400, LIMITS, "time_budget"),         # the sweep ran its timeout: it and its trials
    (200, "Canceled", 300, LIMITS, None),                   # a sweep canceled sooner: a user's cancel
    (200, "CancelRequested", None, LIMITS, None),
    (5000, "Running", None, {}, "early_termination"),       # an azure.json from before the limits were kept
    (5000, "Canceled", 9000, {}, None),
])
def test_why_a_trial_was_canceled_follows_from_statuses_and_times(trial_seconds, sweep, sweep_seconds, limits,
                                                                   stopped):
    from orchestrator.backends.azure.sweep_results import sweep_facts

    child = {"name": "s_0", "status": "Canceled", "start": T0 + 100, "end": T0 + 100 + trial_seconds, "error": None}
    record = {"start": T0, "end": T0 + sweep_seconds if sweep_seconds is not None else None}
    facts = sweep_facts(sweep, record, {"trials": TRIALS, "budget_seconds": 600.0, **limits})
    assert trial_summary(1, {"lr": 0.1}, child, {}, [], facts)["stopped"] == stopped


def test_a_sweep_that_ran_out_its_timeout_reports_its_trials_stopped_by_the_budget(tmp_path, plane, azurite,
                                                                                    monkeypatch):
    """The service cancels a sweep at its timeout (budget 600 s + 30 min) with the trials still
    running: those are the budget's, in the trial_end events and in search.json."""
    backend, run, said = submitted(tmp_path, plane, azurite, monkeypatch)
    p = RUN
    plane.runs[p] = run_body(p, "Canceled", start=T0, end=T0 + 2400, tags={f"{p}_0": json.dumps({"trial": 1}),
                                                                         f"{p}_1": json.dumps({"trial": 2})})
    plane.children[p] = [f"{p}_0", f"{p}_1"]
    plane.runs[f"{p}_0"] = run_body(f"{p}_0", "Completed", parent=p, start=T0 + 60, end=T0 + 900)
    plane.runs[f"{p}_1"] = run_body(f"{p}_1", "Canceled", parent=p, start=T0 + 900, end=T0 + 2400)
    put_trial(plane, azurite, f"{p}_0", {
        "history.jsonl": history(epoch(1, 0.8, 0.4, True)),
        "metrics.json": json.dumps({"accuracy": 0.8, "stopped": "completed"}).encode(),
        "model.onnx": b"onnx-of-trial-1"})
    put_trial(plane, azurite, f"{p}_1", {"history.jsonl": history(epoch(1, 0.7, 0.5, True))})
    set_job_status(plane, p, "Canceled")
    ends = {e["trial"]: e for e in (parse_line(line.text) for line in backend.log_lines(run))
            if e and e["type"] == "trial_end"}
    assert (ends["t02"]["status"], ends["t02"]["stopped"]) == ("canceled", "time_budget")
    backend.download(run, run.run_dir / "outputs")
    rows = {row["trial"]: row for row in json.loads((run.run_dir / "outputs" / "search.json").read_text())["trials"]}
    assert (rows["t01"]["stopped"], rows["t02"]["stopped"], rows["t03"]["status"]) == \
        ("completed", "time_budget", "not_started")


def test_a_run_record_without_a_search_is_still_a_command_job(tmp_path, plane, azurite, monkeypatch):
    """No trials: the backend submits the command job exactly as before."""
    code_and_environment_as_arm_ids(monkeypatch)
    backend = AzureBackend(seam_factory=real_seam(plane, azurite))
    run = backend.submit(spec(tmp_path, trials=None))
    (_, body), = plane.job_puts
    assert body["properties"]["jobType"] == "Command" and "python train.py" in body["properties"]["command"]
    assert "search" not in json.loads((run.run_dir / "azure.json").read_text())
    assert isinstance(run, RunRef)
