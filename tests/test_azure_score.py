"""`orchestrate score MODEL az://...` on Azure ML: the parallel job, offline and through the REAL SDK.

The entry script runs for real on a model trained here (remote_scripts/train.py, tiny) and must
give OnnxClassifier's predictions; the job is built from real azure-ai-ml entities, exported and
loaded back with load_job; the submission goes through the real MLClient to
tests/azure_transport.ManagementPlane, which answers in the service's documented shapes, and the
predictions come back from Azurite through the datastore's own credential.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from azure_transport import SUB, ManagementPlane, StaticToken, add_datastore, aml_compute, datastore_body, set_job_status
from imagegen import make_dataset
from services.azurite import ACCOUNT, ACCOUNT_KEY

from orchestrator.backends.azure import score_job
from orchestrator.backends.azure.score_job import (APPEND_ROW_FILE, ScoreRun, build_score_job, describe_score,
                                                   export_score_yaml, parse_data_uri, plan_score, score_prefix)
from orchestrator.backends.azure.seam import AzureSeam
from orchestrator.backends.azure.settings import Settings
from orchestrator.errors import JobFailed, UserError
from orchestrator.paths import remote_scripts_dir

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow

REPO = Path(__file__).resolve().parents[1]
RUN = "score-eurosat-20261202-061500-ab12"
DATA = "az://workspaceblobstore/orchestrate/datasets/eurosat-1a2b3c4d"
MODEL_URI = "azureml://datastores/workspaceblobstore/paths/orchestrate/runs/eurosat-1/model/model.onnx"
WS = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"


def plan(**values):
    return plan_score(values.pop("model", MODEL_URI), values.pop("data", DATA), run_id=RUN, **values)


# the entry script: init()/run() on a real model ----------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model from the real training script, and images to score (one corrupt, one not an image)."""
    root = tmp_path_factory.mktemp("score")
    data = make_dataset(root / "data", per_class=8)
    out = root / "out"
    done = subprocess.run([sys.executable, str(REPO / "remote_scripts" / "train.py"), "--data", str(data),
                           "--output", str(out), "--arch", "resnet18", "--weights", "none", "--image-size", "32",
                           "--mode", "linear", "--epochs", "1", "--val-fraction", "0.2", "--test-fraction", "0.2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    images = sorted(str(p) for p in data.rglob("*") if p.is_file())
    (data / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (data / "red" / "notes.txt").write_text("not an image")
    return {"model": out / "model.onnx", "data": data,
            "paths": images[:5] + [str(data / "red" / "broken.png"), str(data / "red" / "notes.txt")] + images[5:]}


def test_entry_script_rows_equal_the_classifiers_predictions(trained):
    from orchestrator.inference.classifier import OnnxClassifier
    from remote_scripts import score_entry

    # the parallel runtime passes its own arguments too
    score_entry.init(["--mini_batch_size", "64", "--model", str(trained["model"]), "--data", str(trained["data"]),
                      "--top-k", "2", "--threads", "1", "--logging_level", "INFO"])
    paths = trained["paths"]
    rows = [json.loads(line) for line in score_entry.run(paths)]
    assert len(rows) == len(paths)  # one row per file: the runtime counts a missing one as a failure
    classifier = OnnxClassifier(trained["model"])
    for path, row, (probs, error) in zip(paths, rows, classifier.classify(paths)):
        assert set(row) == {"path", "label", "score", "top_k", "error"}
        assert row["path"] == str(Path(path).relative_to(trained["data"]))
        if path.endswith("notes.txt"):
            assert row["error"] == "not an image file" and row["label"] is None
        elif error:
            assert path.endswith("broken.png")
            assert row["error"] == error and row["error"].startswith("cannot read image: ")
            assert (row["label"], row["score"], row["top_k"]) == (None, None, None)
        else:
            expected = classifier.top_k(probs, 2)
            assert row["error"] is None and row["label"] == expected[0]["label"]
            assert [t["label"] for t in row["top_k"]] == [t["label"] for t in expected]
            for got, want in zip(row["top_k"], expected):
                assert abs(got["score"] - want["score"]) <= 1e-6
            assert abs(row["score"] - float(probs.max())) <= 1e-6


def test_entry_script_runs_from_the_code_folder_without_orchestrator(trained):
    """As the parallel runtime loads it: a top-level module of the code snapshot (remote_scripts/)."""
    probe = ("import json, sys, score_entry\n"
             f"score_entry.init(['--model', {str(trained['model'])!r}])\n"
             f"rows = [json.loads(r) for r in score_entry.run({trained['paths'][:3]!r})]\n"
             "assert all(r['label'] for r in rows), rows\n"
             "assert not [m for m in sys.modules if m.split('.')[0] in ('orchestrator', 'torch')]\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=remote_scripts_dir(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


# the job: a pipeline whose one step is a parallel job -------------------------------------------
def test_the_job_is_a_parallel_step_with_the_batching_settings():
    job = build_score_job(plan(compute="cpu", instances=3, processes=2, mini_batch_size=50, top_k=3))
    assert job.type == "pipeline" and list(job.jobs) == ["score"]
    assert (job.name, job.display_name, job.compute) == (RUN, RUN, "cpu")
    step = job.jobs["score"]
    assert step.type == "parallel"
    assert (step.resources.instance_count, step.max_concurrency_per_instance, step.mini_batch_size) == (3, 2, 50)
    assert (step.retry_settings.max_retries, step.retry_settings.timeout) == (3, 300)
    assert step.error_threshold == 0 and step.input_data == "${{inputs.data}}"
    task = step.task
    assert task.entry_script == "score_entry.py" and (Path(task.code) / task.entry_script).is_file()
    assert Path(task.code) == remote_scripts_dir()
    assert task.append_row_to == "${{outputs.predictions}}"
    assert task.program_arguments == ("--model ${{inputs.model}} --data ${{inputs.data}} --top-k 3 --threads 2 "
                                      f"--append_row_file_name {APPEND_ROW_FILE}")
    assert task.environment.build.dockerfile_path == "azureml.Dockerfile"
    data, model = step.inputs["data"]._data, step.inputs["model"]._data
    assert (data.type, data.mode, data.path) == (
        "uri_folder", "ro_mount", "azureml://datastores/workspaceblobstore/paths/orchestrate/datasets/eurosat-1a2b3c4d/")
    assert (model.type, model.mode, model.path) == ("uri_file", "download", MODEL_URI)
    predictions = step.outputs["predictions"]._data
    assert (predictions.type, predictions.mode) == ("uri_folder", "rw_mount")
    assert predictions.path == f"azureml://datastores/workspaceblobstore/paths/{score_prefix(RUN)}/"


def test_default_compute_is_a_cpu_cluster_with_a_process_per_two_vcpus():
    p = plan()
    assert (p.compute.cluster, p.compute.size.vcpus, p.instances, p.processes, p.threads) == ("cpu", 4, 1, 2, 2)
    assert p.mini_batch_size == 64


def test_exported_yaml_is_loaded_back_by_load_job(tmp_path):
    from azure.ai.ml import load_job

    path = tmp_path / "score.yml"
    export_score_yaml(build_score_job(plan(instances=2, mini_batch_size=10)), path)
    job = load_job(str(path))
    assert job.type == "pipeline" and job.compute == "cpu"
    step = job.jobs["score"]
    assert step.type == "parallel" and step.resources.instance_count == 2 and step.mini_batch_size == 10
    task = step.component.task  # the node's own `task` reads back as a plain mapping
    assert task.entry_script == "score_entry.py" and "--top-k 1" in task.program_arguments
    assert task.append_row_to == "${{outputs.predictions}}"
    assert step.inputs["model"].path == MODEL_URI
    assert step.inputs["data"].path.endswith("/paths/orchestrate/datasets/eurosat-1a2b3c4d/")
    assert job._validate().passed


def test_a_local_model_file_is_exported_as_its_path_for_az_ml_to_upload(tmp_path):
    from azure.ai.ml import load_job

    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    path = tmp_path / "score.yml"
    export_score_yaml(build_score_job(plan(model=model)), path)
    assert yaml.safe_load(path.read_text())["jobs"]["score"]["inputs"]["model"]["path"] == str(model)
    assert load_job(str(path)).jobs["score"].inputs["model"].path == str(model)


def test_describe_names_what_would_run():
    text = describe_score(plan(compute="gpu-nc12", instances=2))
    first, *rest = text.splitlines()
    assert first.startswith("notice: Standard_NC12")
    body = "\n".join(rest)
    for expected in ("2 node(s) x 8 process(es), 64 files per mini-batch",
                     "data:        azureml://datastores/workspaceblobstore/paths/orchestrate/datasets/eurosat-1a2b3c4d/",
                     "looked up at submit", f"model:       {MODEL_URI}", "score_entry.py", "pipeline job " + RUN):
        assert expected in body


@pytest.mark.parametrize("values,match", [
    ({"data": "az://workspaceblobstore"}, "expected az://DATASTORE/PREFIX"),
    ({"data": "az://workspaceblobstore/a/../b"}, "expected az://DATASTORE/PREFIX"),
    ({"data": "https://x/y"}, "bad data URI"),
    ({"instances": 0}, "--instances must be at least 1"),
    ({"mini_batch_size": 0}, "--mini-batch-size must be at least 1"),
    ({"compute": "nc12"}, "unknown compute"),
    ({"model": "/nonexistent/model.onnx"}, "no such file"),
])
def test_bad_values_are_user_errors(values, match):
    with pytest.raises(UserError, match=match):
        plan(**values)


def test_an_azure_runs_model_is_read_where_the_run_wrote_it(tmp_path):
    from orchestrator.backends.azure.score_job import azure_run_model_uri

    store = {"name": "workspaceblobstore", "account": "a", "container": "c", "endpoint": "core.windows.net"}
    (tmp_path / "azure.json").write_text(json.dumps({"job": "r-1", "datastore": store}))
    assert azure_run_model_uri(tmp_path, "r-1") == \
        "azureml://datastores/workspaceblobstore/paths/orchestrate/runs/r-1/model/model.onnx"
    (tmp_path / "azure.json").write_text(json.dumps({"job": "j", "datastore": store, "outputs": {"model": "x/y/"}}))
    assert azure_run_model_uri(tmp_path, "j") == "azureml://datastores/workspaceblobstore/paths/x/y/model.onnx"
    (tmp_path / "azure.json").write_text(json.dumps({"job": "s", "datastore": store, "kind": "score"}))
    assert azure_run_model_uri(tmp_path, "s") is None
    assert azure_run_model_uri(tmp_path / "nowhere", "r-1") is None


def test_data_uri_names_a_datastore_and_a_prefix():
    assert parse_data_uri("az://workspaceblobstore/a/b/") == ("workspaceblobstore", "a/b")
    assert parse_data_uri("az://azureml-blobstore-0a1b/images") == ("azureml-blobstore-0a1b", "images")


# the submission through the real SDK, the predictions from Azurite -------------------------------
class PipelineCredential(StaticToken):
    """StaticToken, plus what a pipeline submit also asks for: a token of the Azure ML audience,
    which azure-ai-ml decodes (unverified) to check its `aud` and sends as x-azureml-token."""

    def get_token(self, *scopes, **kwargs):
        import jwt
        from azure.core.credentials import AccessToken

        audience = scopes[0].removesuffix("/.default") if scopes else ""
        if "management" in audience:
            return super().get_token(*scopes, **kwargs)
        return AccessToken(jwt.encode({"aud": audience}, "signing-key-of-the-test-transport-only", algorithm="HS256"), 2**31)


def real_seam(plane, endpoint=None):
    return lambda settings: AzureSeam(settings, credential=PipelineCredential(), transport=plane,
                                      blob_endpoint=endpoint)


class Plane(ManagementPlane):
    """The management plane plus the anonymous component a pipeline step is registered as
    (ComponentVersion/createOrUpdate.json: the body as sent, with an id and systemData)."""

    def __init__(self):
        super().__init__()
        self.component_puts = []

    def send(self, request, **kwargs):
        import re

        from azure_transport import Response

        path = request.url.split("?")[0].split("management.azure.com")[-1]
        version = re.fullmatch(re.escape(WS) + r"/components/([^/]+)/versions/([^/]+)", path)
        if version and request.method == "PUT":
            self.requests.append((request.method, path))
            sent = json.loads(request.content)
            self.component_puts.append(sent)
            name, number = version.groups()
            return Response(request, 201, {"id": path, "name": number, "type": "Microsoft.MachineLearningServices/"
                                           "workspaces/components/versions", "properties": sent["properties"],
                                           "systemData": {"createdAt": "2026-12-02T06:00:00Z", "createdBy": "user",
                                                          "createdByType": "User"}})
        return super().send(request, **kwargs)


@pytest.fixture
def plane(azurite):
    from azure.storage.blob import ContainerClient

    plane = Plane()
    container = "azureml-blobstore-score"
    admin = ContainerClient.from_connection_string(azurite.connection_string, container)
    if not admin.exists():
        admin.create_container()
    add_datastore(plane, datastore_body("workspaceblobstore", ACCOUNT, container), key=ACCOUNT_KEY)
    plane.computes["cpu"] = aml_compute("cpu", size="STANDARD_DS3_V2", max_nodes=4)
    plane.admin = admin
    return plane


def nothing_to_upload(monkeypatch):
    """Code and environment as ARM ids (as a workspace that has them): the SDK uploads nothing, so
    every request it makes goes to the management plane."""
    built = score_job.build_score_job

    def build(p):
        job = built(p)
        job.jobs["score"].task.code = f"{WS}/codes/remote-scripts/versions/1"
        job.jobs["score"].task.environment = f"{WS}/environments/orchestrate/versions/1"
        return job
    monkeypatch.setattr(score_job, "build_score_job", build)


def test_submit_puts_a_pipeline_with_the_parallel_step_and_downloads_the_predictions(
        tmp_path, plane, azurite, monkeypatch):
    from orchestrator.ledger import Ledger

    nothing_to_upload(monkeypatch)
    said = []
    settings = Settings(subscription_id=SUB, resource_group="rg", workspace_name="ws")
    run = ScoreRun(settings, Ledger(), say=said.append, sleep=lambda s: None,
                   seam_factory=real_seam(plane, azurite.endpoint))
    run_dir = tmp_path / "runs" / RUN
    submitted = run.submit(plan(instances=2, mini_batch_size=16), run_dir)
    assert submitted.datastore == "workspaceblobstore"
    assert [m for m, p in plane.requests if p.endswith(f"/jobs/{RUN}")] == ["GET", "PUT"]  # get-then-create
    (name, body), = plane.job_puts
    props = body["properties"]
    assert name == RUN and props["jobType"] == "Pipeline" and props["experimentName"] == "orchestrate"
    step = props["jobs"]["score"]
    assert step["type"] == "parallel"
    assert (step["resources"]["instance_count"], step["max_concurrency_per_instance"], step["mini_batch_size"]) == \
        (2, 2, 16)
    assert step["retry_settings"] == {"max_retries": 3, "timeout": 300} and step["error_threshold"] == 0
    assert step["task"]["entry_script"] == "score_entry.py" and step["task"]["type"] == "run_function"
    assert step["task"]["append_row_to"] == "${{outputs.predictions}}"
    assert step["input_data"] == "${{inputs.data}}"
    assert step["inputs"]["data"] == {"job_input_type": "uri_folder", "mode": "ReadOnlyMount",
                                      "uri": "azureml://datastores/workspaceblobstore/paths/orchestrate/datasets/"
                                             "eurosat-1a2b3c4d/"}
    assert step["inputs"]["model"]["uri"] == MODEL_URI and step["inputs"]["model"]["mode"] == "Download"
    assert step["outputs"]["predictions"]["uri"].endswith(f"/paths/{score_prefix(RUN)}/")
    assert step["componentId"].startswith(f"{WS}/components/")
    component = plane.component_puts[0]["properties"]["componentSpec"]
    assert component["type"] == "parallel" and component["task"]["entry_script"] == "score_entry.py"
    state = json.loads((run_dir / "azure.json").read_text())
    assert state["job"] == RUN and "ml.azure.com/runs/" in state["studio_url"] and ACCOUNT_KEY not in json.dumps(state)

    # the job runs; its append-row file lands in the output folder
    lines = [{"path": "b/2.jpg", "label": "b", "score": 0.75, "top_k": [{"label": "b", "score": 0.75}], "error": None},
             {"path": "a/1.jpg", "label": "a", "score": 0.5, "top_k": [{"label": "a", "score": 0.5}], "error": None},
             {"path": "a/bad.png", "label": None, "score": None, "top_k": None, "error": "cannot read image: x"},
             {"path": "a/readme.txt", "label": None, "score": None, "top_k": None, "error": "not an image file"}]
    plane.admin.upload_blob(f"{score_prefix(RUN)}/{APPEND_ROW_FILE}",
                            "".join(json.dumps(line) + "\n" for line in lines), overwrite=True)
    set_job_status(plane, RUN, "Completed")
    out = tmp_path / "predictions.csv"
    state, _ = run.follow(submitted)
    assert state == "Completed"
    summary = run.download(submitted, run_dir, out)
    assert summary == {"rows": 3, "errors": 1, "skipped": 1}
    text = out.read_text().splitlines()
    assert text[0] == "path,label,score,top_k,error"
    prefix = "az://workspaceblobstore/orchestrate/datasets/eurosat-1a2b3c4d"
    assert [line.split(",")[0] for line in text[1:]] == [f"{prefix}/a/1.jpg", f"{prefix}/a/bad.png", f"{prefix}/b/2.jpg"]
    assert Ledger().get(RUN).status == "completed"
    # `orchestrate status/cancel RUN` find the job from runs/<id>/azure.json, as for a training run
    from orchestrator.backends.azure import AzureBackend
    from orchestrator.backends.base import COMPLETED, RunRef

    assert AzureBackend(seam_factory=real_seam(plane)).status(RunRef(RUN, "azure", run_dir, RUN)) == COMPLETED


def test_a_failed_job_is_exit_1_with_the_services_error(tmp_path, plane, azurite, monkeypatch):
    from azure_transport import run_error

    from orchestrator.ledger import Ledger

    nothing_to_upload(monkeypatch)
    settings = Settings(subscription_id=SUB, resource_group="rg", workspace_name="ws")
    run = ScoreRun(settings, Ledger(), say=lambda line: None, sleep=lambda s: None,
                   seam_factory=real_seam(plane, azurite.endpoint))
    original = run.seam.job_status

    def fails(name):  # the service reports the failure on the first poll after the submit
        set_job_status(plane, name, "Failed", run_error("UserError", "run() raised in 5 mini-batches"))
        return original(name)
    monkeypatch.setattr(run.seam, "job_status", fails)
    with pytest.raises(JobFailed, match="failed: UserError: run\\(\\) raised in 5 mini-batches"):
        run.run(plan(), tmp_path / "runs" / RUN, tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists() and Ledger().get(RUN).status == "failed"


def test_the_data_uri_names_a_datastore_or_its_container(plane):
    from orchestrator.backends.azure.score_job import resolve_datastore

    seam = AzureSeam(Settings(subscription_id=SUB, resource_group="rg", workspace_name="ws"),
                     credential=StaticToken(), transport=plane)
    assert resolve_datastore(seam, "workspaceblobstore")["container"] == "azureml-blobstore-score"
    assert resolve_datastore(seam, "azureml-blobstore-score")["name"] == "workspaceblobstore"
    with pytest.raises(UserError, match="az://elsewhere/...: no datastore of workspace 'ws' has that name or "
                                        "container \\(its blob datastores: workspaceblobstore \\(container "
                                        "azureml-blobstore-score\\)\\)"):
        resolve_datastore(seam, "elsewhere")


# the command: `orchestrate score MODEL az://...` --------------------------------------------------
def invoke(*args):
    """The real entry point (orchestrator.cli.main.main: errors -> one line + exit code):
    (exit code, stdout + stderr)."""
    from unittest import mock

    from click.testing import CliRunner

    from orchestrator.cli.main import main

    runner = CliRunner()
    with runner.isolation() as (out, err, _), \
            mock.patch.object(sys, "argv", ["orchestrate", "score", *map(str, args)]):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        return code, out.getvalue().decode() + err.getvalue().decode()


def test_dry_run_export_writes_the_parallel_job_without_a_cloud_call(tmp_path, monkeypatch, trained):
    from azure.ai.ml import load_job

    monkeypatch.setenv("AZUREML_WORKSPACE_NAME", "ws1")
    model = trained["model"]
    path = tmp_path / "score.yml"
    code, output = invoke(model, "az://workspaceblobstore/photos/2026", "--out", tmp_path / "p.csv",
                          "--instances", "3", "--mini-batch-size", "20", "--dry-run", "--export", path)
    assert code == 0, output
    assert "workspace:   ws1" in output and "3 node(s) x 2 process(es), 20 files per mini-batch" in output
    assert f"wrote {path}" in output and not (tmp_path / "p.csv").exists()
    step = load_job(str(path)).jobs["score"]
    assert step.type == "parallel" and step.resources.instance_count == 3 and step.mini_batch_size == 20
    assert step.inputs["model"].path == str(model)
    assert step.inputs["data"].path == "azureml://datastores/workspaceblobstore/paths/photos/2026/"


def test_a_file_that_is_no_model_is_refused_before_anything_is_planned(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"garbage")
    code, output = invoke(fake, "az://workspaceblobstore/photos", "--out", tmp_path / "p.csv", "--dry-run")
    assert code == 2 and "not a readable ONNX model" in output and "Traceback" not in output, output


@pytest.mark.parametrize("args,match", [
    (["az://workspaceblobstore", "--dry-run"], "expected az://DATASTORE/PREFIX"),
    (["LOCAL", "--compute", "cpu"], "--compute: Azure ML option"),
    (["LOCAL", "--instances", "2", "--dry-run"], "--instances, --dry-run: Azure ML option"),
])
def test_bad_azure_arguments_are_one_line_errors(tmp_path, args, match):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    (tmp_path / "images").mkdir()
    args = [str(tmp_path / "images") if a == "LOCAL" else a for a in args]
    code, output = invoke(model, *args, "--out", tmp_path / "p.csv")
    assert code == 2 and match in output and "Traceback" not in output, output
