"""What a job tells the world: event lines, log lines, warnings and MLflow metrics.

Events (progress.py, DESIGN.md 4.2) are the job's protocol with the client: every backend's log
carries them between ordinary lines, and one parser reads them all. Only rank 0 speaks, so a run
on eight GPUs reads like a run on one; search.py's TrialReporter tags a trial's lines instead.
MLflow is optional: Azure ML sets MLFLOW_TRACKING_URI, and the metrics then show in its studio.
"""
import math
import os

from . import progress
from .runtime import describe_device


class Reporter:
    """Events (progress.py), log lines and MLflow metrics; silent in every process but rank 0."""

    def __init__(self, main):
        self.main = main
        self.mlflow = None

    def event(self, type_, **fields):
        if self.main:
            progress.emit(type_, **fields)

    def log(self, text):
        if self.main:
            print(text, flush=True)

    def warn(self, message):
        self.log(f"warning: {message}")
        self.event("warning", message=message)

    def throttle(self, phase, total, last=True, **fields):
        if not self.main:
            return progress.NoProgress()
        return progress.ProgressThrottle(phase, total, last=last, **fields)

    def start_mlflow(self, params):
        """Log to MLflow when it is installed and MLFLOW_TRACKING_URI is set (as on Azure ML)."""
        if not self.main or not os.environ.get("MLFLOW_TRACKING_URI"):
            return
        try:
            import mlflow
            mlflow.log_params({k: str(v)[:250] for k, v in params.items()})
            self.mlflow = mlflow
        except Exception:  # not installed, or the store refuses (params of a resumed run): no MLflow
            self.mlflow = None

    def mlflow_metrics(self, values, step):
        if self.mlflow is None:
            return
        try:
            self.mlflow.log_metrics({k: float(v) for k, v in values.items()
                                     if isinstance(v, (int, float)) and not isinstance(v, bool)
                                     and k not in ("epoch", "epochs") and math.isfinite(v)}, step=step)
        except Exception:
            self.mlflow = None


def format_epoch(row):
    """An epoch_end row as the log line a person reads."""
    text = (f"epoch {row['epoch']}/{row['epochs']}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.3f}")
    if row["val_loss"] is not None:
        text += f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}"
    return text + f"  {row['seconds']:.1f}s" + ("  *best" if row["best"] else "")


def announce(report, args, mode, dataset, device, precision, dist, saved):
    """The run_start event and log line, and MLflow's parameters: what this run is."""
    sizes = dataset.sizes()
    config = dict(vars(args), mode=mode.name, world_size=dist.world, precision=precision.describe())
    report.event("run_start", classes=list(dataset.classes), split=sizes, device=describe_device(device),
                 config=config, skipped=len(dataset.skipped), resumed_from_epoch=saved["epoch"] if saved else None)
    report.log(f"{len(dataset.classes)} classes; train {sizes['train']}, val {sizes['val']}, test "
               f"{sizes['test']}; {args.arch} ({mode.name}, weights {args.weights}) on "
               f"{describe_device(device)}, {precision.describe()}"
               + (f", {dist.world} processes" if dist.world > 1 else ""))
    report.start_mlflow(config)
    if not sizes["val"]:
        report.warn("no validation split (--val-fraction 0): no early stopping, and the last "
                    "epoch's weights are kept")
