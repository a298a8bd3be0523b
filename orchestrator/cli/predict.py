"""`orchestrate predict` and `orchestrate evaluate`: use a trained model (a file or a run id)."""
from pathlib import Path

import click

from ..errors import UserError
from .common import print_json


def resolve_model(model_or_run):
    """The model.onnx for a file path, a run folder, or a run id (downloading outputs if needed)."""
    path = Path(model_or_run)
    if path.is_file():
        return path
    from .common import resolve_run_dir

    folder = resolve_run_dir(model_or_run, wanted="model.onnx")  # a run id's model is there, or UserError
    for candidate in (folder / "model.onnx", folder / "outputs" / "model.onnx"):
        if candidate.is_file():
            return candidate
    raise UserError(f"no model.onnx in {path}")


OUT_HELP = ("Write one row per image to FILE.csv or FILE.jsonl (columns: path, label, score, top_k, error) "
            "instead of printing; an existing file is refused unless --force.")


@click.command()
@click.argument("model", metavar="MODEL_OR_RUN")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True, help="Labels shown per image.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {image, label, score, top_k}.")
@click.option("--out", type=click.Path(path_type=Path), metavar="FILE", help=OUT_HELP)
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
def predict(model, paths, top_k, as_json, out, force):
    """Classify images with a model file or the model of a run.

    Each PATH is an image file or a folder, whose images are taken recursively (the training
    job's extensions, in any case; hidden files and folders skipped). An unreadable image gets
    an error and the others are still classified; the exit code is 2 only when none could be.

    \b
    Examples:
      orchestrate predict runs/digits-20261123-101500-ab12/outputs/model.onnx seven.png
      orchestrate predict digits-20261123-101500-ab12 a.jpg b.jpg --top-k 3 --json
      orchestrate predict digits-20261123-101500-ab12 ./new-photos --out scores.csv
    """
    from ..inference.classifier import OnnxClassifier
    from ..inference.score import check_out, list_images, prediction_rows, score_to_file

    if out is not None and as_json:
        raise UserError("--json prints the predictions and --out writes them to a file: choose one")
    if out is not None:
        out = check_out(out, force)
    classifier = OnnxClassifier(resolve_model(model))  # the arguments' order: the model's problems first
    images = list_images(paths)
    if out is not None:
        summary = score_to_file(classifier, images, out, top_k)
        click.echo(f"wrote {summary['images']} row(s) to {out}: {summary['scored']} classified, "
                   f"{summary['errors']} unreadable", err=True)
        if not summary["scored"]:
            raise UserError(f"no image could be read (the reasons are in {out})")
        return
    rows = list(prediction_rows(classifier, images, top_k))
    if as_json:
        print_json([{"image": r["path"], "error": r["error"]} if r["error"] else
                    {"image": r["path"], "label": r["label"], "score": r["score"], "top_k": r["top_k"]}
                    for r in rows])
    else:
        from ..printable import printable

        for r in rows:  # names from the dataset and the model, shown but never acted on
            if r["error"]:
                click.echo(printable(f"{r['path']}: error: {r['error']}"), err=True)
            else:
                others = "  ".join(f"{t['label']} {t['score']:.3f}" for t in r["top_k"][1:])
                click.echo(printable(f"{r['path']}: {r['label']} {r['score']:.3f}" + (f"  ({others})" if others else "")))
    if all(r["error"] for r in rows):
        raise UserError("no image could be read")


@click.command()
@click.argument("model", metavar="MODEL_OR_RUN")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(model, data, as_json):
    """Score a model on DATA, a folder with one sub-folder of images per label.

    Prints accuracy, macro accuracy, log-loss (and its reduction over the class prior),
    per-class log-loss, precision and recall, and the confusion matrix.

    \b
    Example:
      orchestrate evaluate digits-20261123-101500-ab12 ./holdout --json
    """
    from ..inference.classifier import OnnxClassifier
    from ..inference.evaluate import evaluate_folder

    metrics = evaluate_folder(OnnxClassifier(resolve_model(model)), data)
    if as_json:
        print_json(metrics)
        return
    from rich.table import Table

    from ..render import as_text, console_for, metrics_table

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
    if metrics["skipped"]:
        console.print(f"[yellow]skipped {len(metrics['skipped'])} unreadable image(s)[/yellow]")
