"""Renders a job's event stream for people: progress bars, a line per epoch, a metrics table.

One renderer for every backend and for `orchestrate logs`, so a re-rendered run looks exactly
like the live one. It writes to stderr: stdout is kept for results (`--json`).
"""
from collections import deque

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.markup import escape as _escape
from rich.table import Table

LOG_TAIL_LINES = 30  # ordinary log lines kept to explain a failure
# The phase every attempt of the job reports first, before its run_start (train.py scans the
# dataset before it knows the classes): where a resumed run's next attempt begins in its log.
FIRST_PHASE = "scan"


def metrics_table(metrics, title="Test metrics"):
    """The ML.NET-style summary: overall numbers, then per class."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("class")
    for name in ("precision", "recall", "F1", "log-loss", "support"):
        table.add_column(name, justify="right")
    for label, row in metrics.get("per_class", {}).items():
        loss = metrics.get("per_class_log_loss", {}).get(label)
        table.add_row(label, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                      "-" if loss is None else f"{loss:.3f}", str(row["support"]))
    parts = [f"{name} {metrics[key]:.4f}" for key, name in (
        ("accuracy", "accuracy"), ("macro_accuracy", "macro accuracy"), ("macro_f1", "macro F1"),
        ("log_loss", "log-loss"), ("log_loss_reduction", "log-loss reduction")) if isinstance(metrics.get(key), (int, float))]
    table.caption = "   ".join(parts + [f"samples {metrics.get('num_samples', '?')}"])
    return table


class EventRenderer:
    def __init__(self, console=None, verbose=False):
        self.console = console or Console(stderr=True, highlight=False)
        self.verbose = verbose
        self.log_tail = deque(maxlen=LOG_TAIL_LINES)
        self.progress = None
        self.task = None
        # A resumed run's log holds every attempt of the job, each earlier one ending with its
        # run_end (canceled, failed) or with nothing at all (killed).
        self.attempts = 0
        self.attempt_ended = False
        self.attempt_announced = False  # the current attempt began with FIRST_PHASE, run_start is to come
        self.epochs_shown = set()

    def line(self, text):
        """An ordinary log line: kept for failure reports, shown only with --verbose."""
        self.log_tail.append(text)
        if self.verbose:
            self._print(f"[dim]{_escape(text)}[/dim]")

    def event(self, event):
        handler = getattr(self, "_on_" + str(event.get("type")), None)
        if handler is not None:  # types this client does not know are ignored (DESIGN.md 4.2)
            handler(event)

    def close(self):
        self._stop_progress()

    # -- event handlers -------------------------------------------------------------------
    def _begin_attempt(self):
        """A job's attempt starts: in a resumed run's log, say how the one before it ended."""
        self.attempts += 1
        if self.attempts > 1:
            if not self.attempt_ended:  # killed with no chance to say so (SIGKILL, a crash, a reboot)
                self._print("[yellow]job stopped without reporting why (killed?)[/yellow]")
            self._print(f"[bold]attempt {self.attempts}[/bold]")
        self.attempt_ended = False
        self.attempt_announced = True

    def _on_run_start(self, ev):
        if not self.attempt_announced:  # a job that reported no FIRST_PHASE before its run_start
            self._begin_attempt()
        self.attempt_announced = False
        classes = ev.get("classes", [])
        split = ev.get("split", {})
        shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
        resumed = (f", resumed after epoch {ev['resumed_from_epoch']}" if ev.get("resumed_from_epoch") is not None
                   else ", no checkpoint: from the start" if self.attempts > 1 else "")
        self._print(f"[bold]{len(classes)} classes[/bold] ({_escape(shown)}); "
                    f"train/val/test = {split.get('train', '?')}/{split.get('val', '?')}/{split.get('test', '?')} "
                    f"images; device {ev.get('device', '?')}{resumed}")

    def _on_phase(self, ev):
        self._stop_progress()
        if ev.get("name") == FIRST_PHASE:
            self._begin_attempt()
        self._print(f"[cyan]>[/cyan] {ev.get('name')}")

    def _on_progress(self, ev):
        if not self.console.is_terminal:  # bars only make sense on a live terminal
            return
        phase = ev.get("phase", "")
        label = f"{phase} epoch {ev['epoch']}/{ev['epochs']}" if "epoch" in ev and "epochs" in ev else phase
        if self.progress is None:
            self.progress = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task(label, total=ev.get("total"))
        self.progress.update(self.task, description=label, completed=ev.get("done", 0), total=ev.get("total"))

    def _on_epoch_end(self, ev):
        self._stop_progress()
        parts = [f"epoch {ev.get('epoch')}/{ev.get('epochs')}"]
        for key, name in (("train_loss", "loss"), ("train_accuracy", "acc"),
                          ("val_loss", "val_loss"), ("val_accuracy", "val_acc")):
            if ev.get(key) is not None:
                parts.append(f"{name} {ev[key]:.4f}")
        if ev.get("seconds") is not None:
            parts.append(f"{ev['seconds']:.1f}s")
        best = " [green]*best[/green]" if ev.get("best") else ""
        # An attempt killed after an epoch ended but before its checkpoint was written: the next
        # attempt trains that epoch again, and says so rather than look like a duplicated line.
        repeated = " [yellow](repeated)[/yellow]" if ev.get("epoch") in self.epochs_shown else ""
        self.epochs_shown.add(ev.get("epoch"))
        self._print("  " + "  ".join(parts) + best + repeated)

    def _on_checkpoint(self, ev):
        if self.verbose:
            self._print(f"[dim]checkpoint after epoch {ev.get('epoch')}[/dim]")

    def _on_skipped(self, ev):
        files = ev.get("files", [])
        count = ev.get("count", len(files))
        shown = ", ".join(f.get("path", "?") for f in files[:3]) + (", ..." if count > 3 else "")
        self._print(f"[yellow]skipped {count} unreadable image(s)[/yellow]: {_escape(shown)}")

    def _on_warning(self, ev):
        self._print(f"[yellow]warning:[/yellow] {_escape(str(ev.get('message', '')))}")

    def _on_metrics(self, ev):
        self._stop_progress()
        metrics = {k: v for k, v in ev.items() if k not in ("v", "type", "time")}
        if "per_class" in metrics:
            self.console.print(metrics_table(metrics))

    def _on_artifact(self, ev):
        if self.verbose:
            self._print(f"[dim]wrote {ev.get('name')} ({ev.get('bytes')} bytes)[/dim]")

    def _on_run_end(self, ev):
        self._stop_progress()
        self.attempt_ended = True
        status = ev.get("status")
        colour = {"completed": "green", "canceled": "yellow"}.get(status, "red")
        seconds = ev.get("seconds")
        took = f" in {seconds:.1f}s" if isinstance(seconds, (int, float)) else ""
        self._print(f"[{colour}]job {status}[/{colour}]{took}")

    # -- helpers --------------------------------------------------------------------------
    def _print(self, markup):
        self.console.print(markup)

    def _stop_progress(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
