"""`orchestrate score MODEL az://DATASTORE/PREFIX` on Azure ML: batch scoring as a parallel job.

Why a pipeline around the parallel step: Azure ML runs a parallel job only as a step of a pipeline
job (the service has no standalone "parallel" job type; azure-ai-ml's ParallelJob has no REST form
of its own), so the job submitted is a one-step pipeline whose step `score` has type parallel:
the data folder (a uri_folder of the datastore, mounted) is cut into mini-batches of files that
max_concurrency_per_instance processes on each of instance_count nodes hand to
remote_scripts/score_entry.py's run(); each process loads the model (a uri_file input) once in
init(); what run() returns is appended to one predictions file (append_row) in a fixed output
folder of the datastore, which the client downloads and writes to --out in the columns of local
`score` (orchestrator.inference.score.write_rows).

The conventions are the training job's (job.py, backend.py): the environment is the training
image (infra/docker, azureml.Dockerfile, which has onnxruntime), the code snapshot is
remote_scripts/, the job is named after its run id, runs/<id>/azure.json and the ledger row are
written before the submit, the submit is get-then-create (seam.submit), and the cluster is
created when missing after the same quota-checked plan (provision.ensure_compute).

`az://NAME/PREFIX`, resolved at submit against the workspace's blob datastores (list_datastores):
NAME is a datastore's name (`workspaceblobstore` is every workspace's default); else
az://ACCOUNT/CONTAINER/PREFIX, the URI `orchestrate data upload` prints, names the datastore on
that storage account and container; else NAME is the container of a datastore. `--dry-run`/
`--export` make no call, so there NAME is taken as the datastore name, and the plan says so.
A packed dataset prefix (remote_scripts/packed_dataset.py: index.json + shards/*.tar) is refused
at submit: the runtime would hand run() the shards and the index, not images.

Sources for the step's fields (names and meanings as the SDK sends them, checked by
tests/test_azure_score.py on the PUT body):
- PipelineJob REST model (Microsoft.MachineLearningServices, jobs/createOrUpdate): properties
  jobType "Pipeline", `jobs` "Jobs construct the Pipeline Job" typed as a free-form object
  (Record<string, any> in @azure/arm-machinelearning's PipelineJob interface,
  learn.microsoft.com/javascript/api/@azure/arm-machinelearning/pipelinejob), so a step's keys
  are those of azure-ai-ml's node serialization: azure/ai/ml/entities/_builders/parallel.py
  Parallel._to_rest_object (componentId, retry_settings, logging_level, mini_batch_size,
  partition_keys, identity, resources) and _picked_fields_from_dict_to_rest_object (type,
  resources, error_threshold, mini_batch_error_threshold, environment_variables,
  max_concurrency_per_instance, task, input_data), snake_case unlike the rest of the body.
- CLI (v2) parallel job YAML schema, MicrosoftDocs/azure-ai-docs
  articles/machine-learning/reference-yaml-job-parallel.md: input_data, mini_batch_size (a file
  count for a folder input), mini_batch_error_threshold, logging_level, resources.instance_count,
  max_concurrency_per_instance, retry_settings.max_retries / .timeout (seconds per run() call),
  environment_variables; task: type run_function, code, entry_script, environment,
  program_arguments, append_row_to; the predefined --error_threshold (failed items, counted as
  the gap between a mini-batch's inputs and run()'s returns; -1 ignores all failures).
- azure-ai-ml parallel_run_function reference (learn.microsoft.com/python/api/azure-ai-ml/
  azure.ai.ml.parallel): the keyword arguments used below, mini_batch_size given as a string.
- ParallelRunConfig reference (learn.microsoft.com/python/api/azureml-pipeline-steps/
  azureml.pipeline.steps.parallelrunconfig) and the v1 ParallelRunStep how-to: append_row writes
  one file of line-separated returns, named by append_row_file_name, default
  parallel_run_step.txt (hence the download's fallback to that name).
"""
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from ...errors import UsageError
from ...paths import docker_context_dir, remote_scripts_dir
from ...run_folder import RunFolder
from ..base import BackendOption
from . import catalogue
from .job import (AZUREML_DOCKERFILE, DEFAULT_DATASTORE, DEFAULT_EXPERIMENT, REMOTE_PATH, datastore_uri,
                  job_name, sdk_validation_errors)
from .seam import job_validation_errors, load_sdk, write_yaml

