"""Pieces shared by the commands: following a run and reporting its outcome."""
import json
import sys
from pathlib import Path

import click

from ..backends import get_backend
from ..backends.base import CANCELED, COMPLETED, TERMINAL
from ..errors import JobFailed, UserError
from ..ledger import Ledger


def print_json(data):
    click.echo(json.dumps(data, indent=2, default=str))


def find_run(run_id, job=True):
    """(ledger, record, backend, RunRef) for a run id or unique prefix.

    A trial of a search ran inside its search's job and has no job of its own: the commands that
    talk to a run's job (`job`: logs, status, cancel, download, register) refuse it, naming the
    search to use instead."""
    from ..runner import run_ref

    ledger = Ledger()
    record = ledger.get(run_id)
    if job and record.search_id:
        raise UserError(f"run {record.run_id} is a trial of the search {record.search_id}, which ran as one job: "
                        f"use {record.search_id} (it stands for its best trial)")
    return ledger, record, get_backend(record.backend), run_ref(record)


def resolve_run_dir(run, wanted):
    """The folder of RUN, for the commands that read a run's outputs (report, predict...).

    RUN is a folder path (a run's outputs/ folder stands for its run folder), or a run id or
    unique prefix: then the folder the ledger records, with the outputs of a completed run
    downloaded first when outputs/`wanted` (a file name) is not there yet. UserError when a
    run id's folder is missing or its run has no `wanted` (yet).
    """
    path = Path(run)
    if path.is_dir():
        return path.parent if path.name == "outputs" and (path.parent / "spec.json").is_file() else path
    ledger, record, backend, ref = find_run(run, job=False)
    if record.search_id:  # a trial: its folder came with its search's outputs
        if not (record.output_dir / wanted).is_file():
            why = (f"a search keeps the model of its best trial only, use {record.search_id}" if wanted == "model.onnx"
                   else f"the trial {record.status} without it")
            raise UserError(f"run {record.run_id} has no {wanted}: {why}")
        return Path(record.run_dir)
    if not (record.output_dir / wanted).is_file() and backend.status(ref) == COMPLETED:
        from ..runner import fetch_outputs

        fetch_outputs(backend, ledger, record)
    if not Path(record.run_dir).is_dir():
        raise UserError(f"the folder of run {record.run_id} is missing: {record.run_dir}")
    if not (record.output_dir / wanted).is_file():
        raise UserError(f"run {record.run_id} has no {wanted} yet (status: {record.status})")
    return Path(record.run_dir)


RESUME_KEEPS = ("resume_run", "detach", "as_json", "verbose")  # what may accompany `train --resume RUN`


