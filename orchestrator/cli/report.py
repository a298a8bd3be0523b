"""`orchestrate report RUN`: a finished run's self-contained HTML report (orchestrator.runs.report)."""
import click



@click.command()
@click.argument("run", metavar="RUN")
@click.option("--open", "open_browser", is_flag=True, help="Open the report in the web browser.")
def report(run, open_browser):
    """Write RUN's report, one self-contained HTML file: learning curves, confusion matrix,
    per-class precision/recall/F1, the most confidently wrong images, skipped files,
    configuration and timing. RUN is a run id (or unique prefix) or a run folder; the report
    is written to report.html in the run folder and its path printed.

    \b
    Examples:
      orchestrate report digits-20261123-101500-ab12 --open
      orchestrate report runs/digits-20261123-101500-ab12
    """
    from ..runs import report as write_report

    path = write_report(run)
    click.echo(str(path))
    if open_browser:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
