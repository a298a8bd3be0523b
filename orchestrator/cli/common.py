"""Pieces shared by the commands: following a run and reporting its outcome."""
import json
import sys

import click

from ..backends import get_backend
from ..backends.base import CANCELED, COMPLETED, TERMINAL
from ..errors import JobFailed, UserError
from ..ledger import Ledger


def print_json(data):
    click.echo(json.dumps(data, indent=2, default=str))


def find_run(run_id):
    """(ledger, record, backend, RunRef) for a run id or unique prefix."""
    from ..runner import run_ref

    ledger = Ledger()
    record = ledger.get(run_id)
    return ledger, record, get_backend(record.backend), run_ref(record)


def run_summary(record, outcome):
    out = record.output_dir
    return {
        "run_id": record.run_id,
        "status": outcome.status,
        "backend": record.backend,
        "run_dir": record.run_dir,
        "outputs": {name: str(out / name) for name in ("model.onnx", "labels.json", "metrics.json", "history.jsonl")
                    if (out / name).exists()},
        "metrics": outcome.metrics,
    }


def follow_and_report(backend, run, as_json=False, verbose=False, until_end=True):
    """Follow a run to its end, print the result, and raise for a failed or canceled run.

    Without `until_end`, show what the run has logged so far and say how to follow a live one.
    """
    from ..render import EventRenderer
    from ..runner import Detached, follow

    ledger = Ledger()
    renderer = EventRenderer(verbose=verbose)
    try:
        outcome = follow(backend, run, ledger, renderer, until_end)
    except Detached:
        click.echo(f"\ndetached; the job keeps running. Re-attach with: orchestrate logs {run.run_id}", err=True)
        sys.exit(130)
    record = ledger.get(run.run_id)
    if outcome.status not in TERMINAL:
        click.echo(f"run {run.run_id} is {outcome.status}; follow it with: orchestrate logs {run.run_id}", err=True)
        return outcome
    if as_json:
        print_json(run_summary(record, outcome))
    if outcome.status == COMPLETED:
        if not as_json:
            click.echo(f"run {run.run_id} completed\nmodel: {record.output_dir / 'model.onnx'}\n"
                       f"predict: orchestrate predict {run.run_id} IMAGE...")
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
