"""`orchestrate score MODEL_OR_RUN az://DATASTORE/PREFIX` (or az://ACCOUNT/CONTAINER/PREFIX, as
`orchestrate data upload` prints it): the Azure ML branch of `score`.

The job itself is orchestrator.backends.azure.score_job's; this module only turns the command's
values into its plan, shows or exports it (--dry-run, --export: no cloud call), or runs it and
renders the outcome. Kept apart from cli/score.py so the local command reads on its own.
"""
import sys
from pathlib import Path, PurePosixPath

import click

from ..errors import UserError
from .azure_options import workspace_flags
from .common import print_json

# options only a parallel job has, with their flags: any of them on a local folder is a mistake
AZURE_ONLY = {"compute": "--compute", "instances": "--instances", "processes": "--processes-per-node",
              "mini_batch_size": "--mini-batch-size",
              "dry_run": "--dry-run", "export_path": "--export", "yes": "--yes", "subscription_id": "--subscription-id",
              "resource_group": "--resource-group", "workspace_name": "--workspace", "profile": "--profile"}


def pop_azure_values(kwargs):
    """Take the Azure-only values out of the command's kwargs: {name: value} of those given."""
    return {name: kwargs.pop(name) for name in AZURE_ONLY if name in kwargs}


def refuse_azure_values(values):
    """A local DATA with Azure-only options is a UserError naming them."""
    given = [AZURE_ONLY[name] for name, value in values.items() if value not in (None, False)]
    if given:
        raise UserError(f"{', '.join(given)}: Azure ML option(s), for DATA given as az://DATASTORE/PREFIX or "
                        "az://ACCOUNT/CONTAINER/PREFIX; "
                        "drop them to score a local folder")


def azure_model(model_or_run):
    """The model of a score job: an Azure run's model.onnx where the workspace already holds it
    (read in place; a search's is its best trial's, refused while search.json does not name it),
    else the local file that `predict` would use (uploaded with the job), loaded here first so
    that a file which is no orchestrate model fails now, not on every node."""
    from ..backends.azure.score_job import azure_run_model_uri
    from ..inference.classifier import OnnxClassifier
    from .predict import resolve_model

    if not Path(model_or_run).exists():
        from .common import find_run

        _, record, _, _ = find_run(model_or_run)
        if record.backend == "azure":
            uri = azure_run_model_uri(record.run_dir, record.run_id)
            if uri:
                return uri
    path = resolve_model(model_or_run)
    OnnxClassifier(path)
    return path


def score_on_azure(model, data, out, *, force, top_k, as_json, values, runs_dir=Path("runs")):
    """Plan the parallel job of `data`, then show it (--dry-run, --export) or run it to --out."""
    from ..backends.azure.job import check_export_path
    from ..backends.azure.score_job import (ScoreRun, build_score_job, describe_score, export_score_yaml,
                                            parse_data_uri, plan_score)
    from ..backends.azure.settings import load_settings
    from ..runner import new_run_id

    export_path = values.get("export_path")
    dry_run = values.get("dry_run") or export_path is not None
    if export_path:
        check_export_path(export_path)
    if not dry_run:
        from ..inference.score import check_out

        out = check_out(out, force)
    settings = load_settings(workspace_flags(values), profile=values.get("profile"))
    _, prefix = parse_data_uri(data)
    run_id = new_run_id(f"score-{PurePosixPath(prefix).name}")
    plan = plan_score(azure_model(model), data, run_id=run_id, compute=values.get("compute"),
                      instances=values.get("instances"), processes=values.get("processes"),
                      mini_batch_size=values.get("mini_batch_size"), top_k=top_k)
    if dry_run:
        click.echo(describe_score(plan, settings))
        if export_path:
            export_score_yaml(build_score_job(plan), export_path)
            click.echo(f"wrote {export_path} (submit it with: az ml job create -f {export_path})")
        return
    from ..ledger import Ledger

    def confirm():
        click.confirm("create this compute cluster?", abort=True)
    # a script or a pipe has nobody to answer
    approve = confirm if not values.get("yes") and sys.stdin.isatty() else None
    run = ScoreRun(settings, Ledger(), say=lambda line: click.echo(line, err=True), approve=approve)
    summary = run.run(plan, Path(runs_dir).resolve() / run_id, out)
    if as_json:
        print_json(summary)
