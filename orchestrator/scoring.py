"""Batch scoring, wherever the images are: a local folder here, an Azure blob folder on Azure ML.

`score(model, data, out)` is what `orchestrate score` runs. Local DATA (a folder, an image, or a
list of them) is scored in this process (Model.score). DATA given as az://DATASTORE/PREFIX, or as
az://ACCOUNT/CONTAINER/PREFIX (what `orchestrate data upload --no-pack` prints), is scored on
Azure ML as a parallel job (orchestrator.backends.azure.score_job) spread over `instances`
nodes, and its predictions are downloaded to `out` at the end, in the same columns.

Example:
    >>> import orchestrator
    >>> orchestrator.score("digits-20261123-101500-ab12", "./new-photos", "scores.csv")["scored"]
    1200
    >>> plan = orchestrator.score("digits-20261123-101500-ab12", "az://workspaceblobstore/photos",
    ...                           "scores.csv", instances=4, dry_run=True, export="score.yml")
    >>> print(plan.description)
"""
import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from . import events
from .errors import UsageError
from .inference import BATCH_SIZE
from .plan import Plan

if TYPE_CHECKING:
    from .model import Model

AZURE_DATA = "az://"  # a blob prefix: scored on Azure ML as a parallel job



def azure_only():
    """{value: flag} of what only a parallel job on Azure ML takes (its options, as the Azure backend
    declares them, its dry run and its workspace): any of them given with local data is a mistake,
    named by its flag."""
    from .backends.azure.score_job import SCORE_OPTIONS
    from .backends.azure.settings import WORKSPACE_FLAGS

    return {**{option.dest: option.flag for option in SCORE_OPTIONS}, "dry_run": "--dry-run",
            "export": "--export", **WORKSPACE_FLAGS}


def score(model: "Model | str | os.PathLike", data: str | os.PathLike | Iterable[str | os.PathLike],
          out: str | os.PathLike, *,
          top_k: int = 1, force: bool = False, batch_size: int = BATCH_SIZE, workers: int | None = None,
          compute: str | None = None, instances: int | None = None, processes_per_node: int | None = None,
          mini_batch_size: int | None = None, dry_run: bool = False, export: str | os.PathLike | None = None,
          approve: events.Approve | None = None, on_event: Callable[[dict], None] = events.ignore,
          subscription_id: str | None = None, resource_group: str | None = None, workspace_name: str | None = None,
          profile: str | None = None, runs_dir: str | os.PathLike = "runs", fp32: bool = False) -> "dict | Plan":
    """Score the images of `data` with `model` into `out` (.csv or .jsonl: path, label, score,
    top_k, error per image); an existing `out` is replaced only with `force`.

    `model`: a Model, a model.onnx file, a run folder, or a run id or unique prefix (its int8 model
    when `quantize` kept one, said as a notice, unless `fp32`).

    Local `data` (a folder, recursively, an image, or a list of them) is scored in this process,
    `batch_size` images per ONNX Runtime call while `workers` threads decode; progress comes as
    transfer events (unit "images"). Returns {images, scored, errors, seconds,
    images_per_second, out}. The Azure-only values below are a UsageError naming their flags.

    `data` as az://DATASTORE/PREFIX or az://ACCOUNT/CONTAINER/PREFIX is scored on Azure ML: a
    parallel job on `compute` (an alias or VM size, default cpu) with `instances` nodes of
    `processes_per_node` processes, `mini_batch_size` files per mini-batch. The model is the
    run's model.onnx where the workspace holds it (an Azure run's, read in place), else the local
    file, uploaded with the job. The workspace is found as the CLI finds it: these keyword
    arguments, then the environment, then `profile`. A missing cluster is created after its quota
    check; approve("create compute NAME?") is asked first and stops it by returning False or
    raising; None creates it without asking. Progress comes as notice events; a failed job is JobFailed.
    Returns {rows, errors, skipped, run_id, out, seconds, images_per_second}.
    With `dry_run` (or `export`, a new .yml file for the job) nothing is created and no cloud call
    is made: a Plan comes back.

    Example:
        >>> score("digits-20261123-101500-ab12", "./photos", "scores.jsonl", top_k=3, force=True)
        {'images': 120, 'scored': 119, 'errors': 1, 'seconds': 2.1, 'images_per_second': 57.1, ...}
    """
    azure = {"compute": compute, "instances": instances, "processes_per_node": processes_per_node,
             "mini_batch_size": mini_batch_size, "dry_run": dry_run, "export": export,
             "subscription_id": subscription_id, "resource_group": resource_group,
             "workspace_name": workspace_name, "profile": profile}
    if isinstance(data, str) and data.startswith(AZURE_DATA):
        from .backends.azure.score_job import SCORE_OPTIONS

        for option in SCORE_OPTIONS:
            problem = option.problem(azure[option.dest])
            if problem:
                raise UsageError(f"{option.dest}={azure[option.dest]!r}: {problem}")
        return _score_on_azure(model, data, out, force=force, top_k=top_k, on_event=on_event,
                               runs_dir=runs_dir, approve=approve, fp32=fp32, **azure)
    given = [azure_only()[name] for name, value in azure.items() if value not in (None, False)]
    if given:
        raise UsageError(f"{', '.join(given)}: Azure ML option(s), for DATA given as az://DATASTORE/PREFIX or "
                         "az://ACCOUNT/CONTAINER/PREFIX; drop them to score a local folder")
    from .inference.score import check_out
    from .model import Model

    out = check_out(out, force)  # before the model loads: a wrong name costs nothing
    if not isinstance(model, Model):
        given, model = model, Model(model, fp32=fp32)
        if told := model.chosen_for(given):
            on_event(events.notice(told))

    def progress(done, total):
        on_event(events.transfer("score", done, total, unit="images"))
    return model.score(data, out, top_k=top_k, batch_size=batch_size, workers=workers, force=force,
                       on_progress=progress)


