"""`orchestrate train`: parse the options, call orchestrator.train, follow the run on the terminal."""
import sys
from pathlib import Path

import click

from ..errors import UsageError
from ..training import TRIALS, backend_choices
from .azure_options import workspace_options
from .client_events import ClientEvents
from .common import detach_or_follow
from .register import print_assets
from .training_options import backend_options, click_option, training_options


@click.command()
@click.argument("data", required=False)  # a folder, or an s3:// or az:// URI (which a Path would mangle)
@click.option("--backend", type=click.Choice(backend_choices()), default="auto", show_default=True,
              help="Where the job runs. auto: the backend of an option only it takes (--compute: azure, "
                   "--cpus: docker), else azure when a workspace is configured, else docker when an engine "
                   "answers, else local.")
@training_options
@click.option("--search", is_flag=True,
              help="Try several configurations, cheapest first (linear mode over learning rates and weight "
                   "decays on one featurization, then head mode, then full fine-tuning), each a run of its own; "
                   "the best one's model is this run's. --time-budget is then the whole search's.")
@click_option(TRIALS)
@click.option("--space", "space_file", type=click.Path(dir_okay=False, path_type=Path),
              help="With --search: a YAML file of the configurations to try instead of the default space "
                   "(a list of groups, option: value or [values]; see README).")
@click.option("--name", help="Run name (the run id starts with it). [default: the dataset folder name]")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Where run folders are created.")
@click.option("--quantize", type=click.Choice(["int8"]),
              help="Once the run completes, write its int8 model on this machine, from the dataset it trained on "
                   "(orchestrate quantize: kept only if it agrees with the fp32 model on the test split).")
@backend_options
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
def train(data, backend, name, runs_dir, dry_run, export_path, detach, as_json, verbose, yes, search, trials,
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
        return resume_and_follow(click.get_current_context(), resume_run, detach, as_json, verbose)
    if data is None:
        raise UsageError("DATA is missing: the dataset folder to train on (or --resume RUN to continue a run)")
    if kwargs.get("register") and detach:
        raise UsageError("--register waits for the run to complete: without --detach, or later with "
                         "`orchestrate register RUN`")
    if kwargs.get("quantize") and detach:
        raise UsageError("--quantize quantizes once the run completes: without --detach, or later with "
                         "`orchestrate quantize RUN`")
    from ..training import train as start_training

    approve = None
    if not yes and sys.stdin.isatty():  # a script or a pipe has nobody to answer
        approve = lambda question: click.confirm(question, abort=True)  # noqa: E731
    with ClientEvents() as on_event:
        started = start_training(data, backend=backend, name=name, runs_dir=runs_dir, search=search,
                                 trials=trials, space=space_file, dry_run=dry_run, export=export_path,
                                 approve=approve, on_event=on_event, **kwargs)
    if dry_run or export_path:
        click.echo(started.description)
        if export_path:
            click.echo(f"wrote {export_path} (submit it with: az ml job create -f {export_path})")
        return
    with ClientEvents() as on_event:
        if detach_or_follow(started, detach, as_json, verbose, started="submitted",
                            banner=f"run {started.id} on {started.backend} backend; folder {started.folder}"):
            if started.registered:
                print_assets(started.registered, err=as_json)  # --json: stdout keeps its one JSON object
            if started.quantized:
                click.echo(started.quantized.message, err=as_json)


RESUME_KEEPS = ("resume_run", "detach", "as_json", "verbose")  # what may accompany `train --resume RUN`


def resume_and_follow(ctx, run_id, detach=False, as_json=False, verbose=False):
    """`orchestrate train --resume RUN`: start the run again in its folder, then follow it as train does.

    The run continues with what its spec.json recorded (data, split, hyperparameters, backend):
    the checkpoint would not match other settings, so any other argument given is refused.
    """
    from click.core import ParameterSource

    from ..runs import get

    given = [param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
             for param in ctx.command.params if param.name not in RESUME_KEEPS
             and ctx.get_parameter_source(param.name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]
    if given:
        raise UsageError(f"--resume continues run {run_id} with its recorded data and settings: "
                         f"drop {', '.join(given)}")
    run = get(run_id)
    with ClientEvents() as on_event:
        run.resume(on_event=on_event)
    detach_or_follow(run, detach, as_json, verbose, started="resumed",
                     banner=f"run {run.id} resumed on {run.backend} backend (attempt {run.attempts}); "
                            f"folder {run.folder}")
