"""What the run commands share: following a run on the terminal and printing its outcome.

The work is the SDK's (orchestrator.Run); this module only renders: the job's events with
render.EventRenderer, the client's own events with client_events.ClientEvents, and the
summary a user reads next.
"""
import json
import sys

import click

from ..backends.base import COMPLETED
from ..errors import JobFailed, UsageError
from ..run_folder import MODEL, RunFolder


def print_json(data):
    click.echo(json.dumps(data, indent=2, default=str))


def detach_or_follow(run, detach, as_json, verbose, started, banner):
    """A run just started (`started`: submitted, resumed): with --detach print its id (one JSON
    object with --json) and return False; else say `banner` on stderr and follow it to its end
    (follow_and_report), returning True."""
    if detach:
        if as_json:
            print_json({"run_id": run.id, "status": started, "backend": run.backend, "run_dir": str(run.folder)})
        else:
            click.echo(f"{started} {run.id} ({run.backend}); follow with: orchestrate logs {run.id}")
        return False
    if not as_json:
        click.echo(banner, err=True)
    follow_and_report(run, as_json=as_json, verbose=verbose, write_report=True)
    return True


def follow_and_report(run, as_json=False, verbose=False, until_end=True, write_report=False):
    """Follow a run to its end (Run.wait), print the result, and raise for a failed or canceled run.

    Without `until_end`, show what the run has logged so far and say how to follow a live one.
    With `write_report`, a completed run's report.html is written before the summary names it.
    Ctrl-C leaves the job running and says how to re-attach (exit code 130).
    """
    from .render import EventRenderer, SearchRenderer

    renderer = (SearchRenderer if run.is_search else EventRenderer)(verbose=verbose)
    try:
        run.wait(timeout=None if until_end else 0, on_event=renderer.event, on_line=renderer.line)
    except KeyboardInterrupt:
        renderer.close()
        click.echo(f"\ndetached; the job keeps running. Re-attach with: orchestrate logs {run.id}", err=True)
        sys.exit(130)
    except TimeoutError:
        renderer.close()
        click.echo(f"run {run.id} is {run.status}; follow it with: orchestrate logs {run.id}", err=True)
        return
    except (JobFailed, UsageError) as exc:
        renderer.close()
        print_outcome(run, None, as_json)
        if not as_json and getattr(exc, "status", None) not in (None, "canceled") and renderer.log_tail:
            click.echo("last lines of the job's log:\n  " + "\n  ".join(renderer.log_tail), err=True)
        raise
    renderer.close()
    report = completed_run_report(run, write_report)
    found = print_outcome(run, report, as_json)
    if as_json:
        return
    if found:
        click.echo(f"search {run.id} completed; best trial {found['best']['run_id']} "
                   f"(compare them all: orchestrate runs compare {run.id})")
    click.echo(f"run {run.id} completed\nmodel: {RunFolder(run.folder).output(MODEL)}\n"
               f"predict: orchestrate predict {run.id} IMAGE...\n"
               f"report: {report or f'orchestrate report {run.id}'}")


def print_outcome(run, report, as_json):
    """The ended run's summary as one JSON object (--json), else a search's table of trials;
    returns the search's result (None for a run that is no search)."""
    found = run.search()
    if as_json:
        print_json({**run_summary(run, report), **(found or {})})
    elif found and found["trials"]:
        from .render import console_for, search_table

        console_for().print(search_table(found))
    return found


def run_summary(run, report):
    return {"run_id": run.id, "status": run.status, "backend": run.backend, "run_dir": str(run.folder),
            "outputs": RunFolder(run.folder).output_files(), "metrics": RunFolder(run.folder).metrics(),
            "report": report}


def completed_run_report(run, write):
    """The path of a completed run's report.html, written first when `write`; None when there is none.

    `train` writes it as soon as its run completes, after the job, in about 2.5 s: the page a
    user looks at next, there without asking. A failure to write it costs the run nothing: one
    warning line, and the summary names the command that retries.
    """
    if run.status != COMPLETED:
        return None
    if write:
        try:
            return str(run.report())
        except Exception as exc:  # noqa: BLE001 -- any failure: a traceback here would hide a completed run
            from ..errors import OrchestrateError

            click.echo(f"warning: no report: {exc}" if isinstance(exc, (OrchestrateError, OSError)) else
                       f"warning: no report: {type(exc).__name__}: {exc}", err=True)
            return None
    path = RunFolder(run.folder).report_path
    return str(path) if path.is_file() else None