def resume_and_follow(ctx, run_id, detach=False, as_json=False, verbose=False):
    """`orchestrate train --resume RUN`: start the run again in its folder, then follow it as train does.

    The run continues with what its spec.json recorded (data, split, hyperparameters, backend):
    the checkpoint would not match other settings, so any other argument given is refused.
    """
    from click.core import ParameterSource

    from ..runner import resume

    given = [param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
             for param in ctx.command.params if param.name not in RESUME_KEEPS
             and ctx.get_parameter_source(param.name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]
    if given:
        raise UserError(f"--resume continues run {run_id} with its recorded data and settings: drop {', '.join(given)}")
    ledger, record, backend, _ = find_run(run_id)
    if backend.resumable and record.status != COMPLETED:
        from ..runner import read_spec
        from .train import fetch_imagenet_weights

        # train.py loads the ImageNet weights again before its checkpoint; a container has no network
        fetch_imagenet_weights(read_spec(Path(record.run_dir), record.run_id).train_args)
    run = resume(backend, ledger, record)
    detach_or_follow(backend, run, detach, as_json, verbose, started="resumed",
                     banner=f"run {run.run_id} resumed on {backend.name} backend (attempt {record.attempts + 1}); "
                            f"folder {run.run_dir}")


def detach_or_follow(backend, run, detach, as_json, verbose, started, banner):
    """A run just started (`started`: submitted, resumed): with --detach print its id (one JSON
    object with --json) and return None; else say `banner` on stderr and follow it to its end,
    returning its Outcome."""
    if detach:
        if as_json:
            print_json({"run_id": run.run_id, "status": started, "backend": backend.name,
                        "run_dir": str(run.run_dir)})
        else:
            click.echo(f"{started} {run.run_id} ({backend.name}); follow with: orchestrate logs {run.run_id}")
        return None
    if not as_json:
        click.echo(banner, err=True)
    return follow_and_report(backend, run, as_json=as_json, verbose=verbose, write_report=True)


def run_summary(record, outcome, report=None):
    out = record.output_dir
    return {
        "run_id": record.run_id,
        "status": outcome.status,
        "backend": record.backend,
        "run_dir": record.run_dir,
        "outputs": {name: str(out / name) for name in ("model.onnx", "labels.json", "metrics.json", "history.jsonl",
                                                       "predictions.csv")
                    if (out / name).exists()},
        "metrics": outcome.metrics,
        "report": report,
    }


def completed_run_report(record, write):
    """The path of a completed run's report.html, written first when `write`; None when there is none.

    `train` writes it as soon as its run completes, after the job, in about 2.5 s: the page a
    user looks at next, there without asking. A failure to write it costs the run nothing: one
    warning line, and the summary names the command that retries.
    """
    from ..report import REPORT_NAME, write_report

    if write:
        try:
            return str(write_report(record.run_dir))
        except Exception as exc:  # noqa: BLE001 -- any failure: a traceback here would hide a completed run
            click.echo(f"warning: no report: {exc}" if isinstance(exc, (UserError, OSError)) else
                       f"warning: no report: {type(exc).__name__}: {exc}", err=True)
            return None
    path = Path(record.run_dir) / REPORT_NAME
    return str(path) if path.is_file() else None


def follow_and_report(backend, run, as_json=False, verbose=False, until_end=True, write_report=False):
    """Follow a run to its end, print the result, and raise for a failed or canceled run.

    Without `until_end`, show what the run has logged so far and say how to follow a live one.
    With `write_report`, a completed run's report.html is written before the summary names it.
    """
    from ..render import EventRenderer, SearchRenderer
    from ..runner import Detached, follow

    ledger = Ledger()
    searching = "trials" in ledger.get(run.run_id).params
    renderer = (SearchRenderer if searching else EventRenderer)(verbose=verbose)
    try:
        outcome = follow(backend, run, ledger, renderer, until_end)
    except Detached:
        click.echo(f"\ndetached; the job keeps running. Re-attach with: orchestrate logs {run.run_id}", err=True)
        sys.exit(130)
    record = ledger.get(run.run_id)
    if outcome.status not in TERMINAL:
        click.echo(f"run {run.run_id} is {outcome.status}; follow it with: orchestrate logs {run.run_id}", err=True)
        return outcome
    report = completed_run_report(record, write_report) if outcome.status == COMPLETED else None
    found = None
    if searching:
        from ..search import result

        found = result(record)
    if as_json:
        print_json({**run_summary(record, outcome, report), **(found or {})})
    if found and not as_json and found["trials"]:
        from ..render import console_for, search_table

        console_for().print(search_table(found))
    if outcome.status == COMPLETED:
        if found and not as_json:
            click.echo(f"search {run.run_id} completed; best trial {found['best']['run_id']} "
                       f"(compare them all: orchestrate runs compare {run.run_id})")
        if not as_json:
            click.echo(f"run {run.run_id} completed\nmodel: {record.output_dir / 'model.onnx'}\n"
                       f"predict: orchestrate predict {run.run_id} IMAGE...\n"
                       f"report: {report or f'orchestrate report {run.run_id}'}")
        return outcome
    if outcome.status == CANCELED:
        raise JobFailed(f"run {run.run_id} was canceled")
    if outcome.exit_code == 2 and outcome.error:
        raise UserError(outcome.error)
    if not as_json and renderer.log_tail:
        click.echo("last lines of the job's log:\n  " + "\n  ".join(renderer.log_tail), err=True)
    reason = outcome.error or (f"exit code {outcome.exit_code}" if outcome.exit_code is not None else
                               "the job stopped without reporting why (killed, or out of memory?)")
    raise JobFailed(f"run {run.run_id} {outcome.status}: {reason} (full log: orchestrate logs {run.run_id} -v)")
