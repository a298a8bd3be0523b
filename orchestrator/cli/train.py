"""`orchestrate train`: validate the dataset, start the job on a backend, follow it."""
import sys
from pathlib import Path

import click

from ..errors import UserError
from .azure_options import workspace_options
from .training_options import pop_training_values, training_options

BACKEND_CHOICES = ("auto", "local", "docker", "azure")


def validate_dataset(data, values):
    """Reject unusable data here, in one line, before any job starts or any byte is uploaded.

    Runs the job's own scan, sample and split (no image is decoded), so the checks and their
    messages are the job's. A `--labels` table is handed to the job as its path inside DATA
    (the only folder a container or an Azure ML job sees), so `values` is updated with it.
    """
    from remote_scripts import folder_dataset as fd
    from remote_scripts.options import BY_DEST

    def given(name):
        return BY_DEST[name].default if values[name] is None else values[name]

    val, test, labels = given("val_fraction"), given("test_fraction"), given("labels")
    try:
        found = _packed_scan(data)  # its index holds the labels: the job does not read --labels again
        if found is None:
            labels = fd.label_source_for_job(str(data), labels)
            if values["labels"] is not None:
                values["labels"] = labels
            found = fd.scan(str(data), labels=labels)
        samples = fd.sample_fraction(found.samples, given("sample_fraction"), given("seed"), val, test)
        fd.stratified_split(samples, found.classes, val, test, seed=0)
    except fd.DatasetError as exc:
        raise UserError(str(exc)) from None


def _packed_scan(data):
    """The scan of a packed dataset's index (orchestrate data pack), None for a loose folder."""
    from remote_scripts import packed_dataset

    return packed_dataset.PackedDataset(str(data)).scan() if packed_dataset.is_packed(str(data)) else None


# Options that only an Azure ML job has: any of them means the azure backend (a user who names a
# compute cluster wants the cloud, not a silent run on the laptop).
AZURE_ONLY = {"compute": "--compute", "nodes": "--nodes", "low_priority": "--low-priority",
              "experiment": "--experiment", "max_hours": "--max-hours", "weights_upload": "--weights-upload",
              "no_pack": "--no-pack", "max_concurrent_trials": "--max-concurrent-trials",
              "early_termination": "--early-termination",
              "register": "--register", "subscription_id": "--subscription-id",
              "resource_group": "--resource-group", "workspace_name": "--workspace", "profile": "--profile"}
WORKSPACE_FIELDS = ("subscription_id", "resource_group", "workspace_name")


def choose_backend(name, options):
    """(backend name, the line saying which workspace an Azure run uses, or None).

    auto: azure when an Azure-only option is given or a workspace is configured, else docker when
    an engine answers, else local. Azure without a workspace is a one-line error naming
    `orchestrate init` and the variables, before anything is created or uploaded.
    """
    from ..backends import BACKENDS

    azure_flags = [flag for key, flag in AZURE_ONLY.items() if options.get(key) is not None]
    if azure_flags and name not in ("auto", "azure"):
        raise UserError(f"{', '.join(azure_flags)}: Azure ML option(s), which --backend {name} has not; "
                        "drop them or use --backend azure")
    if azure_flags:
        name = "azure"
    if name in ("auto", "azure") and "azure" in BACKENDS:
        from ..backends.azure.settings import load_settings

        settings = load_settings({f: options.get(f) for f in WORKSPACE_FIELDS}, profile=options.get("profile"))
        if all(getattr(settings, f) for f in WORKSPACE_FIELDS):
            sources = sorted({settings.sources[f] for f in WORKSPACE_FIELDS})
            return "azure", (f"Azure ML workspace {settings.workspace_name} (resource group "
                             f"{settings.resource_group}, subscription {settings.subscription_id}) from "
                             f"{', '.join(sources)}")
        if name == "azure":
            settings.require(*WORKSPACE_FIELDS)  # one line naming each missing setting and `orchestrate init`
    if name != "auto":
        return name, None
    if "docker" in BACKENDS:
        from ..backends.docker import engine_available

        if engine_available():
            return "docker", None
    return "local", None


def fetch_imagenet_weights(train_args):
    """Put the ImageNet weights the job will load into this machine's torch hub cache, with a
    progress bar on stderr: a container has no network and a workspace may have no outbound
    access, so the client fetches them (orchestrator.weights). Nothing to do for --weights none|PATH."""
    from rich.progress import BarColumn, DownloadColumn, TextColumn, TransferSpeedColumn

    from ..render import console_for, progress_bars
    from ..weights import ensure_imagenet_weights, wanted_imagenet_arch

    arch = wanted_imagenet_arch(train_args)
    if arch is None:
        return
    with progress_bars(console_for(stderr=True), TextColumn(f"{arch} ImageNet weights"), BarColumn(),
                       DownloadColumn(), TransferSpeedColumn()) as bar:
        task = bar.add_task(f"{arch} ImageNet weights download", total=None, unit="bytes")
        ensure_imagenet_weights(arch, lambda done, total: bar.update(task, completed=done, total=total))


