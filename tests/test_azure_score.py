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
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from azure_transport import (SUB, ManagementPlane, StaticToken, add_datastore, aml_compute, blob_container,
                             datastore_body, set_job_status)
from imagegen import make_dataset
from services.azurite import ACCOUNT, ACCOUNT_KEY

from orchestrator.backends.azure import score_job
from orchestrator.backends.azure import AzureBackend
from orchestrator.backends.azure.score_job import (APPEND_ROW_FILE, build_score_job, describe_score, export_score_yaml,
                                                   parse_data_uri, plan_from_params, plan_params, plan_score,
                                                   resolve_data, score_prefix, write_predictions)
from orchestrator.backends.azure.seam import AzureSeam
from orchestrator.backends.azure.settings import Settings
from orchestrator.errors import JobFailed, UsageError
from orchestrator.backends.base import SCORE, JobSpec, RunRef
from orchestrator.ledger import Ledger
from orchestrator.storage.blob import download_prefix
from orchestrator.runner import follow, start
from orchestrator.paths import remote_scripts_dir

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow

REPO = Path(__file__).resolve().parents[1]
RUN = "score-eurosat-20261202-061500-ab12"
DATA = "az://workspaceblobstore/orchestrate/datasets/eurosat-1a2b3c4d"
MODEL_URI = "azureml://datastores/workspaceblobstore/paths/orchestrate/runs/eurosat-1/model/model.onnx"
WS = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
CONTAINER = "azureml-blobstore-score"  # the container of the test workspace's workspaceblobstore


def plan(**values):
    return plan_score(values.pop("model", MODEL_URI), values.pop("data", DATA), run_id=values.pop("run_id", RUN),
                      **values)


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
    # what az ml uploads: the code snapshot holding the entry script, and the training image's build
    assert Path(task.code) == remote_scripts_dir() and (Path(task.code) / "score_entry.py").is_file()
    assert task.environment.build.dockerfile_path == "azureml.Dockerfile"
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
                     "offline, 'workspaceblobstore' is taken as a datastore name; a submit looks it up, and also "
                     "accepts az://ACCOUNT/CONTAINER/PREFIX as `data upload` prints it",
                     f"model:       {MODEL_URI}", "score_entry.py", "pipeline job " + RUN):
        assert expected in body


@pytest.mark.parametrize("values,match", [
    ({"data": "az://workspaceblobstore"}, "expected az://DATASTORE/PREFIX"),
    ({"data": "az://workspaceblobstore/a/../b"}, "expected az://DATASTORE/PREFIX"),
    ({"data": "https://x/y"}, "bad data URI"),
    ({"compute": "nc12"}, "unknown compute"),
    ({"model": "/nonexistent/model.onnx"}, "no such file"),
])
def test_bad_values_are_user_errors(values, match):
    with pytest.raises(UsageError, match=match):
        plan(**values)


@pytest.mark.parametrize("values,match", [
    ({"instances": 0}, "^instances=0: --instances must be at least 1$"),
    ({"processes_per_node": 0}, "^processes_per_node=0: --processes-per-node must be at least 1$"),
    ({"mini_batch_size": 0}, "^mini_batch_size=0: --mini-batch-size must be at least 1$"),
    ({"instances": "2"}, "--instances must be an integer"),
])
def test_a_score_jobs_options_are_checked_by_the_rules_the_azure_backend_declares(tmp_path, values, match):
    from orchestrator.scoring import score

    with pytest.raises(UsageError, match=match):
        score(MODEL_URI, DATA, tmp_path / "p.csv", dry_run=True, **values)


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
    # `data upload`'s az://ACCOUNT/CONTAINER/PREFIX: which one it is, the submit decides (resolve_data)
    assert parse_data_uri("az://devstoreaccount1/datasets/pets/") == ("devstoreaccount1", "datasets/pets")


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
    plane = Plane()
    admin = blob_container(azurite, CONTAINER)
    add_datastore(plane, datastore_body("workspaceblobstore", ACCOUNT, CONTAINER), key=ACCOUNT_KEY)
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