ENTRY_SCRIPT = "score_entry.py"
STEP = "score"                        # the pipeline's one step, of type parallel
# A score job's options (AzureBackend.score_options): the CLI's flags, checked by train's rules.
# ONNX Runtime's CPU build scores (a GPU size would idle its GPU); 64 files per run() call are
# enough to amortize its overhead.
SCORE_OPTIONS = (
    BackendOption("--compute", "str", "cpu", "compute alias or VM size of the parallel job"),
    BackendOption("--instances", "int", 1, "nodes the mini-batches are spread over", low=1),
    BackendOption("--processes-per-node", "int", None, "scoring processes per node, sharing its vCPUs for "
                  "ONNX Runtime [default: one per 2 vCPUs]", low=1),
    BackendOption("--mini-batch-size", "int", 64, "files per mini-batch", low=1),
)
DEFAULTS = {option.dest: option.default for option in SCORE_OPTIONS}
MAX_RETRIES = 3                       # a mini-batch is tried again this often (preempted node, timeout)
MINI_BATCH_TIMEOUT = 300              # seconds one run() call may take before it is retried
# Every file of a mini-batch gets a row (an unreadable image gets an error row), so a file without
# one means its mini-batch failed every retry: the job fails rather than return a short file.
ERROR_THRESHOLD = 0
APPEND_ROW_FILE = "predictions.jsonl"  # the parallel runtime's --append_row_file_name
DEFAULT_APPEND_ROW_FILE = "parallel_run_step.txt"  # its documented default, should it ignore ours
_DATA_URI = re.compile(r"^az://(?P<name>[A-Za-z0-9][A-Za-z0-9_-]*)(?:/(?P<prefix>.*))?$")


def parse_data_uri(text):
    """(first segment, the rest without slashes at its ends) of az://NAME/PREFIX: the datastore
    and blob prefix, or the storage account and CONTAINER/PREFIX (resolve_data decides)."""
    match = _DATA_URI.match(text or "")
    prefix = (match.group("prefix") or "").strip("/") if match else ""
    if not match or not prefix or ".." in PurePosixPath(prefix).parts:
        raise UsageError(f"bad data URI {text!r}: expected az://DATASTORE/PREFIX (e.g. "
                        f"az://{DEFAULT_DATASTORE}/orchestrate/datasets/x) or az://ACCOUNT/CONTAINER/PREFIX, "
                        "the blob folder of the images")
    return match.group("name"), prefix


def score_prefix(run_id):
    """Blob prefix of a score run's predictions folder (the append-row output)."""
    return f"orchestrate/scores/{run_id}/predictions"


def azure_run_model_uri(run_dir, run_id):
    """The datastore URI of an Azure training run's model.onnx (from runs/<id>/azure.json), so a
    model the workspace already holds is read in place, not downloaded and uploaded again; None
    when the run has no such record. A search's model is its best trial's, in that trial job's
    own folder (the sweep writes nothing under the search's): a UsageError saying what to run
    while search.json does not name that trial yet, before any cluster or job is made for it."""
    from .job import run_prefix

    state = RunFolder(run_dir).backend_state()
    if state is None:
        return None
    datastore = (state.get("datastore") or {}).get("name")
    if not datastore or state.get("kind") == "score":  # a score run has predictions, no model
        return None
    if state.get("search"):
        from .sweep_job import trial_prefix
        from .sweep_results import recorded_best

        _, trial_job = recorded_best(run_dir, run_id)
        prefix = trial_prefix(run_id, trial_job, "model")
    else:
        prefix = (state.get("outputs") or {}).get("model") or run_prefix(run_id, "model")
    return f"azureml://datastores/{datastore}/paths/{prefix.strip('/')}/model.onnx"