def dry_run_azure(backend, spec, export_path):
    """Show (and optionally export) the Azure ML job without any cloud call or credential."""
    if backend not in ("auto", "azure"):
        raise UserError("--dry-run and --export describe an Azure ML job: use them with --backend azure")
    from ..backends.azure.backend import describe_plan, export_job_yaml
    from ..backends.azure.job import check_export_path

    if export_path:
        check_export_path(export_path)
    click.echo(describe_plan(spec))
    if export_path:
        if spec.backend_options.get("weights_upload"):  # the YAML names the file az ml job create uploads
            fetch_imagenet_weights(spec.train_args)
        export_job_yaml(spec, export_path)
        click.echo(f"wrote {export_path} (submit it with: az ml job create -f {export_path})")


@click.command()
@click.argument("data", required=False)  # a folder, or an s3:// or az:// URI (which a Path would mangle)
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
              help="Where the job runs. auto: azure when a workspace is configured, else docker when an engine "
                   "answers, else local.")
@training_options
@click.option("--search", is_flag=True,
              help="Try several configurations, cheapest first (linear mode over learning rates and weight "
                   "decays on one featurization, then head mode, then full fine-tuning), each a run of its own; "
                   "the best one's model is this run's. --time-budget is then the whole search's.")
@click.option("--trials", "max_trials", type=click.IntRange(min=1), help="With --search: at most this many trials.")
@click.option("--space", "space_file", type=click.Path(dir_okay=False, path_type=Path),
              help="With --search: a YAML file of the configurations to try instead of the default space "
                   "(a list of groups, option: value or [values]; see README).")
@click.option("--name", help="Run name (the run id starts with it). [default: the dataset folder name]")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Where run folders are created.")
@click.option("--base-image", help="docker: base image of the training image.")
@click.option("--gpus", help="local, docker: all, N or none; one training process per GPU when more than one. "
                             "[default: all (docker: when a GPU runtime is present)]")
@click.option("--nproc", type=click.IntRange(min=1),
              help="local, docker: training processes (DDP; on CPUs too). [default: one per GPU, at least one]")
@click.option("--cpus", type=click.FloatRange(min=0, min_open=True), help="docker: CPU limit.")
@click.option("--memory", help="docker: memory limit, e.g. 8g.")
@click.option("--compute", help="azure: compute alias or VM size (see 'orchestrate compute sizes'). [default: gpu-t4]")
@click.option("--nodes", type=click.IntRange(min=1), help="azure: nodes; one process per GPU on each. [default: 1]")
@click.option("--low-priority", is_flag=True, default=None, help="azure: low-priority nodes (cheaper, preemptible; "
              "the job resumes from its checkpoint).")
@click.option("--experiment", help="azure: experiment name. [default: orchestrate]")
@click.option("--max-hours", type=click.FloatRange(min=0, min_open=True),
              help="azure: the job's timeout; the service cancels it after this many hours. [default: 24]")
@click.option("--weights-upload", is_flag=True, default=None,
              help="azure: send the ImageNet weights with the job, for workspaces without outbound access "
                   "(a --weights file is always sent).")
@click.option("--no-pack", is_flag=True, default=None,
              help="azure: upload the image files one blob each (mounted by the job) instead of packed shards "
                   "(downloaded by the job; see `orchestrate data pack`).")
@click.option("--max-concurrent-trials", type=click.IntRange(min=1),
              help="azure, with --search: trials running at once, one node each. [default: up to 4]")
@click.option("--early-termination", type=click.Choice(("median", "bandit", "none")),
              help="azure, with --search: the sweep's policy for trials that fall behind (median: the rule the "
                   "local search applies too). [default: median]")
@click.option("--register", is_flag=True, default=None,
              help="azure: when the run completes, register its ONNX model (labels, test metrics as tags) and "
                   "its dataset as Azure ML assets (later: orchestrate register RUN).")
@click.option("--yes", is_flag=True, help="azure: create a missing compute cluster without asking (asked only "
                                            "on a terminal, after its plan: size, price, quota).")
@workspace_options(location=False, prefix="azure: ")
@click.option("--dry-run", is_flag=True, help="azure: print what would be created and run; no cloud calls.")
@click.option("--export", "export_path", type=click.Path(dir_okay=False, path_type=Path),
              help="azure, with --dry-run: write the job as Azure ML YAML (az ml job create -f FILE).")
@click.option("--resume", "resume_run", metavar="RUN",
              help="Continue a killed, canceled or failed local or docker run in its own folder from its last "
                   "checkpoint, with its own data and settings (no DATA).")
