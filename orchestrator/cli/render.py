"""Renders for people: a job's event stream (progress, a line per epoch, a metrics table), and
the tables of the commands that show runs.

One renderer for every backend and for `orchestrate logs`, so a re-rendered run looks exactly
like the live one. It writes to stderr: stdout is kept for results (`--json`).

On a terminal rich draws live progress bars and fits tables to the window. Off one (a CI log,
`| tee`, a notebook cell) nothing can be redrawn and nobody resizes the window: every line comes
out whole (rich would cut tables and wrap lines at 80 columns), and a long phase reports a plain
progress line every PLAIN_PROGRESS_SECONDS, timed by the job's own event clock so that
`orchestrate logs` prints the same lines as the live run did.
"""
import time
from collections import deque

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.markup import escape as _markup_escape
from rich.table import Table

from ..printable import printable

LOG_TAIL_LINES = 30  # ordinary log lines kept to explain a failure
# The phase every attempt of the job reports first, before its run_start (train.py scans the
# dataset before it knows the classes): where a resumed run's next attempt begins in its log.
FIRST_PHASE = "scan"
PLAIN_PROGRESS_SECONDS = 10  # off a terminal: a long phase's progress line, at most this often
# Columns of a console that is not a terminal. Text lines are never wrapped or cut there (soft
# wrap); tables are as wide as their content up to this. Nothing that fills the whole width
# (a rule, an expanding panel) belongs on such a console.
OFF_TERMINAL_WIDTH = 4096


def as_text(text):
    """`text` for rich markup: its control characters shown (printable) and its brackets literal,
    so that a label such as `[bold]x` is printed as it is."""
    return _markup_escape(printable(text))


def console_for(stderr=False):
    """A rich Console on stdout (results, tables) or stderr (progress) that, off a terminal,
    neither wraps nor cuts lines. Rich would take 80 columns there, or the width of a terminal it
    finds on another standard stream, and cut a table's cells ("comple…") or wrap a line."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.width = OFF_TERMINAL_WIDTH
        console.soft_wrap = True
    return console


def progress_bars(console, *columns, clock=time.monotonic, **options):
    """The client's own progress (hashing, uploading, scoring, downloading weights): rich's live
    bars with `columns` on a terminal; elsewhere PlainProgress, with the same task calls."""
    if console.is_terminal:
        return Progress(*columns, console=console, transient=True, **options)
    return PlainProgress(console, clock)


class PlainProgress:
    """rich.progress.Progress's task calls (add_task, update, advance, start, stop) for a console
    that is not a terminal, where a bar is either nothing or thousands of redrawn lines: each
    task that goes on prints a progress_line at most every PLAIN_PROGRESS_SECONDS."""

    def __init__(self, console, clock=time.monotonic):
        self.console = console
        self.clock = clock
        self.tasks = []

    def start(self):
        pass

    def stop(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def add_task(self, description, total=None, completed=0, **fields):
        now = self.clock()
        self.tasks.append({"description": description, "total": total, "completed": completed,
                           "started": now, "printed": now, "unit": fields.get("unit", "")})
        return len(self.tasks) - 1

    def update(self, task_id, completed=None, total=None, advance=None, description=None, **fields):
        task = self.tasks[task_id]
        task["total"] = task["total"] if total is None else total
        task["description"] = task["description"] if description is None else description
        task["completed"] = (task["completed"] if completed is None else completed) + (advance or 0)
        now = self.clock()
        if now - task["printed"] >= PLAIN_PROGRESS_SECONDS and task["description"] and (
                task["total"] is None or task["completed"] < task["total"]):
            task["printed"] = now
            elapsed = now - task["started"]
            rate = task["completed"] / elapsed if elapsed > 0 else 0.0
            self.console.print(as_text(progress_line(task["description"], task["completed"], task["total"], rate,
                                                     task["unit"])), soft_wrap=True)

    def advance(self, task_id, advance=1):
        self.update(task_id, advance=advance)


def progress_line(label, done, total, rate, unit=""):
    """"featurize: 4500/27000 (17%)  98.1/s  3m49s left": a phase's progress off a terminal."""
    unit = f" {unit}" if unit else ""
    parts = [f"{label}: {done:.0f}/{total:.0f}{unit} ({done / total:.0%})" if total else f"{label}: {done:.0f}{unit}"]
    if rate > 0:
        parts.append(f"{rate:.1f}/s")
        if total:
            parts.append(f"{duration(max(total - done, 0) / rate)} left")
    return "  ".join(parts)


