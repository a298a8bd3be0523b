"""Entry point of `orchestrate`.

Commands are registered by name and imported only when invoked, so `orchestrate --help` never
loads torch, onnxruntime, docker or azure.ai.ml. Errors become one line on stderr and an exit
code (2 bad input, 1 failed job), never a traceback.
"""
import sys
from importlib import import_module

import click

from ..errors import OrchestrateError
from ..printable import printable

# name -> (module, attribute, one-line help shown by `orchestrate --help`)
COMMANDS = {
    "train": ("orchestrator.cli.train", "train", "Train a classifier on a folder-per-label dataset."),
    "runs": ("orchestrator.cli.runs", "runs", "List and inspect past runs."),
    "logs": ("orchestrator.cli.runs", "logs", "Show a run's progress; follow it while it runs."),
    "status": ("orchestrator.cli.runs", "status", "Print a run's status."),
    "cancel": ("orchestrator.cli.runs", "cancel", "Stop a running job."),
    "download": ("orchestrator.cli.runs", "download", "Fetch a run's outputs into its run folder."),
    "predict": ("orchestrator.cli.predict", "predict", "Classify images with a trained model."),
    "evaluate": ("orchestrator.cli.predict", "evaluate", "Score a model on a labeled folder."),
    "serve": ("orchestrator.cli.serve", "serve", "Serve a model over HTTP, with a web page to try it."),
    "score": ("orchestrator.cli.score", "score", "Batch-score a folder of images into a predictions file."),
    "quantize": ("orchestrator.cli.quantize", "quantize", "Write an int8 model beside a model, kept if it agrees."),
    "init": ("orchestrator.cli.init", "init", "Save Azure workspace settings to a profile."),
    "workspace": ("orchestrator.cli.workspace", "workspace", "Create, show or delete the Azure ML workspace."),
    "compute": ("orchestrator.cli.compute", "compute", "Azure GPU sizes and the training cluster."),
    "data": ("orchestrator.cli.data", "data", "Upload a dataset to Azure Blob storage, incrementally."),
    "image": ("orchestrator.cli.image", "image", "Build the docker backend's training or offline base image."),
    "doctor": ("orchestrator.cli.doctor", "doctor", "Check what the docker backend needs on this host."),
    "cache": ("orchestrator.cli.cache", "cache", "List or clear the decoded-image cache of training runs."),
    "register": ("orchestrator.cli.register", "register", "Register an Azure run's model and dataset as Azure ML assets."),
    "report": ("orchestrator.cli.report", "report", "Write a run's HTML report: curves, confusion matrix, worst mistakes."),
    "attach": ("orchestrator.cli.register", "attach", "Adopt an Azure ML job started elsewhere into the run ledger."),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that command runs."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="orchestrator", prog_name="orchestrate")
def cli():
    """Train image classifiers on Azure ML GPUs, in a local Docker container or a local process,
    and get a self-describing ONNX model back.

    \b
    Example:
      orchestrate train ./EuroSAT --backend local --epochs 5
      orchestrate predict RUN_ID photo.jpg --top-k 3
    """
    quiet_azure_logs()


def quiet_azure_logs():
    """The command says each Azure refusal in one line, so the Azure SDK's own records stay off
    stderr: azure.identity logs every failed sign-in of its chain at WARNING. Set here, in the
    command, not in the library: an application using `import orchestrator` keeps its own logging
    configuration (azure.ai.ml's logger, which that SDK sets up itself, is quieted by seam.load_sdk)."""
    import logging

    logging.getLogger("azure").setLevel(logging.ERROR)


def main():
    """Console entry point: every error is one line on stderr with a meaningful exit code.

    Messages name the user's paths and labels, so they are printed with control characters shown
    (printable): no name can act on the terminal."""
    try:
        code = cli.main(standalone_mode=False)
    except OrchestrateError as exc:
        click.echo(printable(f"error: {exc}"), err=True)
        code = exc.exit_code
    except click.ClickException as exc:  # bad usage: unknown option, invalid value ...
        click.echo(printable(f"error: {exc.format_message()}"), err=True)
        code = exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        code = 130
    except OSError as exc:  # a path the user gave cannot be read or written
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(printable(f"error: {exc.strerror or exc}{where}"), err=True)
        code = 2
    sys.exit(code or 0)


if __name__ == "__main__":  # python -m orchestrator.cli.main, e.g. for -X importtime
    main()
