"""Commands on past and running runs: runs list/show/compare, logs, status, cancel, download."""
import time

import click

from .common import follow_and_report, print_json


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

    from .. import runs as all_runs
    from .render import console_for

    records = [run.to_json() for run in all_runs.list(limit)]
    if as_json:
        print_json(records)
        return
    table = Table(show_header=True, header_style="bold")
    table.add_column("run", no_wrap=True)
    for column in ("backend", "status", "started", "accuracy", "dataset"):
        table.add_column(column)
    for r in records:
        accuracy = r["metrics"].get("accuracy")
        table.add_row(r["run_id"], r["backend"], r["status"],
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"])),
                      "-" if accuracy is None else f"{accuracy:.4f}", r["dataset"])
    console_for().print(table)


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
def show_run(run_id, as_json):
    """Show one run: parameters, status, outputs and metrics."""
    from ..run_folder import RunFolder
    from ..runs import get

    run = get(run_id)
    data = run.to_json()
    data["test_metrics"] = RunFolder(run.folder).metrics()
    cost = run.cost()
    if cost is not None:
        data["cost_estimate"] = cost
    if as_json:
        print_json(data)
        return
    for key in ("run_id", "name", "backend", "status", "exit_code", "attempts", "dataset", "run_dir", "remote_id"):
        click.echo(f"{key:10} {data[key]}")
    click.echo(f"{'params':10} {' '.join(run.params.get('train_args', [])) or '(defaults)'}")
    if cost is not None:
        from .render import cost_line

        click.echo(cost_line(cost))
    if data["test_metrics"]:
        from .render import console_for, metrics_table

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
    from ..runs import compare

    comparison = compare(list(run_ids))
    if as_json:
        print_json(comparison)
        return
    from .render import comparison_notes, comparison_table, console_for

    console = console_for()
    console.print(comparison_table(comparison))
    for note in comparison_notes(comparison):
        console.print(note)


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
    from ..runs import get

    follow_and_report(get(run_id), verbose=verbose, until_end=not no_follow)


@click.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def status(run_id, as_json):
    """Print a run's status: queued, running, completed, failed or canceled.

    \b
    Example:
      orchestrate status digits-20261123-101500-ab12
    """
    from ..runs import get

    run = get(run_id).refresh()
    if as_json:
        print_json({"run_id": run.id, "status": run.status})
    else:
        click.echo(run.status)


@click.command()
@click.argument("run_id")
def cancel(run_id):
    """Stop a running job (SIGTERM, then SIGKILL after a grace period).

    \b
    Example:
      orchestrate cancel digits-20261123-101500-ab12
    """
    from ..backends.base import TERMINAL
    from ..runs import get

    run = get(run_id)
    current = run.refresh().status
    if current in TERMINAL:
        click.echo(f"run {run.id} has already ended ({current})")
        return
    click.echo(f"run {run.id} {run.cancel().status}")


@click.command()
@click.argument("run_id")
def download(run_id):
    """Fetch a finished run's outputs into runs/<run-id>/outputs.

    \b
    Example:
      orchestrate download digits-20261123-101500-ab12
    """
    from ..runs import get

    click.echo(str(get(run_id).download()))