def metrics_table(metrics, title="Test metrics"):
    """The ML.NET-style summary: overall numbers, then per class."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("class")
    for name in ("precision", "recall", "F1", "log-loss", "support"):
        table.add_column(name, justify="right")
    for label, row in metrics.get("per_class", {}).items():
        loss = metrics.get("per_class_log_loss", {}).get(label)
        table.add_row(as_text(label), f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                      "-" if loss is None else f"{loss:.3f}", str(row["support"]))
    parts = [f"{name} {metrics[key]:.4f}" for key, name in (
        ("accuracy", "accuracy"), ("macro_accuracy", "macro accuracy"), ("macro_f1", "macro F1"),
        ("log_loss", "log-loss"), ("log_loss_reduction", "log-loss reduction")) if isinstance(metrics.get(key), (int, float))]
    table.caption = "   ".join(parts + [f"samples {metrics.get('num_samples', '?')}"])
    return table


class EventRenderer:
    """Turns log lines and events into what a person reads, on `console` (default: stderr).

    `clock` times progress events that carry no "time" of their own (the job stamps every event;
    a test or an older job may not).
    """

    def __init__(self, console=None, verbose=False, clock=time.time):
        self.console = console or console_for(stderr=True)
        self.verbose = verbose
        self.clock = clock
        self.log_tail = deque(maxlen=LOG_TAIL_LINES)
        self.progress = None
        self.task = None
        # A resumed run's log holds every attempt of the job, each earlier one ending with its
        # run_end (canceled, failed) or with nothing at all (killed).
        self.attempts = 0
        self.attempt_ended = False
        self.attempt_announced = False  # the current attempt began with FIRST_PHASE, run_start is to come
        self.epochs_shown = set()
        # Off a terminal: when the last progress line of the current phase was printed (at its
        # start: the phase's own line), and (phase, epoch, time, done) of the progress event the
        # current stretch began with, to measure the rate.
        self.progress_line_at = None
        self.stretch = None

    def line(self, text):
        """An ordinary log line: kept for failure reports, shown only with --verbose."""
        self.log_tail.append(text)
        if self.verbose:
            self._print(f"[dim]{as_text(text)}[/dim]")

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
        self._print(f"[bold]{len(classes)} classes[/bold] ({as_text(shown)}); "
                    f"train/val/test = {split.get('train', '?')}/{split.get('val', '?')}/{split.get('test', '?')} "
                    f"images; device {ev.get('device', '?')}{resumed}")

    def _on_phase(self, ev):
        self._stop_progress()
        self.progress_line_at, self.stretch = self._time_of(ev), None
        if ev.get("name") == FIRST_PHASE:
            self._begin_attempt()
        self._print(f"[cyan]>[/cyan] {ev.get('name')}")

    def _on_progress(self, ev):
        if not self.console.is_terminal:  # bars only make sense on a live terminal
            self._plain_progress(ev)
            return
        phase = ev.get("phase", "")
        label = f"{phase} epoch {ev['epoch']}/{ev['epochs']}" if "epoch" in ev and "epochs" in ev else phase
        if self.progress is None:
            self.progress = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task(label, total=ev.get("total"))
        self.progress.update(self.task, description=label, completed=ev.get("done", 0), total=ev.get("total"))

    def _plain_progress(self, ev):
        """Off a terminal, a line for a phase that goes on: "featurize: 4500/27000 (17%)  98.1/s
        3m49s left", at most every PLAIN_PROGRESS_SECONDS and, while events come, about that often.

        The training phase says "train, epoch 3 of 10:", not "epoch 3/10", which is how the epoch's
        own line begins: a log holds that once per epoch, for people and scripts that look for it.
        """
        now, done, total = self._time_of(ev), ev.get("done", 0), ev.get("total")
        label = ev.get("phase", "") + (f", epoch {ev['epoch']} of {ev['epochs']}" if "epoch" in ev and "epochs" in ev
                                       else "")
        stretch = (ev.get("phase"), ev.get("epoch"))
        # The rate is measured from the first event of this phase and epoch (done counts again from
        # zero in each epoch of the training phase).
        if self.stretch is None or self.stretch[:2] != stretch or done < self.stretch[3]:
            self.stretch = (*stretch, now, done)
        if self.progress_line_at is None:  # progress with no phase event before it
            self.progress_line_at = now
        if now - self.progress_line_at < PLAIN_PROGRESS_SECONDS:
            return
        self.progress_line_at = now
        elapsed, advanced = now - self.stretch[2], done - self.stretch[3]
        rate = advanced / elapsed if elapsed > 0 and advanced > 0 else 0.0
        self._print("  " + as_text(progress_line(label, done, total, rate)))

    def _time_of(self, ev):
        stamp = ev.get("time")
        return stamp if isinstance(stamp, (int, float)) else self.clock()

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
        self._print(f"[yellow]skipped {count} unreadable image(s)[/yellow]: {as_text(shown)}")

    def _on_warning(self, ev):
        self._print(f"[yellow]warning:[/yellow] {as_text(str(ev.get('message', '')))}")

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


class SearchRenderer(EventRenderer):
    """A search's events (remote_scripts/search.py): a line as each trial starts and ends and, on a
    terminal, a live status line under them: trials done / running / left, time left, the best
    validation accuracy so far with its configuration, and what the running trial is doing.

    A trial's own events (they carry "trial") are not drawn one by one: ten trials of ten epochs
    would bury the status; its warnings are, and `orchestrate logs TRIAL` has the rest.
    """

    def __init__(self, console=None, verbose=False, clock=time.time):
        super().__init__(console, verbose, clock)
        self.total = self.budget = self.started = None
        self.done, self.running, self.best, self.activity = 0, None, None, ""
        self.live = None

    def event(self, event):
        kind, trial = event.get("type"), event.get("trial")
        if kind in ("trial_start", "trial_end"):
            getattr(self, "_on_" + kind)(event)
        elif trial is None:
            super().event(event)
        elif kind == "warning":
            self._print(f"[yellow]warning:[/yellow] {as_text(trial)}: {as_text(str(event.get('message', '')))}")
        elif kind == "phase":
            self.activity = str(event.get("name", ""))
        elif kind == "progress" and event.get("total"):
            epoch = f" epoch {event['epoch']}/{event['epochs']}" if "epoch" in event and "epochs" in event else ""
            self.activity = f"{event.get('phase', '')}{epoch} {event.get('done', 0) / event['total']:.0%}"
            if not self.console.is_terminal:  # a long trial's plain progress line, every 10 s at most
                self._plain_progress({**event, "phase": f"{trial} {event.get('phase', '')}"})
        elif kind == "epoch_end":
            self.activity = f"epoch {event.get('epoch')}/{event.get('epochs')} done"
        self._refresh()

    def close(self):
        if self.live is not None:
            self.live.stop()
            self.live = None
        super().close()

    def _on_run_start(self, ev):
        search = ev.get("search") or {}
        self.total, self.budget, self.started = len(search.get("trials") or []), search.get("budget_seconds"), \
            self._time_of(ev)
        budget = f" within {duration(self.budget)}" if isinstance(self.budget, (int, float)) else ""
        self._print(f"[bold]search[/bold]: up to {self.total} trial(s){budget}, ranked by validation accuracy")

    def _on_trial_start(self, ev):
        from remote_scripts.search_space import describe

        self.running, self.activity = ev.get("trial"), "starting"
        if self.done == 0:  # the classes and split are the same for every trial
            super()._on_run_start({**ev, "resumed_from_epoch": None})
        self._print(f"[cyan]>[/cyan] {as_text(str(ev.get('trial')))} {as_text(describe(ev.get('config') or {}))}")

    def _on_trial_end(self, ev):
        self.done += 1
        self.running = None
        led = ev.get("status") == "completed" and (self.best is None or _ranks_before(ev, self.best))
        if led:
            self.best = ev
        self._print("  " + as_text(trial_line(ev)) + (" [green]*best so far[/green]" if led else ""))

    def _refresh(self):
        if not self.console.is_terminal or self.total is None:
            return
        from rich.live import Live

        if self.live is None:
            self.live = Live(console=self.console, transient=True, auto_refresh=False)
            self.live.start()
        self.live.update(self.status_line(self.clock()), refresh=True)

    def status_line(self, now):
        """'trials 3 done, 1 running, 6 left; 1m20s left; best val acc 0.912 (t02 linear resnet50 lr 0.01); t04: train epoch 3/10 40%'"""
        from remote_scripts.search_space import describe

        left = self.total - self.done - (1 if self.running else 0)
        parts = [f"trials {self.done} done, {1 if self.running else 0} running, {left} left"]
        if isinstance(self.budget, (int, float)) and self.started is not None:
            parts.append(f"{duration(max(0.0, self.budget - (now - self.started)))} left")
        if self.best is not None:
            parts.append(f"best val acc {_number(self.best.get('val_accuracy'))} ({self.best.get('trial')} "
                         f"{describe(self.best.get('config') or {})})")
        if self.running:
            parts.append(f"{self.running}: {self.activity}")
        return as_text("; ".join(parts))

    def _on_run_end(self, ev):
        self.close()
        super()._on_run_end(ev)


def _ranks_before(trial, other):
    from remote_scripts.search_space import rank_key

    return rank_key(trial) < rank_key(other)


def trial_line(trial):
    """'t03 linear resnet50 lr 0.01: val acc 0.9120, test acc 0.9050, 12.3s, stopped early'"""
    from remote_scripts.search_space import describe

    head = f"{trial.get('trial')} {describe(trial.get('config') or {})}"
    if trial.get("status") != "completed":
        return f"{head}: {trial.get('status')}" + (f" ({trial['error']})" if trial.get("error") else "")
    parts = [f"val acc {_number(trial.get('val_accuracy'))}", f"test acc {_number(trial.get('accuracy'))}"]
    if isinstance(trial.get("seconds"), (int, float)):
        parts.append(f"{trial['seconds']:.1f}s")
    stopped = {"early_termination": "stopped early (behind the median)", "early_stopping": "early stopping",
               "time_budget": "stopped by the time budget"}.get(trial.get("stopped"))
    return f"{head}: {', '.join(parts + ([stopped] if stopped else []))}"


def search_table(result, top=5):
    """The top `top` trials of a search's result (orchestrator.search.result), the best marked."""
    from remote_scripts.search_space import describe

    table = Table(title=f"Top {min(top, len(result['trials']))} of {len(result['trials'])} trials",
                  show_header=True, header_style="bold")
    for column, justify in (("", "left"), ("trial", "left"), ("configuration", "left"), ("val acc", "right"),
                            ("test acc", "right"), ("macro acc", "right"), ("log-loss", "right"),
                            ("seconds", "right"), ("status", "left")):
        table.add_column(column, justify=justify)
    best = (result.get("best") or {}).get("trial")
    for trial in result["trials"][:top]:
        seconds = trial.get("seconds")
        table.add_row("*" if trial.get("trial") == best else "", as_text(str(trial.get("trial"))),
                      as_text(describe(trial.get("config") or {})), _number(trial.get("val_accuracy")),
                      _number(trial.get("accuracy")), _number(trial.get("macro_accuracy")),
                      _number(trial.get("log_loss")), "-" if seconds is None else f"{seconds:.1f}",
                      as_text(trial.get("stopped") if trial.get("status") == "completed" else str(trial.get("status"))))
    table.caption = "* the best trial: its model is the search's model"
    return table