def settings():
    return Settings(subscription_id=SUB, resource_group="rg", workspace_name="ws")


def backend(plane, azurite, said=None):
    return AzureBackend(seam_factory=real_seam(plane, azurite.endpoint), sleep=lambda s: None,
                        on_event=(said.append if said is not None else lambda event: None))


def submit(plane, azurite, planned, run_dir, said=None):
    """The score job of `planned` started as every job kind is (runner.start: prepare, the ledger
    row, runs/<id>/, submit); returns the plan as recorded, its datastore resolved."""
    spec = JobSpec(run_id=planned.run_id, data=planned.data, run_dir=run_dir, train_args=[],
                   backend_options={"subscription_id": SUB, "resource_group": "rg", "workspace_name": "ws"},
                   kind=SCORE, score=plan_params(planned))
    start(backend(plane, azurite, said), Ledger(), spec, planned.run_id)
    return plan_from_params(planned.run_id, spec.score)


def rows_file(rows):
    return "".join(json.dumps(row) + "\n" for row in rows)


def row(path, label="a", error=None):
    if error:
        return {"path": path, "label": None, "score": None, "top_k": None, "error": error}
    return {"path": path, "label": label, "score": 0.5, "top_k": [{"label": label, "score": 0.5}], "error": None}


def test_the_put_body_holds_the_parallel_step_in_the_fields_the_service_reads(tmp_path, plane, azurite, monkeypatch):
    """The step as azure-ai-ml sends it in PipelineJob.properties.jobs (a free-form object in the REST
    model): Parallel._to_rest_object's snake_case keys, the keys of the parallel job YAML schema
    (reference-yaml-job-parallel.md), with the command's values written out here."""
    nothing_to_upload(monkeypatch)
    submit(plane, azurite, plan(compute="cpu", instances=3, processes=2, mini_batch_size=50, top_k=3),
           tmp_path / "runs" / RUN)
    (name, body), = plane.job_puts
    props = body["properties"]
    assert name == RUN
    assert (props["jobType"], props["displayName"], props["experimentName"]) == ("Pipeline", RUN, "orchestrate")
    assert props["computeId"].endswith("/computes/cpu")
    assert props["tags"] == {"orchestrate.run_id": RUN, "orchestrate.kind": "score"}
    assert list(props["jobs"]) == ["score"]
    step = props["jobs"]["score"]
    assert step["type"] == "parallel" and step["name"] == "score"
    assert step["resources"] == {"instance_count": 3}     # nodes
    assert step["max_concurrency_per_instance"] == 2      # processes per node
    assert step["mini_batch_size"] == 50                  # files per run() call (a folder input)
    assert step["retry_settings"] == {"max_retries": 3, "timeout": 300}  # tries of a mini-batch; s per run()
    assert step["error_threshold"] == 0                   # a file without its row fails the job
    assert step["logging_level"] == "INFO"
    assert step["input_data"] == "${{inputs.data}}"       # the input cut into mini-batches
    assert step["environment_variables"] == {"PYTHONUNBUFFERED": "1"}
    # code and environment: ARM ids with the `azureml:` prefix Parallel._to_rest_object puts on them
    assert step["task"] == {
        "type": "run_function", "code": f"azureml:{WS}/codes/remote-scripts/versions/1",
        "entry_script": "score_entry.py", "environment": f"azureml:{WS}/environments/orchestrate/versions/1",
        "append_row_to": "${{outputs.predictions}}",
        "program_arguments": "--model ${{inputs.model}} --data ${{inputs.data}} --top-k 3 --threads 2 "
                             "--append_row_file_name predictions.jsonl"}
    assert step["inputs"]["data"] == {"job_input_type": "uri_folder", "mode": "ReadOnlyMount",
                                      "uri": "azureml://datastores/workspaceblobstore/paths/orchestrate/datasets/"
                                             "eurosat-1a2b3c4d/"}
    assert step["inputs"]["model"] == {"job_input_type": "uri_file", "mode": "Download", "uri": MODEL_URI}
    assert step["outputs"]["predictions"] == {
        "job_output_type": "uri_folder", "mode": "ReadWriteMount",
        "uri": f"azureml://datastores/workspaceblobstore/paths/orchestrate/scores/{RUN}/predictions/"}
    assert step["componentId"].startswith(f"{WS}/components/")
    # the anonymous component the step runs: the same parallel settings, as its spec
    component = plane.component_puts[0]["properties"]["componentSpec"]
    assert component["type"] == "parallel" and component["input_data"] == "${{inputs.data}}"
    assert component["task"]["entry_script"] == "score_entry.py" and component["task"]["type"] == "run_function"
    assert component["retry_settings"] == {"max_retries": 3, "timeout": 300}


