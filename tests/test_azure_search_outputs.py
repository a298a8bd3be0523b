"""What a finished Azure search hands on: its model is its best trial's, where that trial's job wrote it.

A sweep's trials write under orchestrate/runs/<search>/trials/<trial job>/model/ (sweep_job.py),
and the sweep job's own `model` output is the template of those paths (`${{name}}`): nothing is at
runs/<search>/model/, and azureml://jobs/<sweep>/outputs/model names no model. So `score SEARCH
az://...` reads the best trial's model.onnx in place, and `register SEARCH` registers the best
trial job's output, azureml://jobs/<trial job>/outputs/model, the job-output path form of the
Azure ML docs (azureml-examples cli/jobs/basics/hello-model-as-output.yml: "Job:
azureml://jobs/<job-name>/outputs/<output-name>"), which is how a sweep's child job is registered
(ManojBableshwar/AzureMLOpsDemo cli/create-model-from-job.sh: `az ml job list --parent-job-name`,
then `az ml model create --path azureml://jobs/$child_run_id/outputs/...`). The best trial is the
one search.json names, with its job as remote_id (sweep_results.download_search).

Everything goes through the real MLClient to the planes of tests/test_azure_sweep.py (run history
for the trials) and tests/test_azure_score.py (the pipeline step's anonymous component), which
answer in the service's documented shapes; the trials' files are blobs in Azurite.
"""
import json

import pytest
from azure_transport import SUB, add_datastore, aml_compute, blob_container, datastore_body
from services.azurite import ACCOUNT, ACCOUNT_KEY
from test_azure_score import PipelineCredential, nothing_to_upload
from test_azure_score import Plane as ScorePlane
from test_azure_score import invoke as invoke_score
from test_azure_sweep import CONTAINER, RUN, SHARED, TRIALS, ended_sweep, submitted
from test_azure_sweep import Plane as SweepPlane

from orchestrator.backends.azure import score_job
from orchestrator.backends.azure import seam as seam_module
from orchestrator.backends.azure import AzureBackend
from orchestrator.backends.azure.score_job import plan_params, plan_score
from orchestrator.backends.base import SCORE, JobSpec
from orchestrator.runner import start
from orchestrator.backends.azure.sweep_job import trial_prefix
from orchestrator.backends.base import COMPLETED
from orchestrator.errors import UsageError
from orchestrator.ledger import Ledger, RunRecord

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # azure-ai-ml's marshmallow

BEST_JOB = f"{RUN}_1"  # ended_sweep: trial t01 ran as the sweep's child _1 and ranks first
BEST_MODEL = f"{trial_prefix(RUN, BEST_JOB, 'model')}/model.onnx"
DATA = "az://workspaceblobstore/photos/2026"


class Plane(SweepPlane, ScorePlane):
    """Run history (the sweep's runs) and the pipeline component routes on one management plane."""


@pytest.fixture
def plane(azurite, monkeypatch):
    plane = Plane()
    plane.admin = blob_container(azurite, CONTAINER, empty=True)
    add_datastore(plane, datastore_body("workspaceblobstore", ACCOUNT, CONTAINER), key=ACCOUNT_KEY)
    plane.computes["gpu-t4"] = aml_compute("gpu-t4", size="STANDARD_NC4AS_T4_V3", max_nodes=2)
    plane.computes["cpu"] = aml_compute("cpu", size="STANDARD_DS3_V2", max_nodes=4)
    real = seam_module.AzureSeam

    def seam(settings, credential=None, transport=None, blob_endpoint=None):  # the CLI's seam: this plane
        return real(settings, credential=PipelineCredential(), transport=plane, blob_endpoint=azurite.endpoint)
    monkeypatch.setattr(seam_module, "AzureSeam", seam)
    for name, value in (("AZURE_SUBSCRIPTION_ID", SUB), ("AZURE_RESOURCE_GROUP", "rg"),
                        ("AZUREML_WORKSPACE_NAME", "ws")):
        monkeypatch.setenv(name, value)
    return plane


def search_in_ledger(run):
    """The search's ledger row, as `train --search --backend azure` leaves it once it has ended."""
    Ledger().add(RunRecord(run_id=RUN, name="eurosat-search", backend="azure", status=COMPLETED, dataset="EuroSAT",
                           run_dir=str(run.run_dir), remote_id=RUN,
                           params={"train_args": SHARED, "backend_options": {}, "trials": TRIALS}))