def _number(value):
    return "-" if not isinstance(value, (int, float)) else f"{value:.4f}"


def duration(seconds):
    """45s, 3m49s, 2h05m: a time left, at the precision a person plans by."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def comparison_table(comparison):
    """`runs compare`: one column per run; status, the parameters that differ, then the metrics
    with each one's best value marked "*". Parameters every run shares and notes come after it
    (comparison_notes), so that the table stays as narrow as the differences."""
    from ..compare import METRICS

    runs = [run["run_id"] for run in comparison["runs"]]
    table = Table(show_header=True, header_style="bold")
    table.add_column("")
    for run_id in runs:
        table.add_column(run_id, justify="right", overflow="fold")
    table.add_row("status", *(run["status"] for run in comparison["runs"]))
    table.add_row("outputs", *(run["outputs"] or "-" for run in comparison["runs"]))
    table.add_section()
    differing = {name: entry for name, entry in comparison["parameters"].items() if entry["differs"]}
    if differing:
        table.add_row("[bold]parameters that differ[/bold]")
        for name, entry in differing.items():
            table.add_row(f"  {as_text(name)}",
                          *(f"[yellow]{as_text(_parameter_text(entry['values'][r]))}[/yellow]" for r in runs))
        table.add_section()
    shown = [m for m in METRICS if any(v is not None for v in comparison["metrics"][m.key]["values"].values())]
    if shown:
        table.add_row("[bold]metrics[/bold]")
    for metric in shown:
        entry = comparison["metrics"][metric.key]
        best = comparison["best"].get(metric.key, {}).get("runs", ())
        cells = []
        for run_id in runs:
            value = entry["values"][run_id]
            text = "-" if value is None else as_text(_metric_text(value, metric, entry.get("unit")))
            cells.append(f"[bold green]{text} *[/bold green]" if run_id in best else text)
        table.add_row(f"  {metric.label}", *cells)
    return table


def comparison_notes(comparison):
    """The lines under the comparison table: what every run shares, what "*" means, and which runs'
    outputs are not on this machine."""
    from ..compare import LOWER, METRICS, OUTPUTS_NOT_DOWNLOADED

    notes = []
    same = [f"{name} {_parameter_text(next(iter(entry['values'].values())))}"
            for name, entry in comparison["parameters"].items() if not entry["differs"]]
    if same:
        notes.append("[dim]same in every run: " + as_text(", ".join(same)) + "[/dim]")
    marked = [m for m in METRICS if m.key in comparison["best"]]
    if marked:
        lower = [m.label for m in marked if m.better == LOWER]
        notes.append("* the best value of each metric: the highest" +
                     (f", the lowest for {', '.join(lower)}" if lower else ""))
    for run in comparison["runs"]:
        if run["outputs"] == OUTPUTS_NOT_DOWNLOADED:
            notes.append(as_text(f"{run['run_id']}: outputs not downloaded (orchestrate download {run['run_id']}); "
                                 "its metrics are the ledger's summary, where it has one"))
    return notes


def _parameter_text(value):
    if value is None:
        return "(default)"
    if value is True:
        return "yes"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _metric_text(value, metric, unit):
    text = f"{value:.{metric.digits}f}"
    return f"{text} {unit}" if metric.key == "cost" and unit else text


def cost_line(cost):
    """The `runs show` line of a run's estimated cost (Run.cost(): Backend.cost's dict, shaped by the
    Azure backend's cost_estimate, the one backend that prices its runs): the amount, and how it was
    estimated."""
    if cost.get("amount") is None:
        return f"cost       unknown ({cost.get('error', 'no price')})"
    tier = "low-priority" if cost["tier"] == "low_priority" else "dedicated"
    if "trials" in cost:
        ran = f"{cost['trials']} trial(s), {cost['hours']:.2f} h in all x 1 node each"
    else:
        ran = f"{cost['hours']:.2f} h x {cost['nodes']} node(s)"
    idle = (f" + {cost['idle_minutes']:g} min idle before scale-down x {cost['idle_nodes']} node(s)"
            if cost.get("idle_nodes") else "")
    still = "" if cost.get("final", True) else " so far"
    return (f"cost       ~{cost['amount']:.2f} {cost['currency']}{still} (estimate, not the bill: {ran}{idle} = "
            f"{cost['node_hours']:.2f} node-h x {cost['per_node_hour']:.3f} {cost['currency']}/h {tier} "
            f"{cost['size']}, Linux, {cost['location']}; run time from Azure ML's run records)")