def test_submit_of_the_uri_data_upload_prints_then_download_of_the_predictions(tmp_path, plane, azurite, monkeypatch):
    """az://ACCOUNT/CONTAINER/PREFIX, as `data upload` prints it, on the datastore's own account and
    container: the datastore is found, the rows come back under the URI as given."""
    nothing_to_upload(monkeypatch)
    said = []
    run_dir = tmp_path / "runs" / RUN
    given = f"az://{ACCOUNT}/{CONTAINER}/orchestrate/datasets/eurosat-1a2b3c4d"
    submitted = submit(plane, azurite, plan(data=given, instances=2, mini_batch_size=16), run_dir, said)
    assert (submitted.datastore, submitted.prefix, submitted.data) == (
        "workspaceblobstore", "orchestrate/datasets/eurosat-1a2b3c4d", given)
    assert [m for m, p in plane.requests if p.endswith(f"/jobs/{RUN}")] == ["GET", "PUT"]  # get-then-create
    (_, body), = plane.job_puts
    assert body["properties"]["jobs"]["score"]["inputs"]["data"]["uri"] == \
        "azureml://datastores/workspaceblobstore/paths/orchestrate/datasets/eurosat-1a2b3c4d/"
    state = json.loads((run_dir / "azure.json").read_text())
    assert state["job"] == RUN and "ml.azure.com/runs/" in state["studio_url"] and ACCOUNT_KEY not in json.dumps(state)
    assert Ledger().get(RUN).dataset == given

    # the job runs; its append-row file lands in the output folder
    lines = [row("b/2.jpg", "b"), row("a/1.jpg"), row("a/bad.png", error="cannot read image: x"),
             row("a/readme.txt", error="not an image file")]
    plane.admin.upload_blob(f"{score_prefix(RUN)}/{APPEND_ROW_FILE}", rows_file(lines), overwrite=True)
    set_job_status(plane, RUN, "Completed")
    out = tmp_path / "predictions.csv"
    # followed as a training run is (runner.follow): its status said, its outputs downloaded at the end
    outcome = follow(backend(plane, azurite, said), RunRef(RUN, "azure", run_dir, RUN), Ledger(), said.append,
                     lambda line: None)
    assert outcome.status == "completed" and {"type": "notice", "message": "Azure ML job: Completed"} in said
    files = [path for path in (run_dir / "outputs").rglob("*") if path.is_file()]
    summary = write_predictions(files, submitted, out)
    assert summary == {"rows": 3, "errors": 1, "skipped": 1}
    text = out.read_text().splitlines()
    assert text[0] == "path,label,score,top_k,error"
    assert [line.split(",")[0] for line in text[1:]] == [f"{given}/a/1.jpg", f"{given}/a/bad.png", f"{given}/b/2.jpg"]
    assert Ledger().get(RUN).status == "completed"
    # `orchestrate status/cancel RUN` find the job from runs/<id>/azure.json, as for a training run
    from orchestrator.backends.base import COMPLETED

    assert AzureBackend(seam_factory=real_seam(plane)).status(RunRef(RUN, "azure", run_dir, RUN)) == COMPLETED


