"""Commands on past and running runs: runs list/show/compare, logs, status, cancel, download."""
import time

import click

from .common import find_run, follow_and_report, print_json


@click.group()
def runs():
    """List and inspect runs recorded in the ledger.

    \b
    Examples:
      orchestrate runs list
      orchestrate runs show digits-20261123-101500-ab12 --json
      orchestrate runs compare digits-20261123-101500-ab12 digits-20261123-103000-cd34
    """


@runs.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON list.")
def list_runs(limit, as_json):
    """List recent runs, newest first."""
    from rich.table import Table

    from ..ledger import Ledger
    from ..render import console_for

    records = Ledger().list(limit)
    if as_json:
        print_json([r.to_json() for r in records])
        return
    table = Table(show_header=True, header_style="bold")
    table.add_column("run", no_wrap=True)
    for column in ("backend", "status", "started", "accuracy", "dataset"):
        table.add_column(column)
    for r in records:
        accuracy = r.metrics.get("accuracy")
        table.add_row(r.run_id, r.backend, r.status, time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at)),
                      "-" if accuracy is None else f"{accuracy:.4f}", r.dataset)
    console_for().print(table)


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
def show_run(run_id, as_json):
    """Show one run: parameters, status, outputs and metrics."""
    from ..runner import read_metrics

    _, record, _, _ = find_run(run_id, job=False)
    data = record.to_json()
    data["test_metrics"] = read_metrics(record.run_dir)
    cost = _azure_cost(record)
    if cost is not None:
        data["cost_estimate"] = cost
    if as_json:
        print_json(data)
        return
    for key in ("run_id", "name", "backend", "status", "exit_code", "attempts", "dataset", "run_dir", "remote_id"):
        click.echo(f"{key:10} {data[key]}")
    click.echo(f"{'params':10} {' '.join(record.params.get('train_args', [])) or '(defaults)'}")
    if cost is not None:
        from ..backends.azure.assets import cost_line

        click.echo(cost_line(cost))
    if data["test_metrics"]:
        from ..render import console_for, metrics_table

        console_for().print(metrics_table(data["test_metrics"]))


@runs.command("compare")
@click.argument("run_ids", metavar="RUN|SEARCH...", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: runs, parameters, metrics and the best run of each metric.")
def compare_runs(run_ids, as_json):
    """Show runs side by side: the parameters that differ and the metrics, the best value of each
    metric marked. Runs without metrics yet show "-"; outputs are not downloaded for this. A
    search (`train --search`) stands for all of its trials.

    \b
    Examples:
      orchestrate runs compare digits-20261123-101500-ab12 digits-20261123-103000-cd34 --json
      orchestrate runs compare digits-20261202-101500-ef56
    """
    from ..compare import compare
    from ..errors import UserError
    from ..ledger import Ledger
    from ..search import expand_ids

    ledger = Ledger()
    records = [ledger.get(run_id) for run_id in expand_ids(ledger, run_ids)]
    ids = [record.run_id for record in records]
    repeated = sorted({run_id for run_id in ids if ids.count(run_id) > 1})
    if repeated:
        raise UserError(f"run {repeated[0]} is named more than once")
    if len(records) < 2:
        raise UserError("compare needs at least two runs (see 'orchestrate runs list')")
    comparison = compare(records, cost_of=_azure_cost)
    if as_json:
        print_json(comparison)
        return
    from ..render import comparison_notes, comparison_table, console_for

    console = console_for()
    console.print(comparison_table(comparison))
    for note in comparison_notes(comparison):
        console.print(note)


def _azure_cost(record):
    """The estimated cost of an Azure run (duration x nodes x hourly price), None for other runs."""
    if record.backend != "azure":
        return None
    from .register import cost_of

    return cost_of(record)


@click.command()
@click.argument("run_id")
@click.option("--verbose", "-v", is_flag=True, help="Also show the job's ordinary log lines.")
@click.option("--no-follow", is_flag=True, help="Show what is logged so far and return, even while the run goes on.")
def logs(run_id, verbose, no_follow):
    """Re-render a run's progress from its log; follow it while it runs (Ctrl-C detaches).

    \b
    Example:
      orchestrate logs digits-20261123-101500-ab12
    """
    _, _, backend, run = find_run(run_id)
    follow_and_report(backend, run, verbose=verbose, until_end=not no_follow)


@click.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def status(run_id, as_json):
    """Print a run's status: queued, running, completed, failed or canceled.

    \b
    Example:
      orchestrate status digits-20261123-101500-ab12
    """
    from ..runner import finish

    ledger, record, backend, run = find_run(run_id)
    outcome = finish(backend, run, ledger, download=False)
    if as_json:
        print_json({"run_id": record.run_id, "status": outcome.status})
    else:
        click.echo(outcome.status)


@click.command()
@click.argument("run_id")
def cancel(run_id):
    """Stop a running job (SIGTERM, then SIGKILL after a grace period).

    \b
    Example:
      orchestrate cancel digits-20261123-101500-ab12
    """
    from ..backends.base import TERMINAL
    from ..runner import finish

    ledger, record, backend, run = find_run(run_id)
    current = backend.status(run)
    if current in TERMINAL:
        click.echo(f"run {record.run_id} has already ended ({current})")
        return
    backend.cancel(run)
    outcome = finish(backend, run, ledger)
    click.echo(f"run {record.run_id} {outcome.status}")


@click.command()
@click.argument("run_id")
def download(run_id):
    """Fetch a finished run's outputs into runs/<run-id>/outputs.

    \b
    Example:
      orchestrate download digits-20261123-101500-ab12
    """
    from ..errors import UserError

    from ..runner import fetch_outputs

    ledger, record, backend, run = find_run(run_id)
    fetch_outputs(backend, ledger, record)
    if not (record.output_dir / "model.onnx").is_file():
        raise UserError(f"run {record.run_id} has no outputs to download (status: {backend.status(run)})")
    click.echo(str(record.output_dir))
