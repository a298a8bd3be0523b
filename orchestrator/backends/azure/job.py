"""Build the Azure ML command job for one run (the job contract, DESIGN.md 4.1, on Azure ML).

Why everything is derived from the run id: the dataset, model and checkpoint paths on the default
datastore, and the job name, are the same whether computed at submit time, at `--dry-run`, or later
by `orchestrate download` in another process -- no lookup needed. Naming the job after the run
also makes a retried submit idempotent, and the checkpoint output is a fixed rw_mount path, so a
low-priority node that is preempted and restarted resumes from it instead of starting over.
"""
import hashlib
import re
import shlex
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from remote_scripts.options import given_value

from ...errors import UsageError
from ...paths import docker_context_dir, remote_scripts_dir
from ...secrets import redact
from ...weights import cached_weights_path
from . import catalogue
from .seam import job_validation_errors, job_yaml_data, load_sdk, write_yaml

DEFAULT_DATASTORE = "workspaceblobstore"  # the name of every workspace's default blob datastore
DEFAULT_COMPUTE = "gpu-t4"
DEFAULT_EXPERIMENT = "orchestrate"
DEFAULT_MAX_HOURS = 24  # the job's timeout: a hung job must not bill without end
# Azure ML builds the image from infra/docker with this Dockerfile (BuildContext takes no build
# arguments): a Microsoft Container Registry base with mlflow and azureml-mlflow, no Docker Hub pull
AZUREML_DOCKERFILE = "azureml.Dockerfile"
SHM_SIZE = "16g"  # DataLoader workers pass batches through /dev/shm; Docker's 64 MB default fails
# --cache-dir is relative to the job's working folder, which Azure ML keeps on the node's local
# temporary disk (/mnt): the decoded images are read every epoch, so not from a network mount.
COMMAND = ("python train.py --data ${{inputs.data}} --output ${{outputs.model}} "
           "--checkpoint-dir ${{outputs.checkpoints}} --cache-dir image-cache")
WEIGHTS_BINDING = "--weights ${{inputs.weights}}"  # a weights file sent along as the job input `weights`
REMOTE_PATH = re.compile(r"^(azureml|https?|wasbs?|file):")  # what azure-ai-ml does not take for a local path


def dataset_prefix(data_dir, packed=False):
    """Blob prefix of an uploaded dataset: one per local folder (its name and a hash of its path),
    so uploading the same folder again sends only its changes, and two folders that share a name
    (./a/train, ./b/train) never overwrite each other. Packed and loose copies have prefixes of
    their own: the packed one is downloaded whole by the job, and must hold nothing else."""
    path = Path(data_dir).resolve()
    kind = "packed" if packed else "datasets"
    return f"orchestrate/{kind}/{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def run_prefix(run_id, output):
    """Blob prefix of one output (model, checkpoints) of a run."""
    return f"orchestrate/runs/{run_id}/{output}"


def datastore_uri(datastore, prefix):
    """The uri_folder URI of a blob prefix on a datastore."""
    return f"azureml://datastores/{datastore}/paths/{prefix}/"