def test_a_failed_job_is_job_failed_with_the_services_error(tmp_path, plane, azurite, monkeypatch):
    """Followed as any run is (Run.wait): the service's error is the reason (exit code 1 in the CLI)."""
    from azure_transport import run_error

    from orchestrator.backends.azure import seam
    from orchestrator.run import Run

    nothing_to_upload(monkeypatch)
    submit(plane, azurite, plan(), tmp_path / "runs" / RUN)

    class Seam(seam.AzureSeam):
        def job_status(self, name):  # the service reports the failure on the first poll after the submit
            set_job_status(plane, name, "Failed", run_error("UserError", "run() raised in 5 mini-batches"))
            return super().job_status(name)
    monkeypatch.setattr(seam, "AzureSeam", lambda settings: Seam(settings, credential=PipelineCredential(),
                                                                 transport=plane, blob_endpoint=azurite.endpoint))
    with pytest.raises(JobFailed, match="failed: UserError: run\\(\\) raised in 5 mini-batches") as failed:
        Run(Ledger().get(RUN)).wait()
    assert failed.value.exit_code == 1 and failed.value.reason == "UserError: run() raised in 5 mini-batches"
    assert Ledger().get(RUN).status == "failed"


def download(plane, azurite, tmp_path, run_id, blobs):
    """Put `blobs` ({name: text}) in run_id's predictions folder and download them: (summary, out)."""
    for name, text in blobs.items():
        plane.admin.upload_blob(f"{score_prefix(run_id)}/{name}", text, overwrite=True)
    resolved = replace(plan(run_id=run_id), datastore="workspaceblobstore")
    seam = real_seam(plane, azurite.endpoint)(settings())
    container = seam.container_client(resolve_data(seam, "workspaceblobstore", "")[0])
    files = download_prefix(container, score_prefix(run_id), tmp_path / "runs" / run_id / "outputs")
    out = tmp_path / "p.jsonl"
    return write_predictions(files, resolved, out), out


def test_download_reads_the_append_row_file_alone_and_keeps_the_last_row_of_a_retried_path(tmp_path, plane, azurite):
    rows = [row("a/1.jpg", error="cannot read image: timeout"), row("b/2.jpg", "b"),
            row("a/1.jpg", "a")]  # a/1.jpg's mini-batch was tried again: its second row is the one kept
    summary, out = download(plane, azurite, tmp_path, "score-dedup-1", {
        APPEND_ROW_FILE: rows_file(rows), "logs/overview.txt": "not rows", "notes.json": '{"no": "path"}\n'})
    assert summary == {"rows": 2, "errors": 0, "skipped": 0}
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["path"].rsplit("/", 2)[-2:], r["label"], r["error"]) for r in got] == [
        (["a", "1.jpg"], "a", None), (["b", "2.jpg"], "b", None)]


def test_download_falls_back_to_the_runtimes_default_file_name(tmp_path, plane, azurite):
    summary, _ = download(plane, azurite, tmp_path, "score-default-1",
                          {"parallel_run_step.txt": rows_file([row("a/1.jpg")]), "other.txt": "x\n"})
    assert summary == {"rows": 1, "errors": 0, "skipped": 0}


@pytest.mark.parametrize("run_id,blobs,match", [
    ("score-bad-1", {"other.txt": "x\n", "logs/job.log": "y\n"},
     "the job wrote no predictions.jsonl \\(nor parallel_run_step.txt\\) in azureml://datastores/workspaceblobstore/"
     "paths/orchestrate/scores/score-bad-1/predictions/ \\(found: job.log, other.txt\\)"),
    ("score-bad-2", {APPEND_ROW_FILE: rows_file([row("a/1.jpg")]) + "Traceback (most recent call last):\n"},
     "score-bad-2/outputs/predictions.jsonl, line 2: not a prediction row \\(a JSON object with a path\\): "
     "'Traceback \\(most recent call last\\):'$"),
    ("score-bad-3", {APPEND_ROW_FILE: rows_file([row("a/1.jpg")]) + '{"label": "a"}\n'},
     "predictions.jsonl, line 2: not a prediction row"),
    ("score-bad-4", {APPEND_ROW_FILE: "\n" + json.dumps([1, 2]) + "\n"},
     "predictions.jsonl, line 2: not a prediction row"),
    ("score-bad-5", {APPEND_ROW_FILE: b"\xff\xfe\x00"}, "predictions.jsonl: not UTF-8 text"),
])
def test_an_unreadable_predictions_file_is_a_user_error_naming_file_and_line(tmp_path, plane, azurite, run_id, blobs,
                                                                              match):
    with pytest.raises(UsageError, match=match):
        download(plane, azurite, tmp_path, run_id, blobs)


