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
    if path.is_dir():
        for candidate in (path / "model.onnx", path / "outputs" / "model.onnx"):
            if candidate.is_file():
                return candidate
        raise UserError(f"no model.onnx in {path}")
    from ..backends.base import COMPLETED
    from .common import find_run

    _, record, backend, run = find_run(model_or_run)
    model = record.output_dir / "model.onnx"
    if not model.is_file() and backend.status(run) == COMPLETED:
        backend.download(run, record.output_dir)
    if not model.is_file():
        raise UserError(f"run {record.run_id} has no model yet (status: {record.status})")
    return model


@click.command()
@click.argument("model", metavar="MODEL_OR_RUN")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True, help="Labels shown per image.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {image, label, score, top_k}.")
def predict(model, images, top_k, as_json):
    """Classify IMAGES with a model file or the model of a run.

    \b
    Examples:
      orchestrate predict runs/digits-20261123-101500-ab12/outputs/model.onnx seven.png
      orchestrate predict digits-20261123-101500-ab12 a.jpg b.jpg --top-k 3 --json
    """
    from ..inference.classifier import OnnxClassifier

    classifier = OnnxClassifier(resolve_model(model))
    k = min(top_k, len(classifier.labels))
    results = []
    for image, (probs, error) in zip(images, classifier.classify([str(p) for p in images])):
        if error:
            results.append({"image": str(image), "error": error})
            continue
        ranked = classifier.top_k(probs, k)
        results.append({"image": str(image), "label": ranked[0]["label"], "score": ranked[0]["score"],
                        "top_k": ranked})
    if as_json:
        print_json(results)
    else:
        for r in results:
            if "error" in r:
                click.echo(f"{r['image']}: error: {r['error']}", err=True)
            else:
                others = "  ".join(f"{t['label']} {t['score']:.3f}" for t in r["top_k"][1:])
                click.echo(f"{r['image']}: {r['label']} {r['score']:.3f}" + (f"  ({others})" if others else ""))
    if all("error" in r for r in results):
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
    from rich.console import Console
    from rich.table import Table

    from ..render import metrics_table

    console = Console()
    console.print(metrics_table(metrics, title=f"Evaluation on {data}"))
    cm = metrics["confusion_matrix"]
    table = Table(title="Confusion matrix (rows: true, columns: predicted)")
    table.add_column("")
    for label in cm["labels"]:
        table.add_column(label, justify="right")
    for label, row in zip(cm["labels"], cm["matrix"]):
        table.add_row(label, *map(str, row))
    console.print(table)
    if metrics["skipped"]:
        console.print(f"[yellow]skipped {len(metrics['skipped'])} unreadable image(s)[/yellow]")
