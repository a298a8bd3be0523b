"""`orchestrate predict` and `orchestrate evaluate`: use a trained model (a file or a run id).

Shells over orchestrator.model.Model (predict, evaluate) and orchestrator.scoring.score (--out).
"""
from pathlib import Path

import click

from ..errors import UsageError
from .common import print_json


FP32_HELP = "Use a run's fp32 model even when its int8 model (orchestrate quantize) was kept."
OUT_HELP = ("Write one row per image to FILE.csv or FILE.jsonl (columns: path, label, score, top_k, error) "
            "instead of printing; an existing file is refused unless --force.")


@click.command()
@click.argument("model", metavar="MODEL_OR_RUN")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True, help="Labels shown per image.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {image, label, score, top_k}.")
@click.option("--out", type=click.Path(path_type=Path), metavar="FILE", help=OUT_HELP)
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--fp32", is_flag=True, help=FP32_HELP)
@click.option("--explain", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Also write, for each image, DIR/<name>.explain.png: the predicted class's heat map "
                   "(class activation map) over the image. Needs a model with maps (a ResNet or EfficientNet).")
def predict(model, paths, top_k, as_json, out, force, fp32, explain):
    """Classify images with a model file or the model of a run.

    Each PATH is an image file or a folder, whose images are taken recursively (the training
    job's extensions, in any case; hidden files and folders skipped). An unreadable image gets
    an error and the others are still classified; the exit code is 2 only when none could be.

    \b
    Examples:
      orchestrate predict runs/digits-20261123-101500-ab12/outputs/model.onnx seven.png
      orchestrate predict digits-20261123-101500-ab12 a.jpg b.jpg --top-k 3 --json
      orchestrate predict digits-20261123-101500-ab12 ./new-photos --out scores.csv
      orchestrate predict digits-20261123-101500-ab12 ./new-photos --explain heat/
    """
    if out is not None and as_json:
        raise UsageError("--json prints the predictions and --out writes them to a file: choose one")
    opened = open_model(model, fp32)
    if explain is not None:
        opened.require_cam()
    if out is not None:  # first: an existing --out is refused before anything is written
        from ..scoring import score

        summary = score(opened, paths, out, top_k=top_k, force=force)
        click.echo(f"wrote {summary['images']} row(s) to {out}: {summary['scored']} classified, "
                   f"{summary['errors']} unreadable", err=True)
        readable = summary["scored"] > 0
    else:
        predictions = opened.predict(paths, top_k)
        readable = not all(p.error for p in predictions)
        if as_json:
            print_json([p.to_json() for p in predictions])
        else:
            from ..printable import printable

            for p in predictions:  # names from the dataset and the model, shown but never acted on
                if p.error:
                    click.echo(printable(f"{p.image}: error: {p.error}"), err=True)
                else:
                    others = "  ".join(f"{label} {score:.3f}" for label, score in p.top_k[1:])
                    click.echo(printable(f"{p.image}: {p.label} {p.score:.3f}" + (f"  ({others})" if others else "")))
    if explain is not None and readable:
        written = [p for p in opened.explain_to(paths, explain) if p is not None]
        click.echo(f"wrote {len(written)} heat map(s) to {explain}", err=True)
    if not readable:
        raise UsageError(f"no image could be read (the reasons are in {out})" if out else "no image could be read")


@click.command()
@click.argument("model", metavar="MODEL_OR_RUN")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--fp32", is_flag=True, help=FP32_HELP)
def evaluate(model, data, as_json, fp32):
    """Score a model on DATA, a folder with one sub-folder of images per label.

    Prints accuracy, macro accuracy, log-loss (and its reduction over the class prior),
    per-class log-loss, precision and recall, and the confusion matrix.

    \b
    Example:
      orchestrate evaluate digits-20261123-101500-ab12 ./holdout --json
    """
    metrics = open_model(model, fp32).evaluate(data)
    if as_json:
        print_json(metrics)
        return
    from rich.table import Table

    from .render import as_text, console_for, metrics_table

    console = console_for()
    console.print(metrics_table(metrics, title=f"Evaluation on {data}"))
    cm = metrics["confusion_matrix"]
    table = Table(title="Confusion matrix (rows: true, columns: predicted)")
    table.add_column("")
    for label in cm["labels"]:
        table.add_column(as_text(label), justify="right")
    for label, row in zip(cm["labels"], cm["matrix"]):
        table.add_row(as_text(label), *map(str, row))
    console.print(table)
    from remote_scripts.folder_dataset import LINK_OUTSIDE

    links = sum(1 for skipped in metrics["skipped"] if skipped["reason"] == LINK_OUTSIDE)
    if len(metrics["skipped"]) > links:
        console.print(f"[yellow]skipped {len(metrics['skipped']) - links} unreadable image(s)[/yellow]")
    if links:
        console.print(f"[yellow]left out {links} link(s) leading outside {as_text(str(data))}[/yellow]")


def open_model(model, fp32):
    """The Model of MODEL_OR_RUN for predict, evaluate, score and serve: a run's int8 model when
    it was kept (unless --fp32), said on stderr, since its numbers differ slightly from fp32's."""
    from ..model import Model

    chosen = Model(model, fp32=fp32)
    told = chosen.chosen_for(model)
    if told:
        click.echo(told, err=True)
    return chosen