@click.option("--detach", is_flag=True, help="Start the job and return at once with its run id.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the result.")
@click.option("--verbose", "-v", is_flag=True, help="Also show the job's ordinary log lines.")
def train(data, backend, name, runs_dir, dry_run, export_path, detach, as_json, verbose, yes, search, max_trials,
          space_file, **kwargs):
    """Train a classifier on DATA, a folder with one sub-folder of images per label (or such a
    dataset at s3://BUCKET/PREFIX or az://ACCOUNT/CONTAINER/PREFIX, packed first into the cache).

    \b
    Examples:
      orchestrate train ./EuroSAT --backend local --epochs 5
      orchestrate train ./flowers --backend docker --mode full --gpus all
      orchestrate train ./digits --backend local --weights none --image-size 64 --json
      orchestrate train ./EuroSAT --compute gpu-nc12 --epochs 10
      orchestrate train ./EuroSAT --backend azure --dry-run --export job.yml
      orchestrate train ./EuroSAT --search --time-budget 600
      orchestrate train --resume digits-20261123-101500-ab12
    """
    resume_run = kwargs.pop("resume_run")
    if resume_run:
        from .common import resume_and_follow

        resume_and_follow(click.get_current_context(), resume_run, detach, as_json, verbose)
        return
    if data is None:
        raise UserError("DATA is missing: the dataset folder to train on (or --resume RUN to continue a run)")
    from remote_scripts.options import problems, to_arguments

    from .. import runner
    from ..backends import get_backend
    from ..dataset.sources import is_uri, open_source
    from ..ledger import Ledger
    from .common import detach_or_follow
    from .data import pack_source

    values = pop_training_values(kwargs)
    found = problems(values)  # the rules across options; click checked each value
    if found:
        raise UserError("; ".join(found))
    if is_uri(data):  # trained on as its packed copy in the cache folder, on every backend
        name = name or open_source(data).name
        data = pack_source(data, values["labels"])
    data = Path(data)
    validate_dataset(data, values)
    backend_options = {k: v for k, v in kwargs.items() if v is not None}
    trials = search_trials(search, values, space_file, max_trials, backend_options)
    name = name or data.resolve().name
    spec = runner.make_spec(data, to_arguments(values), backend_options, name, runs_dir, trials=trials)
    if dry_run or export_path:
        return dry_run_azure(backend, spec, export_path)
    chosen, workspace_line = choose_backend(backend, spec.backend_options)
    if workspace_line:
        click.echo(workspace_line, err=True)
    engine = get_backend(chosen)
    if engine.name == "azure" and not yes and sys.stdin.isatty():  # a script or a pipe has nobody to answer
        engine.approve = lambda: click.confirm("create this compute cluster?", abort=True)
    if spec.backend_options.get("register") and detach:
        raise UserError("--register waits for the run to complete: without --detach, or later with "
                        "`orchestrate register RUN`")
    if engine.name in ("local", "docker") or spec.backend_options.get("weights_upload"):
        from ..weights import wanted_imagenet_arch

        for train_args in {wanted_imagenet_arch(args): args for args in job_arguments(spec)}.values():  # one per arch
            fetch_imagenet_weights(train_args)
    run = runner.start(engine, Ledger(), spec, name)
    outcome = detach_or_follow(engine, run, detach, as_json, verbose, started="submitted",
                               banner=f"run {run.run_id} on {engine.name} backend; folder {run.run_dir}")
    if spec.backend_options.get("register"):
        register_completed(run.run_id, outcome, as_json)


def search_trials(search, values, space_file, max_trials, backend_options):
    """The trials of `train --search` (orchestrator.search.plan_trials), None without --search."""
    if not search:
        if space_file is not None or max_trials is not None:
            raise UserError("--trials and --space choose the trials of a search: add --search")
        if "max_concurrent_trials" in backend_options or "early_termination" in backend_options:
            raise UserError("--max-concurrent-trials and --early-termination set up a search's sweep job: add --search")
        return None
    if backend_options.get("nproc", 1) > 1:
        raise UserError("--search runs its trials one after another in one process: drop --nproc")
    if values["val_fraction"] == 0:
        raise UserError("--search ranks its trials by validation accuracy: --val-fraction must be above 0")
    from ..search import plan_trials

    return plan_trials(values, space_file, max_trials)


def job_arguments(spec):
    """The train.py arguments of each configuration `spec` runs: its own, or each trial's."""
    from remote_scripts.options import to_arguments

    if spec.trials is None:
        return [spec.train_args]
    return [spec.train_args + to_arguments(trial) for trial in spec.trials]


def register_completed(run_id, outcome, as_json):
    """`train --register`: the completed run's model and dataset as Azure ML assets."""
    from ..backends.base import COMPLETED
    from .register import register_and_report

    if outcome is not None and outcome.status == COMPLETED:
        register_and_report(run_id, err=as_json)  # --json: stdout keeps its one JSON object