def job_name(run_id):
    """Azure ML job names allow letters, digits, '-' and '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", run_id)


@dataclass
class JobPlan:
    """What will run where: everything `build_job`, `describe` and the backend need."""
    run_id: str
    data_dir: Path
    train_args: list
    compute: catalogue.Resolved
    nodes: int = 1
    low_priority: bool = False
    experiment: str = DEFAULT_EXPERIMENT
    datastore: str = DEFAULT_DATASTORE
    weights_file: Path = None  # a file of this machine the job receives as its input `weights`
    max_hours: float = DEFAULT_MAX_HOURS
    packed: bool = False  # the dataset goes as shards (downloaded by the node), not as files (mounted)

    @property
    def timeout_seconds(self):
        return int(round(self.max_hours * 3600))

    @property
    def name(self):
        return job_name(self.run_id)

    @property
    def processes_per_node(self):
        """One process per GPU (torchrun-style); one on a CPU size."""
        return max(self.compute.size.gpus, 1)

    @property
    def data_uri(self):
        return datastore_uri(self.datastore, dataset_prefix(self.data_dir, self.packed))

    def command(self, script="train.py", script_args=(), bindings=""):
        """The job's command line; user arguments may not smuggle in `${{...}}` bindings, which
        Azure ML would substitute (and which azure-ai-ml does not check offline).

        `script`, `script_args` and `bindings`: a sweep trial runs search.py with its --trials
        (plain arguments, quoted like the others) and its `--trial ${{inputs.trial}}` binding."""
        if any("${{" in arg for arg in [*self.train_args, *script_args]):
            raise UsageError("training arguments must not contain '${{' (Azure ML bindings)")
        fixed = COMMAND.replace("python train.py", f"python {script}", 1)
        if self.weights_file:
            fixed = f"{fixed} {WEIGHTS_BINDING}"
        if script_args:
            fixed = f"{fixed} {shlex.join(script_args)}"
        if bindings:
            fixed = f"{fixed} {bindings}"
        return " ".join([fixed, shlex.join(self.train_args)]).strip()


def split_weights_input(train_args, upload):
    """(train args, weights file or None): the local file the job receives as its input `weights`,
    its --weights flag then taken out of the train args (the command binds it to the input).

    A --weights PATH is a file of this machine, which the node does not have: always an input.
    `imagenet` with --weights-upload (workspaces without outbound access): the published file in
    this machine's torch hub cache, which `orchestrate train` fills before it submits.
    """
    weights = given_value(train_args, "--weights")
    if weights == "none":
        if upload:
            raise UsageError("--weights-upload sends the ImageNet weights or a --weights file: "
                            "there is nothing to send with --weights none")
        return train_args, None
    if weights == "imagenet":
        if not upload:
            return train_args, None  # the node downloads them itself
        path = cached_weights_path(given_value(train_args, "--arch"))
    else:
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"--weights {weights}: no such file (it is uploaded with the job)")
    kept = []
    pairs = iter(train_args)
    for arg in pairs:
        if arg == "--weights":
            next(pairs, None)
        else:
            kept.append(arg)
    return kept, path


def plan_from_spec(spec, datastore=DEFAULT_DATASTORE):
    """A JobPlan from a JobSpec's backend_options (compute, nodes, low_priority, experiment,
    weights_upload, no_pack)."""
    options = spec.backend_options
    nodes = int(options["nodes"]) if options.get("nodes") is not None else 1
    if nodes < 1:
        raise UsageError("--nodes must be at least 1")
    max_hours = float(options["max_hours"]) if options.get("max_hours") is not None else DEFAULT_MAX_HOURS
    if max_hours <= 0:
        raise UsageError("--max-hours must be more than 0")
    train_args, weights_file = split_weights_input(list(spec.train_args), bool(options.get("weights_upload")))
    return JobPlan(run_id=spec.run_id, data_dir=Path(spec.data), train_args=train_args,
                   compute=catalogue.resolve(options.get("compute") or DEFAULT_COMPUTE),
                   nodes=nodes, low_priority=bool(options.get("low_priority")),
                   experiment=options.get("experiment") or DEFAULT_EXPERIMENT, datastore=datastore,
                   weights_file=weights_file, max_hours=max_hours, packed=not options.get("no_pack"))


def build_job(plan):
    """The real azure-ai-ml Command job for `plan`, validated offline."""
    sdk = load_sdk()
    distributed = plan.nodes > 1 or plan.processes_per_node > 1
    return command_job(plan, plan.command(), lambda output: run_prefix(plan.run_id, output),
                       distribution=(sdk.PyTorchDistribution(process_count_per_instance=plan.processes_per_node)
                                     if distributed else None))


def command_job(plan, command, output_prefix, distribution=None, extra_inputs=None, timeout=None):
    """The Command of `plan` running `command`, its outputs `model` and `checkpoints` at the
    datastore prefixes `output_prefix(name)` gives; validated offline. Shared by the training job
    (build_job) and a sweep's trial (sweep_job.build_sweep), so the two cannot drift apart:
    code upload, environment, data and weights inputs, shm size, environment variables."""
    sdk = load_sdk()
    from azure.ai.ml.entities import BuildContext, Environment

    def folder(output):
        return sdk.Output(type="uri_folder", mode="rw_mount", path=datastore_uri(plan.datastore, output_prefix(output)))

    # A packed dataset is a few large shards: `download` copies them to the node's disk, one request
    # per shard; loose files stay mounted (downloading 27,000 blobs one by one is the slow path).
    inputs = {"data": sdk.Input(type="uri_folder", path=plan.data_uri, mode="download" if plan.packed else "ro_mount")}
    if plan.weights_file:  # the SDK uploads a local path at submit (LocalUpload/<content hash>/)
        inputs["weights"] = sdk.Input(type="uri_file", path=str(plan.weights_file), mode="download")
    inputs.update(extra_inputs or {})
    with sdk_validation_errors():
        job = sdk.command(
            name=plan.name,
            display_name=plan.run_id,
            experiment_name=plan.experiment,
            description="orchestrate: image classifier training (transfer learning, ONNX output)",
            tags={"orchestrate.run_id": plan.run_id},
            code=str(remote_scripts_dir()),
            command=command,
            # anonymous: its version is the build context's hash, so unchanged images are reused
            environment=Environment(build=BuildContext(path=str(docker_context_dir()),
                                                       dockerfile_path=AZUREML_DOCKERFILE)),
            inputs=inputs,
            outputs={"model": folder("model"), "checkpoints": folder("checkpoints")},
            compute=plan.compute.cluster,
            instance_count=plan.nodes,
            distribution=distribution,
            shm_size=SHM_SIZE,
            # limits.timeout: the service cancels the job after it
            timeout=plan.timeout_seconds if timeout is None else timeout,
            environment_variables={"PYTHONUNBUFFERED": "1"},
        )
    errors = job_validation_errors(job)
    if errors is not None:
        raise UsageError(f"invalid Azure ML job: {errors}")
    return job


@contextmanager
def sdk_validation_errors():
    """azure.ai.ml checks entities and paths offline and raises ValidationException, whose message
    can run over several lines of SDK detail: the user gets its first line as a UsageError."""
    from azure.ai.ml.exceptions import ValidationException

    try:
        yield
    except ValidationException as exc:
        lines = str(exc).strip().splitlines()
        raise UsageError(redact(f"invalid Azure ML job: {lines[0] if lines else type(exc).__name__}")) from None


def check_export_path(path):
    """Raise UsageError unless `path` can be a new file: asked before any job is built, so a typo
    in --export is reported as such, not as whatever the SDK trips over first."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: no such folder")
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder")
    if path.exists():
        raise UsageError(f"{path} already exists; choose another --export path")


