"""`orchestrate quantize`: an int8 model beside a run's (or a file's) model, a shell over orchestrator.quantize."""
from pathlib import Path

import click

from .common import print_json


@click.command()
@click.argument("model", metavar="RUN|MODEL.onnx")
@click.option("--calibration", type=click.Path(file_okay=False, path_type=Path), metavar="DATA",
              help="A labeled folder (DATA/<label>/<images>) whose images calibrate the int8 model and stand in for "
                   "the test split in the gate; needed for a model file. [default for a run: its own training "
                   "split calibrates, its test split gates]")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True,
              metavar="POINTS", help="Accuracy the int8 model may lose on a test split of 200 images or more.")
@click.option("--no-gate", is_flag=True, help="Keep the int8 model whatever the comparison says (its figures are "
                                               "still recorded).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def quantize(model, calibration, max_accuracy_drop, no_gate, as_json):
    """Write model.int8.onnx beside the fp32 model: ONNX Runtime's static quantization (QDQ,
    per-channel int8 weights) calibrated on a few hundred images, two to three times faster on a
    CPU with 8-bit dot products.

    It is kept only if, on the test split, it picks the fp32 model's label for at least 97% of the
    images and, on 200 images or more, loses at most --max-accuracy-drop points of accuracy;
    otherwise it is removed, with one line saying why. A run's figures go to its metrics.json
    ("int8"); predict, evaluate, score and serve then use its int8 model (--fp32: the fp32 one).

    \b
    Examples:
      orchestrate quantize digits-20261123-101500-ab12
      orchestrate quantize model.onnx --calibration ./holdout
    """
    from ..quantizing import quantize as quantize_model

    result = quantize_model(model, calibration=calibration, max_accuracy_drop=max_accuracy_drop, gate=not no_gate,
                            on_event=lambda event: click.echo(event["message"], err=True))
    if as_json:
        print_json(result.to_json())
    click.echo(result.message, err=as_json)