def packed_index():
    """The bytes of a packed dataset's index, as `data pack` writes them."""
    from remote_scripts.packed_dataset import FORMAT, VERSION, index_bytes

    return index_bytes({"format": FORMAT, "version": VERSION, "classes": ["a"], "shards": [], "files": [],
                        "labels": "folder", "max_side": None, "shard_bytes": 1 << 26})


def test_a_packed_prefix_is_refused_before_anything_is_created(tmp_path, plane, azurite, monkeypatch):
    nothing_to_upload(monkeypatch)
    plane.admin.upload_blob("packed/pets/index.json", packed_index(), overwrite=True)
    plane.admin.upload_blob("packed/pets/shards/0a1b.tar", b"\0" * 1024, overwrite=True)
    with pytest.raises(UsageError) as refused:
        submit(plane, azurite, plan(data="az://workspaceblobstore/packed/pets"), tmp_path / "runs" / RUN)
    message = str(refused.value)
    assert message.startswith("az://workspaceblobstore/packed/pets is a packed dataset (index.json and shards/*.tar)")
    assert "score a folder of image files" in message and "orchestrate data upload DATA --no-pack" in message
    assert "\n" not in message
    assert plane.job_puts == [] and not [r for r in plane.requests if r[0] == "PUT"]  # no job, no cluster
    assert Ledger().list() == [] and not (tmp_path / "runs" / RUN).exists()  # no run recorded


def test_a_loose_folder_with_an_index_json_of_its_own_is_scored(tmp_path, plane, azurite, monkeypatch):
    nothing_to_upload(monkeypatch)
    plane.admin.upload_blob("loose/pets/index.json", b'{"images": 3}', overwrite=True)
    submitted = submit(plane, azurite, plan(data="az://workspaceblobstore/loose/pets"), tmp_path / "r")
    assert submitted.prefix == "loose/pets" and len(plane.job_puts) == 1


def test_the_data_uri_names_a_datastore_a_storage_account_and_container_or_a_container(plane):
    add_datastore(plane, datastore_body("archive", "otheraccount", "old-images", default=False), key=ACCOUNT_KEY)
    seam = AzureSeam(settings(), credential=StaticToken(), transport=plane)

    def resolved(uri):
        store, prefix = resolve_data(seam, *parse_data_uri(uri))
        return store["name"], prefix
    assert resolved("az://workspaceblobstore/photos/2026") == ("workspaceblobstore", "photos/2026")
    assert resolved(f"az://{ACCOUNT}/{CONTAINER}/photos/2026/") == ("workspaceblobstore", "photos/2026")
    assert resolved("az://otheraccount/old-images/x") == ("archive", "x")
    assert resolved(f"az://{CONTAINER}/photos") == ("workspaceblobstore", "photos")
    known = ("\\(the blob datastores of workspace 'ws': workspaceblobstore \\(account devstoreaccount1, container "
             "azureml-blobstore-score\\), archive \\(account otheraccount, container old-images\\)\\)")
    with pytest.raises(UsageError, match=f"^az://{ACCOUNT}/datasets/pets: no datastore is on container 'datasets' of "
                                        f"storage account '{ACCOUNT}': register one for it "
                                        f"\\(az ml datastore create\\) or upload to the container of one {known}$"):
        resolved(f"az://{ACCOUNT}/datasets/pets")
    with pytest.raises(UsageError, match="^az://elsewhere/x: no datastore has that name or container, nor is on "
                                        f"storage account 'elsewhere' {known}$"):
        resolved("az://elsewhere/x")
    with pytest.raises(UsageError, match=f"az://{ACCOUNT}/{CONTAINER}: name the blob folder of the images"):
        resolved(f"az://{ACCOUNT}/{CONTAINER}")


