"""The training options of `orchestrate train`, each mapped one-to-one to a train.py flag.

One table drives both the click options and the job's command line, so the two cannot drift
apart; tests/test_contract.py checks every flag against `train.py --help`.
"""
import click

ARCHITECTURES = ("resnet50", "resnet18", "resnet34", "resnet101", "mobilenet_v3_large", "efficientnet_b0")
MODES = ("linear", "head", "full")

# (flag, click type, help). Defaults are train.py's: the client passes only what the user set.
TRAINING_OPTIONS = (
    ("--arch", click.Choice(ARCHITECTURES), "Backbone network. [default: resnet50]"),
    ("--weights", str, "Initial weights: imagenet, none, or a state_dict file. [default: imagenet]"),
    ("--mode", click.Choice(MODES),
     "linear: frozen backbone, cached features + linear head; head: frozen backbone, head trained with "
     "augmentation; full: fine-tune everything. [default: full on GPU, linear on CPU]"),
    ("--epochs", click.IntRange(min=1), "Training epochs. [default: 10]"),
    ("--batch-size", click.IntRange(min=1), "Images per batch. [default: 32]"),
    ("--lr", click.FloatRange(min=0, min_open=True), "Learning rate. [default: depends on --mode]"),
    ("--image-size", click.IntRange(min=16, max=1024), "Input size in pixels (square). [default: 224]"),
    ("--val-fraction", click.FloatRange(0, 1, max_open=True), "Share of each class for validation. [default: 0.1]"),
    ("--test-fraction", click.FloatRange(0, 1, max_open=True), "Share of each class for the test metrics. [default: 0.1]"),
    ("--seed", int, "Seed of the split and the training. [default: 0]"),
    ("--time-budget", click.FloatRange(min=0, min_open=True), "Stop cleanly after this many seconds."),
    ("--patience", click.IntRange(min=0), "Early-stop after this many epochs without a better validation loss. [default: 5]"),
    ("--workers", click.IntRange(min=0), "Data loading processes. [default: min(4, CPUs)]"),
)


def _param_name(flag):
    return flag.lstrip("-").replace("-", "_")


def training_options(command):
    """Decorator adding every training option to a click command (all default to None)."""
    for flag, type_, help_ in reversed(TRAINING_OPTIONS):
        command = click.option(flag, type=type_, default=None, help=help_)(command)
    return command


def to_train_args(values):
    """train.py arguments for the options the user set, in table order."""
    args = []
    for flag, _, _ in TRAINING_OPTIONS:
        value = values.get(_param_name(flag))
        if value is not None:
            args += [flag, str(value)]
    return args


def pop_training_values(kwargs):
    """Remove the training options from a command's kwargs and return them as a dict."""
    return {_param_name(flag): kwargs.pop(_param_name(flag)) for flag, _, _ in TRAINING_OPTIONS}