@dataclass
class ScorePlan:
    """One scoring job: what is scored with which model, where, in how many pieces."""
    run_id: str
    model: str                  # a local model.onnx (uploaded at submit) or an azureml:// URI
    source: str                 # NAME of az://NAME/PREFIX: a datastore, storage account or container
    prefix: str                 # the blob prefix in the datastore (resolve_data: after CONTAINER/)
    data: str                   # the az:// URI as given (normalized), which the rows' paths extend
    compute: catalogue.Resolved
    instances: int = 1
    processes: int = 1          # worker processes per node (max_concurrency_per_instance)
    mini_batch_size: int = DEFAULTS["mini_batch_size"]
    top_k: int = 1
    experiment: str = DEFAULT_EXPERIMENT
    datastore: str = None       # the resolved datastore; None (offline): `source` taken as its name
    compute_given: str = None   # the compute as asked (alias or size; None: the default): plans it again

    @property
    def name(self):
        return job_name(self.run_id)

    @property
    def datastore_name(self):
        return self.datastore or self.source

    @property
    def data_uri(self):
        return datastore_uri(self.datastore_name, self.prefix)

    @property
    def predictions_uri(self):
        return datastore_uri(self.datastore_name, score_prefix(self.run_id))

    @property
    def threads(self):
        """ONNX Runtime threads per process: the node's vCPUs shared among its processes."""
        return max(1, self.compute.size.vcpus // self.processes)

    def program_arguments(self):
        return (f"--model ${{{{inputs.model}}}} --data ${{{{inputs.data}}}} --top-k {self.top_k} "
                f"--threads {self.threads} --append_row_file_name {APPEND_ROW_FILE}")


def plan_score(model, data, *, run_id, compute=None, instances=None, processes=None, mini_batch_size=None,
               top_k=1, experiment=None):
    """A ScorePlan from the command's values; bad ones are UsageErrors before anything is built."""
    source, prefix = parse_data_uri(data)
    resolved = catalogue.resolve(compute or DEFAULTS["compute"])
    if top_k is not None and int(top_k) < 1:
        raise UsageError("--top-k must be at least 1")
    model = str(model)
    if not REMOTE_PATH.match(model):
        path = Path(model).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"model {model}: no such file")
        model = str(path)
    # one process per 2 vCPUs: decoding in one process overlaps inference in the other
    default_processes = max(1, resolved.size.vcpus // 2)
    return ScorePlan(run_id=run_id, model=model, source=source, prefix=prefix, data=f"az://{source}/{prefix}",
                     compute=resolved, instances=int(instances or DEFAULTS["instances"]), processes=int(processes or default_processes),
                     mini_batch_size=int(mini_batch_size or DEFAULTS["mini_batch_size"]), top_k=int(top_k or 1),
                     experiment=experiment or DEFAULT_EXPERIMENT, compute_given=compute)


def build_score_job(plan):
    """The real azure-ai-ml PipelineJob of `plan`: one step of type parallel, validated offline."""
    sdk = load_sdk()
    from azure.ai.ml.entities import BuildContext, Environment, PipelineJob
    from azure.ai.ml.parallel import RunFunction, parallel_run_function

    with sdk_validation_errors():
        step = parallel_run_function(
            name=STEP,
            display_name=f"score {plan.data}",
            description="orchestrate: batch scoring of images with an ONNX classifier",
            inputs={"data": sdk.Input(type="uri_folder", path=plan.data_uri, mode="ro_mount"),
                    # the SDK uploads a local file at submit (LocalUpload/<content hash>/)
                    "model": sdk.Input(type="uri_file", path=plan.model, mode="download")},
            outputs={"predictions": sdk.Output(type="uri_folder", mode="rw_mount", path=plan.predictions_uri)},
            input_data="${{inputs.data}}",
            instance_count=plan.instances,
            max_concurrency_per_instance=plan.processes,
            mini_batch_size=str(plan.mini_batch_size),
            retry_settings={"max_retries": MAX_RETRIES, "timeout": MINI_BATCH_TIMEOUT},
            error_threshold=ERROR_THRESHOLD,
            logging_level="INFO",
            environment_variables={"PYTHONUNBUFFERED": "1"},
            task=RunFunction(
                code=str(remote_scripts_dir()),
                entry_script=ENTRY_SCRIPT,
                program_arguments=plan.program_arguments(),
                append_row_to="${{outputs.predictions}}",
                # the training job's environment (anonymous: reused while infra/docker is unchanged)
                environment=Environment(build=BuildContext(path=str(docker_context_dir()),
                                                           dockerfile_path=AZUREML_DOCKERFILE)),
            ),
        )
        job = PipelineJob(
            name=plan.name, display_name=plan.run_id, experiment_name=plan.experiment,
            description=f"orchestrate score: {plan.data}",
            tags={"orchestrate.run_id": plan.run_id, "orchestrate.kind": "score"},
            compute=plan.compute.cluster, jobs={STEP: step},
        )
    errors = job_validation_errors(job)
    if errors is not None:
        raise UsageError(f"invalid Azure ML job: {errors}")
    return job


def export_score_yaml(job, path):
    """Write the pipeline job as YAML that `az ml job create -f` and `load_job` accept; a local
    model file is written as its plain path (which az ml uploads), not as `azureml:/path`, the
    asset reference azure-ai-ml would make of it (notes section 9, gotcha 2)."""
    with sdk_validation_errors():
        data = job._to_dict()
        model = job.jobs[STEP].inputs["model"]._data.path
        if not REMOTE_PATH.match(model):
            data["jobs"][STEP]["inputs"]["model"]["path"] = model
        write_yaml(path, data)


def describe_score(plan, settings=None):
    """Human-readable lines: what a submit of `plan` would create and run."""
    size = plan.compute.size
    ws = settings.public() if settings else {}
    model = plan.model if REMOTE_PATH.match(plan.model) else f"{plan.model} -> uploaded as the input 'model'"
    lookup = "" if plan.datastore else (
        f" (offline, {plan.source!r} is taken as a datastore name; a submit looks it up, and also accepts "
        "az://ACCOUNT/CONTAINER/PREFIX as `data upload` prints it, or a datastore's container)")
    lines = [
        f"workspace:   {ws.get('workspace_name', '(not configured)')}"
        + (f" (resource group {ws['resource_group']})" if ws.get("resource_group") else ""),
        f"compute:     {plan.compute.cluster} = {size.name} ({size.vcpus} vCPUs), created if missing",
        f"parallel:    {plan.instances} node(s) x {plan.processes} process(es), {plan.mini_batch_size} files per "
        f"mini-batch, {MAX_RETRIES} retries of {MINI_BATCH_TIMEOUT} s, ONNX Runtime with {plan.threads} thread(s) "
        "per process",
        f"data:        {plan.data_uri}{lookup}",
        f"model:       {model}",
        f"predictions: {plan.predictions_uri}{APPEND_ROW_FILE} (append_row), downloaded to --out",
        f"environment: built from {docker_context_dir()} ({AZUREML_DOCKERFILE}), as the training job's",
        f"code:        {remote_scripts_dir()} (entry script {ENTRY_SCRIPT})",
        f"experiment:  {plan.experiment}, pipeline job {plan.name} with the parallel step '{STEP}'",
    ]
    if plan.compute.notice:
        lines.insert(0, plan.compute.notice)
    return "\n".join(lines)


def _known_datastores(stores):
    return ", ".join(f"{d['name']} (account {d['account']}, container {d['container']})" for d in stores) or "none"


def resolve_data(seam, source, rest):
    """(datastore, blob prefix) of az://SOURCE/REST against the workspace's blob datastores:
    SOURCE a datastore's name (REST its prefix), else a storage account whose CONTAINER (REST's
    first segment) a datastore is on (`data upload`'s az://ACCOUNT/CONTAINER/PREFIX), else a
    datastore's container."""
    stores = seam.list_datastores()
    found = next((d for d in stores if d["name"] == source), None)
    if found:
        return found, rest
    container, _, prefix = rest.partition("/")
    found = next((d for d in stores if d["account"] == source and d["container"] == container), None)
    if found:
        if not prefix.strip("/"):
            raise UsageError(f"az://{source}/{container}: name the blob folder of the images in the container "
                            f"(az://{source}/{container}/PREFIX)")
        return found, prefix.strip("/")
    found = next((d for d in stores if d["container"] == source), None)
    if found:
        return found, rest
    on_account = [d for d in stores if d["account"] == source]
    hint = (f"no datastore is on container {container!r} of storage account {source!r}: register one for it "
            "(az ml datastore create) or upload to the container of one" if on_account else
            f"no datastore has that name or container, nor is on storage account {source!r}")
    raise UsageError(f"az://{source}/{rest}: {hint} (the blob datastores of workspace "
                    f"{seam.settings.workspace_name!r}: {_known_datastores(stores)})")


def is_packed_prefix(container, prefix):
    """True when the blob folder `prefix` holds a packed dataset: its index blob begins as
    packed_dataset.index_bytes writes one (a loose folder may hold an index.json of its own)."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    from remote_scripts.packed_dataset import INDEX_NAME, INDEX_START

    try:
        head = container.download_blob(f"{prefix}/{INDEX_NAME}", offset=0, length=len(INDEX_START)).readall()
    except ResourceNotFoundError:
        return False
    except HttpResponseError as exc:
        if exc.status_code == 416:  # an empty blob: no range to read
            return False
        raise
    return head == INDEX_START


def refuse_packed(plan):
    from remote_scripts.packed_dataset import INDEX_NAME, SHARDS_DIR, SHARD_SUFFIX

    return UsageError(f"{plan.data} is a packed dataset ({INDEX_NAME} and {SHARDS_DIR}/*{SHARD_SUFFIX}), which a "
                     "parallel job cannot score: it hands run() files, and these are shards; score a folder of "
                     "image files instead, e.g. one uploaded with `orchestrate data upload DATA --no-pack --to "
                     "az://ACCOUNT/CONTAINER/PREFIX`")


def prepare_score(seam, plan, on_event, approve):
    """What AzureBackend.prepare does for a score job: find the datastore of the data (refusing a
    packed prefix, whose job would get shards, not images), then create the cluster when missing.
    Returns the plan with its datastore resolved."""
    from .provision import ensure_compute
    from .seam import azure_errors

    with azure_errors():
        datastore, prefix = resolve_data(seam, plan.source, plan.prefix)
        plan = replace(plan, datastore=datastore["name"], prefix=prefix)
        if is_packed_prefix(seam.container_client(datastore), plan.prefix):
            raise refuse_packed(plan)
        build_score_job(plan)  # an invalid job fails before a cluster is created
        ensure_compute(seam, plan.compute, on_event=on_event, max_nodes=plan.instances, approve=approve)
    return plan, datastore


def write_predictions(files, plan, out):
    """The rows of a score job's downloaded output files (`files`) written to `out`.

    Rows are written in path order (the runtime appends mini-batches as they finish), with
    the az:// path of each image; a mini-batch tried again appends its rows again, so the last
    row of a path is the one kept; the rows of files that are not images by name (imaging's
    rule, as local scoring skips them) are dropped. Returns {rows, errors, skipped}.
    """
    from remote_scripts import imaging

    from ...inference.score import write_rows

    by_path = {}
    for path in append_row_files(files, plan):
        for row in read_rows(path):
            by_path[row["path"]] = row  # a path's last row: that of its mini-batch's last try
    rows, skipped = [], 0
    for name, row in by_path.items():
        if not imaging.is_image_name(PurePosixPath(name).name):
            skipped += 1
            continue
        rows.append(dict(row, path=f"{plan.data}/{name}"))
    if not rows:
        raise UsageError(f"the job wrote no predictions for images under {plan.data}"
                         + (f" ({skipped} file(s) there are not images)" if skipped else ""))
    rows.sort(key=lambda r: r["path"])
    written, errors = write_rows(out, rows)
    return {"rows": written, "errors": errors, "skipped": skipped}


def append_row_files(files, plan):
    """The append-row file(s) among a score run's downloaded outputs: ours by name, else the
    runtime's documented default name; nothing else in the folder is read."""
    for name in (APPEND_ROW_FILE, DEFAULT_APPEND_ROW_FILE):
        found = [f for f in files if f.name == name]
        if found:
            return found
    present = ", ".join(sorted({f.name for f in files})[:5]) or "nothing"
    raise UsageError(f"the job wrote no {APPEND_ROW_FILE} (nor {DEFAULT_APPEND_ROW_FILE}) in {plan.predictions_uri} "
                    f"(found: {present})")


def read_rows(path):
    """Each prediction row of an append-row file, in order; a line that is not one
    (a JSON object with a string `path`) is a UsageError naming the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): not a predictions file") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            shown = line if len(line) <= 80 else line[:77] + "..."
            raise UsageError(f"{path}, line {number}: not a prediction row (a JSON object with a path): {shown!r}")
        yield row


def plan_params(plan):
    """A plan as JSON (JobSpec.score, the ledger's params.score); plan_from_params reads it back."""
    return {"model": plan.model, "data": plan.data, "datastore": plan.datastore, "prefix": plan.prefix,
            "compute": plan.compute.cluster, "compute_given": plan.compute_given, "instances": plan.instances,
            "processes": plan.processes, "mini_batch_size": plan.mini_batch_size, "top_k": plan.top_k}


def plan_from_params(run_id, params):
    """The ScorePlan that plan_params(plan) recorded."""
    plan = plan_score(params["model"], params["data"], run_id=run_id, compute=params.get("compute_given"),
                      instances=params["instances"], processes=params["processes"],
                      mini_batch_size=params["mini_batch_size"], top_k=params["top_k"])
    return replace(plan, datastore=params.get("datastore"), prefix=params.get("prefix") or plan.prefix)