def azure_model(model_or_run: "Model | str | os.PathLike", fp32: bool = False,
                on_event: Callable[[dict], None] = events.ignore) -> str | Path:
    """The model of a score job on Azure ML: an Azure run's model.onnx where the workspace already
    holds it (an azureml:// URI, read in place; a search's is its best trial's, a UsageError while
    search.json does not name it yet), else the local model.onnx `Model` would use (uploaded with
    the job), loaded here first so that a file which is no orchestrate model fails now, not on
    every node.

    Example:
        >>> azure_model("eurosat-20261202-061500-ab12")
        'azureml://datastores/workspaceblobstore/paths/orchestrate/runs/eurosat-.../model/model.onnx'
    """
    from .model import Model

    if isinstance(model_or_run, Model):
        return model_or_run.path
    if not Path(model_or_run).exists():
        from .backends.azure.score_job import azure_run_model_uri
        from .run_lookup import find

        _, record, _, _ = find(model_or_run)
        if record.backend == "azure":
            uri = azure_run_model_uri(record.run_dir, record.run_id)
            if uri:
                return uri
    chosen = Model(model_or_run, fp32=fp32)
    if told := chosen.chosen_for(model_or_run):
        on_event(events.notice(told))
    return chosen.path


def _score_on_azure(model, data, out, *, force, top_k, on_event, runs_dir, compute, instances, processes_per_node,
                    mini_batch_size, dry_run, export, approve, profile, fp32, **workspace):
    """Plan the parallel job of `data`, then return it as a Plan (dry_run, export) or run it to `out`."""
    from .backends.azure.job import check_export_path
    from .backends.azure.score_job import build_score_job, describe_score, export_score_yaml, parse_data_uri, plan_score
    from .backends.azure.settings import load_settings
    from .runner import new_run_id

    dry_run = dry_run or export is not None
    if export is not None:
        check_export_path(export)
    if not dry_run:
        from .inference.score import check_out

        out = check_out(out, force)
    settings = load_settings(workspace, profile=profile)
    _, prefix = parse_data_uri(data)
    run_id = new_run_id(f"score-{PurePosixPath(prefix).name}")
    plan = plan_score(azure_model(model, fp32, on_event), data, run_id=run_id, compute=compute, instances=instances,
                      processes=processes_per_node, mini_batch_size=mini_batch_size, top_k=top_k)
    if dry_run:
        if export is not None:
            export_score_yaml(build_score_job(plan), export)
        return Plan(run_id=run_id, description=describe_score(plan, settings), spec=plan,
                    export=None if export is None else Path(export),
                    write_yaml=lambda path: export_score_yaml(build_score_job(plan), path))
    return _run_score_job(plan, settings, Path(runs_dir).resolve() / run_id, out, on_event, approve)


def _run_score_job(plan, settings, run_dir, out, on_event, approve):
    """The score job of `plan` through the lifecycle every job kind shares (runner.start, Run.wait:
    the ledger row, runs/<id>/, status, cancel and logs as for a training run); then its prediction
    rows, downloaded into the run's outputs, written to `out`. A failed or canceled job is JobFailed
    (exit 1), with the service's error."""
    import time

    from .backends import get_backend
    from .backends.azure.score_job import plan_params, write_predictions
    from .backends.base import SCORE, JobSpec
    from .ledger import Ledger
    from .run import Run
    from .run_folder import RunFolder
    from .runner import fetch_outputs, start

    spec = JobSpec(run_id=plan.run_id, data=plan.data, run_dir=run_dir, train_args=[],
                   backend_options={f: getattr(settings, f) for f in ("subscription_id", "resource_group",
                                                                      "workspace_name")},
                   kind=SCORE, score=plan_params(plan))
    ledger, started = Ledger(), time.monotonic()
    start(get_backend("azure", on_event=on_event, approve=approve), ledger, spec, plan.run_id)
    try:
        Run(ledger.get(plan.run_id), ledger).wait(on_event=on_event)
    except KeyboardInterrupt:
        on_event(events.notice(f"detached; the job goes on: `orchestrate status {plan.run_id}`, then "
                               f"`orchestrate cancel {plan.run_id}` to stop it"))
        raise
    seconds = int(time.monotonic() - started)
    outputs = RunFolder(run_dir).outputs
    if not outputs.is_dir() or not any(outputs.iterdir()):  # another client recorded the end first
        fetch_outputs(get_backend("azure", on_event=on_event), ledger, ledger.get(plan.run_id))
    files = [path for path in outputs.rglob("*") if path.is_file()]
    resolved = replace(plan, datastore=spec.score["datastore"], prefix=spec.score["prefix"])  # as prepare found it
    summary = write_predictions(files, resolved, out)
    summary.update(run_id=plan.run_id, out=str(out), seconds=seconds,
                   images_per_second=round(summary["rows"] / seconds, 2) if seconds > 0 else None)
    on_event(events.notice(f"{summary['rows']} image(s) scored ({summary['errors']} unreadable) in {seconds} s "
                           f"on {plan.instances} node(s): {out}"))
    return summary