def export_yaml(job, path):
    """Write `job` as Azure ML job YAML that `az ml job create -f` and `load_job` accept.

    `Command.dump()` writes the node format that load_job rejects; the CommandJob form reloads
    (notes section 9, gotcha 1; seam.job_yaml_data). A local input path (the uploaded weights
    file) would be written as `azureml:/local/path`, an asset reference (gotcha 2): it is written
    as the plain path, which az ml job create uploads. The caller checks `path` first
    (check_export_path).
    """
    with sdk_validation_errors():
        data, input_paths = job_yaml_data(job)
        for name, input_path in input_paths.items():
            if not REMOTE_PATH.match(input_path):
                data["inputs"][name]["path"] = input_path
        write_yaml(path, data)


def describe(plan, settings=None, replace=None):
    """Human-readable lines: what a submit of `plan` would create and run.

    `replace`: {section: [lines]} put in place of the sections "nodes", "timeout", "outputs" or
    "command" (a sweep describes its trials, limits and trial command there); extra sections
    named in it that the job has not are added before "experiment"."""
    size = plan.compute.size
    ws = settings.public() if settings else {}
    tier = "low-priority" if plan.low_priority else "dedicated"
    gpus = f"{size.gpus}x {size.gpu_type}" if size.gpus else "no GPU"
    weights = []
    if plan.weights_file:
        fetched = "" if plan.weights_file.is_file() else " (downloaded there first)"
        weights.append(f"weights:     {plan.weights_file}{fetched} -> uploaded as the input 'weights'")
    sections = [
        ("workspace", [f"workspace:   {ws.get('workspace_name', '(not configured)')}"
                       + (f" (resource group {ws['resource_group']})" if ws.get("resource_group") else "")]),
        ("compute", [f"compute:     {plan.compute.cluster} = {size.name} ({gpus}, {size.vcpus} vCPUs), {tier}, "
                     f"scales to 0 when idle; created if missing"]),
        ("nodes", [f"nodes:       {plan.nodes} x {plan.processes_per_node} process(es)"
                   + (" (PyTorch distribution)" if plan.nodes > 1 or plan.processes_per_node > 1 else "")]),
        ("environment", [f"environment: built from {docker_context_dir()} ({AZUREML_DOCKERFILE}: Microsoft "
                         "Container Registry base with MLflow)"]),
        ("timeout", [f"timeout:     {plan.max_hours:g} h (--max-hours), then the service cancels the job"]),
        ("code", [f"code:        {remote_scripts_dir()}"]),
        ("dataset", [f"dataset:     {plan.data_dir} -> {plan.data_uri}"
                     + (" (packed shards, downloaded to the node)" if plan.packed else " (files, mounted)")]),
        ("weights", weights),
        ("outputs", [f"outputs:     model -> {datastore_uri(plan.datastore, run_prefix(plan.run_id, 'model'))}",
                     f"             checkpoints -> "
                     f"{datastore_uri(plan.datastore, run_prefix(plan.run_id, 'checkpoints'))}"]),
        ("experiment", [f"experiment:  {plan.experiment}, job {plan.name}"]),
        ("command", None),  # built last: a sweep replaces it (its trial command), so it is not built twice
    ]
    replace = dict(replace or {})
    known = {key for key, _ in sections}
    lines = []
    for key, body in sections:
        if key == "experiment":
            for extra in [k for k in replace if k not in known]:
                lines.extend(replace[extra])
        if key in replace:
            body = replace[key]
        elif body is None:
            body = [f"command:     {plan.command()}"]
        lines.extend(body)
    if plan.compute.notice:
        lines.insert(0, plan.compute.notice)
    return "\n".join(lines)