# the command: `orchestrate score MODEL az://...` --------------------------------------------------
def invoke(*args, command="score"):
    """The real entry point (orchestrator.cli.main.main: errors -> one line + exit code):
    (exit code, stdout + stderr)."""
    from unittest import mock

    from click.testing import CliRunner

    from orchestrator.cli.main import main

    runner = CliRunner()
    with runner.isolation() as (out, err, _), \
            mock.patch.object(sys, "argv", ["orchestrate", *command.split(), *map(str, args)]):
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
    (["LOCAL", "--processes-per-node", "2"], "--processes-per-node: Azure ML option"),
    (["az://workspaceblobstore/photos", "--processes-per-node", "0", "--dry-run"],
     "--processes-per-node must be at least 1"),
])
def test_bad_azure_arguments_are_one_line_errors(tmp_path, args, match):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    (tmp_path / "images").mkdir()
    args = [str(tmp_path / "images") if a == "LOCAL" else a for a in args]
    code, output = invoke(model, *args, "--out", tmp_path / "p.csv")
    assert code == 2 and match in output and "Traceback" not in output, output


def test_processes_per_node_shares_the_nodes_vcpus(tmp_path, trained):
    code, output = invoke(trained["model"], "az://workspaceblobstore/photos", "--out", tmp_path / "p.csv",
                          "--processes-per-node", "4", "--dry-run")
    assert code == 0, output
    # cpu: 4 vCPUs among 4 processes, one ONNX Runtime thread each
    assert "1 node(s) x 4 process(es), 64 files per mini-batch" in output
    assert "ONNX Runtime with 1 thread(s) per process" in output


def test_the_uris_data_upload_prints_packed_is_refused_and_loose_is_scored(tmp_path, plane, azurite, monkeypatch,
                                                                          trained):
    """The whole round trip: `orchestrate data upload` to the workspace datastore's container, then
    `score` on the URI it printed, az://ACCOUNT/CONTAINER/PREFIX."""
    from orchestrator.backends.azure import seam

    nothing_to_upload(monkeypatch)
    for name, value in (("AZURE_SUBSCRIPTION_ID", SUB), ("AZURE_RESOURCE_GROUP", "rg"), ("AZUREML_WORKSPACE_NAME", "ws"),
                        ("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(seam, "AzureSeam", real_seam(plane, azurite.endpoint))
    to = f"az://{ACCOUNT}/{CONTAINER}"
    code, output = invoke(trained["data"], "--to", f"{to}/uploads/packed", command="data upload")
    assert code == 0, output
    packed, = [line for line in output.splitlines() if line.startswith("az://")]  # stdout: the URI alone
    assert packed == f"{to}/uploads/packed"
    code, output = invoke(trained["model"], packed, "--out", tmp_path / "p.csv", "--yes")
    assert code == 2, output
    assert output.strip() == (
        f"error: {packed} is a packed dataset (index.json and shards/*.tar), which a parallel job cannot score: "
        "it hands run() files, and these are shards; score a folder of image files instead, e.g. one uploaded "
        "with `orchestrate data upload DATA --no-pack --to az://ACCOUNT/CONTAINER/PREFIX`")
    assert plane.job_puts == [] and not (tmp_path / "p.csv").exists()

    code, output = invoke(trained["data"], "--to", f"{to}/uploads/loose", "--no-pack", command="data upload")
    assert code == 0, output
    loose, = [line for line in output.splitlines() if line.startswith("az://")]
    assert loose == f"{to}/uploads/loose"
    submitted = submit(plane, azurite, plan(data=loose), tmp_path / "runs" / RUN)
    assert (submitted.datastore, submitted.prefix) == ("workspaceblobstore", "uploads/loose")
    (_, body), = plane.job_puts
    assert body["properties"]["jobs"]["score"]["inputs"]["data"]["uri"] == \
        "azureml://datastores/workspaceblobstore/paths/uploads/loose/"
