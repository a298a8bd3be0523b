"""`orchestrate score`: batch scoring of a folder into a predictions file, with progress and images/s.

A shell over orchestrator.scoring.score (a local folder here, az:// DATA on Azure ML). The rows
are those of `predict --out`; what this command adds is how a long run shows: progress on stderr
that suits a terminal as well as a CI log, and the throughput at the end.
"""
import sys
import time
from pathlib import Path

import click

from ..errors import UsageError
from ..inference import BATCH_SIZE
from .azure_options import workspace_options
from .common import print_json
from .predict import FP32_HELP


class ScoreProgress:
    """Progress of `total` images on stderr: render.progress_bars, a live bar on a terminal and
    elsewhere (CI logs, `| tee`, notebooks) a plain, complete line at most every 10 s."""

    def __init__(self, total, console=None, clock=time.monotonic):
        from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        from .render import console_for, progress_bars

        self.total = total
        self.clock = clock
        self.started = clock()
        self.bars = progress_bars(console or console_for(stderr=True), TextColumn("  score"), BarColumn(),
                                  MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                  TimeRemainingColumn(), clock=clock)

    def __enter__(self):
        self.bars.start()
        self.task = self.bars.add_task("score", total=self.total, rate="", unit="images")
        return self

    def update(self, done):
        elapsed = self.clock() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        self.bars.update(self.task, completed=done, rate=f"{rate:.1f} images/s")

    def __exit__(self, *exc):
        self.bars.stop()


def score_job_options(command):
    """Decorator adding the options of a score job on Azure ML, as the Azure backend declares them."""
    from ..backends.azure.score_job import SCORE_OPTIONS
    from .training_options import backend_click_option

    for option in reversed(SCORE_OPTIONS):
        command = backend_click_option(option, "az:// DATA: ")(command)
    return command


@click.command()
@click.argument("model", metavar="MODEL_OR_RUN")
@click.argument("data")
@click.option("--out", type=click.Path(path_type=Path), metavar="FILE", required=True,
              help="FILE.csv or FILE.jsonl: one row per image (path, label, score, top_k, error); an existing "
                   "file is refused unless --force, and replaced only once every image is scored.")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True, help="Labels kept per image.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=BATCH_SIZE, show_default=True,
              help="Images per ONNX Runtime call (the CPU default; a GPU wants more, e.g. 64).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decoding threads [default: the CPUs this process may use].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (images, errors, seconds, images/s) as JSON.")
@click.option("--fp32", is_flag=True, help=FP32_HELP)
@score_job_options
@click.option("--yes", is_flag=True, default=None, help="az:// DATA: create a missing compute cluster without asking.")
@workspace_options(location=False, prefix="az:// DATA: ")
@click.option("--dry-run", is_flag=True, default=None,
              help="az:// DATA: print the parallel job that would run; no cloud calls.")
@click.option("--export", "export_path", type=click.Path(dir_okay=False, path_type=Path),
              help="az:// DATA, with --dry-run: write the job as Azure ML YAML (az ml job create -f FILE).")
def score(model, data, out, force, top_k, batch_size, workers, as_json, fp32, **azure):
    """Score every image of DATA (a folder, recursively, or one image) into a predictions file.

    Images are decoded in a thread pool while ONNX Runtime computes batches, with memory bounded
    whatever the number of images; unreadable images get an error row and the rest go on. Exit
    code 0 when at least one image was scored, 2 when none could be.

    \b
    Example:
      orchestrate score digits-20261123-101500-ab12 ./new-photos --out scores.csv
      orchestrate score RUN az://workspaceblobstore/photos --out scores.csv --instances 4

    DATA as az://DATASTORE/PREFIX (a blob folder of a workspace datastore), or as
    az://ACCOUNT/CONTAINER/PREFIX (what `data upload --no-pack` prints, on a datastore's storage
    account and container), is scored on Azure ML as a parallel job, the predictions downloaded
    to --out at the end. A packed dataset is refused: score a folder of image files.
    """
    from ..scoring import Plan, score as score_data

    progress = ProgressEvents()
    with progress:
        result = score_data(model, data, out, top_k=top_k, force=force, batch_size=batch_size, workers=workers,
                            fp32=fp32,
                            export=azure.pop("export_path"),
                            approve=approval(azure.pop("yes")), on_event=progress, **azure)
    if isinstance(result, Plan):
        click.echo(result.description)
        if result.export:
            click.echo(f"wrote {result.export} (submit it with: az ml job create -f {result.export})")
        return
    if as_json:
        print_json(result)
    if "scored" not in result:  # a parallel job: its notices said how it went
        return
    if not as_json:
        click.echo(f"scored {result['scored']} of {result['images']} image(s) ({result['errors']} unreadable) "
                   f"in {result['seconds']:.1f} s: {result['images_per_second']:.1f} images/s; wrote {out}", err=True)
    if not result["scored"]:
        raise UsageError(f"no image could be read (the reasons are in {out})")


def approval(yes):
    """score's `approve`: None (create a missing cluster without asking) with --yes, and where nobody
    can answer (a script, a pipe); else a question on the terminal."""
    if yes or not sys.stdin.isatty():
        return None

    return lambda question: click.confirm(question, abort=True)


class ProgressEvents:
    """score's on_event: notices as lines on stderr, the images' transfer events as a ScoreProgress
    bar, started at the first of them (when the number of images is known)."""

    def __init__(self):
        self.bar = None

    def __call__(self, event):
        if event["type"] == "notice":
            click.echo(event["message"], err=True)
        elif event["type"] == "transfer":
            if self.bar is None:
                self.bar = ScoreProgress(event["total"]).__enter__()
            self.bar.update(event["done"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