def test_scoring_a_search_reads_its_best_trials_model_where_that_trial_wrote_it(tmp_path, plane, azurite,
                                                                                monkeypatch):
    from orchestrator.scoring import azure_model

    backend, run, _ = submitted(tmp_path, plane, azurite, monkeypatch)
    ended_sweep(plane, azurite)
    backend.download(run, run.run_dir / "outputs")
    search_in_ledger(run)
    uri = azure_model(RUN)
    assert uri == f"azureml://datastores/workspaceblobstore/paths/{BEST_MODEL}"
    assert plane.admin.download_blob(BEST_MODEL).readall() == b"onnx-of-trial-1"  # the best trial's model is there
    # the parallel step's model input is that blob, read in place (no upload)
    nothing_to_upload(monkeypatch)
    run_id = "score-photos-20261204-090000-ef56"
    spec = JobSpec(run_id=run_id, data=DATA, run_dir=tmp_path / "runs" / run_id, train_args=[],
                   backend_options={"subscription_id": SUB, "resource_group": "rg", "workspace_name": "ws"},
                   kind=SCORE, score=plan_params(plan_score(uri, DATA, run_id=run_id)))
    start(AzureBackend(sleep=lambda s: None), Ledger(), spec, run_id)
    (_, body), = [(name, body) for name, body in plane.job_puts if name == run_id]
    assert body["properties"]["jobs"]["score"]["inputs"]["model"] == {"job_input_type": "uri_file",
                                                                       "mode": "Download", "uri": uri}


def test_scoring_a_search_whose_best_trial_is_not_known_yet_is_refused_before_anything_is_made(tmp_path, plane,
                                                                                               azurite, monkeypatch):
    backend, run, _ = submitted(tmp_path, plane, azurite, monkeypatch)  # running: no search.json here yet
    search_in_ledger(run)
    seen = len(plane.requests)
    # were the job submitted, following it would poll for minutes: fail at once instead
    monkeypatch.setattr(AzureBackend, "submit", lambda self, spec: pytest.fail("a score job was submitted"))
    code, output = invoke_score(RUN, DATA, "--out", tmp_path / "p.csv", "--yes")
    assert (code, output) == (2, f"error: the best trial of search {RUN} is not known yet: once the search has "
                                 f"ended, run `orchestrate download {RUN}`\n")
    assert plane.requests[seen:] == [] and [name for name, _ in plane.job_puts] == [RUN]  # the sweep's PUT alone
    assert [r.run_id for r in Ledger().list()] == [RUN] and not (tmp_path / "p.csv").exists()

    # a search without a completed trial has no model to score, said as plainly
    (run.run_dir / "outputs").mkdir()
    (run.run_dir / "outputs" / "search.json").write_text(json.dumps({"search_id": RUN, "best": None, "trials": []}))
    with pytest.raises(UsageError, match=f"^no trial of search {RUN} completed: it has no model "
                                        "\\(see .*search.json\\)$"):
        score_job.azure_run_model_uri(run.run_dir, RUN)


def test_registering_a_search_registers_its_best_trial_jobs_output(tmp_path, plane, azurite, monkeypatch):
    """`register SEARCH` fetches the outputs (the best trial's model, labels, metrics and
    search.json), then registers the best trial job's `model` output with those as tags."""
    from test_cloud_assets import invoke

    backend, run, _ = submitted(tmp_path, plane, azurite, monkeypatch)
    ended_sweep(plane, azurite)
    search_in_ledger(run)
    code, stdout, stderr = invoke("register", RUN, "--name", "eurosat-best")
    assert code == 0, stderr
    assert stdout.splitlines()[0] == f"model: eurosat-best:1 (azureml://jobs/{BEST_JOB}/outputs/model)"
    (kind, name, version, model), = [put for put in plane.asset_puts if put[0] == "models"]
    assert (kind, name, version) == ("models", "eurosat-best", "1")
    assert model["properties"]["modelUri"] == f"azureml://jobs/{BEST_JOB}/outputs/model"
    assert "${{" not in json.dumps(model)
    assert model["properties"]["tags"] == {"orchestrate.run_id": RUN, "orchestrate.trial": "t01", "num_classes": "2",
                                           "labels": "a,b", "test_accuracy": "0.9200", "test_macro_accuracy": "0.9100",
                                           "test_macro_f1": "0.9000", "test_log_loss": "0.2400"}
    assert f"best trial t01 (job {BEST_JOB})" in model["properties"]["description"]
