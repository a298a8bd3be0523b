"""Starting, following and finishing runs: what every backend shares.

Backends only start jobs and hand back raw log lines; this module writes the run folder and
the ledger row, parses events, renders them, detaches on Ctrl-C and records the outcome.
"""
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from .backends.base import COMPLETED, FAILED, QUEUED, TERMINAL, JobSpec, RunRef
from .events import parse_line
from .ledger import RunRecord

SUMMARY_METRICS = ("accuracy", "macro_accuracy", "log_loss")


class Detached(Exception):
    """The user pressed Ctrl-C while following: the job goes on, the client leaves."""


@dataclass
class Outcome:
    status: str
    exit_code: int = None
    error: str = ""
    metrics: dict = None


def new_run_id(name):
    """A readable, sortable, unique id: <name>-<yyyymmdd-hhmmss>-<4 hex>."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "run"
    return f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def make_spec(data, train_args, backend_options, name, runs_dir):
    """The JobSpec of a new run (nothing is created yet: `--dry-run` stops here)."""
    run_id = new_run_id(name)
    return JobSpec(run_id=run_id, data=Path(data).resolve(), run_dir=(Path(runs_dir) / run_id).resolve(),
                   train_args=list(train_args), backend_options=dict(backend_options))


def start(backend, ledger, spec, name):
    """Prepare the backend, record the run, write runs/<id>/spec.json and submit the job.

    The ledger row comes first, so a job never runs without one: if the submit fails, the
    row says so.
    """
    backend.prepare(spec)
    ledger.add(RunRecord(run_id=spec.run_id, name=name, backend=backend.name, status=QUEUED,
                         dataset=str(spec.data), run_dir=str(spec.run_dir),
                         params={"train_args": spec.train_args, "backend_options": spec.backend_options}))
    try:
        (spec.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (spec.run_dir / "spec.json").write_text(
            json.dumps({"backend": backend.name, **spec.to_json()}, indent=2) + "\n")
        run = backend.submit(spec)
    except BaseException:
        ledger.update(spec.run_id, status=FAILED)
        raise
    ledger.update(spec.run_id, remote_id=run.remote_id)
    return run


def run_ref(record):
    return RunRef(record.run_id, record.backend, Path(record.run_dir), record.remote_id)


def follow(backend, run, ledger, renderer, until_end=True):
    """Render the run's events until it ends, then record and return its Outcome.

    Every follower renders the log from its start (cursor 0), so a client that re-attaches
    shows the whole run, each event exactly once; Ctrl-C raises Detached and leaves the job
    running. Without `until_end`, it renders what is logged so far and returns the current state.
    """
    run_end = None
    try:
        for line in backend.log_lines(run, 0, follow=until_end):
            event = parse_line(line.text)
            if event is None:
                renderer.line(line.text)
                continue
            renderer.event(event)
            if event.get("type") == "run_end":
                run_end = event
    except KeyboardInterrupt:
        raise Detached(run.run_id) from None
    finally:
        renderer.close()
    return finish(backend, run, ledger, run_end)


def finish(backend, run, ledger, run_end=None, download=True):
    """Record a run's final status, metrics and exit code (fetching outputs of a completed run).

    A run the ledger already holds as ended keeps its record: only the first finish writes it.
    """
    run_end = run_end or {}
    record = ledger.get(run.run_id)
    if record.status in TERMINAL:
        return Outcome(record.status, record.exit_code, run_end.get("error") or "", read_metrics(run.run_dir))
    status = backend.status(run)
    if status not in TERMINAL:
        if status != record.status:
            ledger.update(run.run_id, status=status)
        return Outcome(status)
    if status == COMPLETED and download:
        backend.download(run, run.run_dir / "outputs")
    metrics = read_metrics(run.run_dir)
    exit_code = run_end.get("exit_code")
    if exit_code is None:
        exit_code = backend.exit_code(run)
    ledger.update(run.run_id, status=status, exit_code=exit_code,
                  metrics={k: metrics[k] for k in SUMMARY_METRICS if k in metrics} if metrics else {})
    return Outcome(status, exit_code, run_end.get("error") or "", metrics)


def read_metrics(run_dir):
    path = Path(run_dir) / "outputs" / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
