"""Starting, following and finishing runs: what every backend shares.

Backends only start jobs and hand back raw log lines; this module writes the run folder and
the ledger row, parses events, passes them on and records the outcome.
"""
import fcntl
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from remote_scripts.metrics import HEADLINE_METRICS

from .backends.base import COMPLETED, FAILED, QUEUED, RUNNING, SCORE, TERMINAL, JobSpec, RunRef
from .errors import UsageError
from .events import parse_line
from .ledger import RunRecord
from .run_folder import RunFolder


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


def make_spec(data, train_args, backend_options, name, runs_dir, trials=None, quantize=None):
    """The JobSpec of a new run, a search with `trials` (nothing is created yet: `--dry-run` stops here);
    `quantize`: what Run.wait does once it completes (JobSpec.quantize)."""
    run_id = new_run_id(name)
    return JobSpec(run_id=run_id, data=Path(data).resolve(), run_dir=(Path(runs_dir) / run_id).resolve(),
                   train_args=list(train_args), backend_options=dict(backend_options), trials=trials,
                   quantize=quantize)


def start(backend, ledger, spec, name):
    """Prepare the backend, record the run, write runs/<id>/spec.json and submit the job.

    The ledger row comes first, so a job never runs without one: if the submit fails, the
    row says so.
    """
    if spec.kind not in backend.kinds:
        raise UsageError(f"the {backend.name} backend runs no {spec.kind} jobs")
    backend.prepare(spec)
    planned = backend.planned_remote_id(spec)
    if spec.kind == SCORE:
        params = {"score": spec.score}
    else:
        params = {"train_args": spec.train_args, "backend_options": spec.backend_options}
    if spec.trials is not None:
        params["trials"] = spec.trials
    ledger.add(RunRecord(run_id=spec.run_id, name=name, backend=backend.name, status=QUEUED,
                         dataset=str(spec.data), run_dir=str(spec.run_dir), remote_id=planned or "", params=params))
    try:
        folder = RunFolder(spec.run_dir)
        folder.logs.mkdir(parents=True, exist_ok=True)
        folder.write_spec({"backend": backend.name, **spec.to_json()})
        run = backend.submit(spec)
    except BaseException:
        # With a planned remote id (Azure: the job name) the job may exist although the submit
        # was interrupted: the row stays queued with that id, and the next `status` asks the
        # service (a job that was never created is recorded as failed then).
        if not planned:
            ledger.update(spec.run_id, status=FAILED)
        raise
    ledger.update(spec.run_id, remote_id=run.remote_id)
    return run


def read_spec(run_dir, run_id):
    """The JobSpec that runs/<id>/spec.json recorded when the run started."""
    path = RunFolder(run_dir).spec_path
    try:
        return JobSpec.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UsageError(f"run {run_id} cannot be resumed: {path} is missing") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"run {run_id} cannot be resumed: {path} is unreadable ({type(exc).__name__}: {exc})") from None


def resume(backend, ledger, record):
    """Start a killed, canceled or failed run again in its own folder; the new attempt's RunRef.

    Same spec.json (data, split, hyperparameters, checkpoints folder), so train.py continues from
    its last checkpoint. A completed run and a live one are refused. The ledger keeps one row for
    the run: status back to running, one more attempt, the earlier attempt's exit code cleared.
    The spec file stays locked meanwhile, so two concurrent resumes cannot start two jobs on the
    same checkpoints (the second one finds the first one's job running).
    """
    if not backend.resumable:
        from .backends import BACKENDS, backend_class

        resumable = " and ".join(name for name in BACKENDS if backend_class(name).resumable)
        raise UsageError(f"--resume works for {resumable} runs, not {backend.name} ones ({backend.not_resumable})")
    if record.status == COMPLETED:
        raise UsageError(f"run {record.run_id} has completed: there is nothing to resume")
    if "trials" in record.params:  # (a trial is refused before: it has no job of its own)
        raise UsageError(f"run {record.run_id} is a search, whose trials start from the beginning: "
                        "start the search again")
    run = RunRef.of(record)
    spec = read_spec(run.run_dir, record.run_id)
    with open(RunFolder(run.run_dir).spec_path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"run {record.run_id} is being resumed by another client") from None
        status = backend.status(run)
        if status == COMPLETED:
            raise UsageError(f"run {record.run_id} has completed: there is nothing to resume")
        if status not in TERMINAL:
            raise UsageError(f"run {record.run_id} is still {status}: follow it with 'orchestrate logs {record.run_id}'")
        if not spec.data.is_dir():
            raise UsageError(f"the dataset of run {record.run_id} is gone: {spec.data}")
        backend.prepare(spec)
        try:
            resumed = backend.resume(spec, run)
        except BaseException:
            ledger.update(record.run_id, status=FAILED)
            raise
        ledger.update(record.run_id, status=RUNNING, remote_id=resumed.remote_id, exit_code=None,
                      attempts=record.attempts + 1)
    return resumed


def follow(backend, run, ledger, on_event, on_line, timeout=None):
    """Pass the run's events to `on_event` (its other lines to `on_line`) until it ends, then record
    and return its Outcome.

    Every follower reads the log from its start (cursor 0), so a client that re-attaches sees the
    whole run, each event exactly once; KeyboardInterrupt leaves the job running. With `timeout`
    (seconds) it stops following then and returns the current state (0: what is logged so far).
    A resumed run's log holds every attempt: the backend follows until the last attempt ends, and
    only the last attempt's run_end tells the outcome (a later run_start voids an earlier run_end,
    so a killed last attempt, which wrote none, is not reported with the canceled one's exit code).
    """
    run_end = None
    for line in _lines(backend, run, timeout):
        event = parse_line(line.text)
        if event is None:
            on_line(line.text)
            continue
        on_event(event)
        if event.get("type") == "run_start":
            run_end = None
        elif event.get("type") == "run_end":
            run_end = event
    return finish(backend, run, ledger, run_end)


def _lines(backend, run, timeout):
    """The run's log lines: followed to the end, or, with `timeout`, read as they come until then."""
    if timeout is None:
        yield from backend.log_lines(run, 0, follow=True)
        return
    deadline, cursor = time.monotonic() + timeout, 0
    while True:
        for line in backend.log_lines(run, cursor, follow=False):
            cursor = line.cursor
            yield line
        if backend.status(run) in TERMINAL or time.monotonic() >= deadline:
            yield from backend.log_lines(run, cursor, follow=False)  # what came before the end
            return
        time.sleep(min(backend.poll_seconds, max(0.0, deadline - time.monotonic())))


def finish(backend, run, ledger, run_end=None, download=True):
    """Record a run's final status, metrics and exit code (fetching outputs of a completed run).

    A run the ledger already holds as ended keeps its record: only the first finish writes it.
    A search's trials are recorded from its search.json whenever that is there: an Azure ML
    search's comes with its outputs, which `status` does not download (fetch_outputs does).
    """
    run_end = run_end or {}
    record = ledger.get(run.run_id)
    if record.status in TERMINAL:
        outcome = Outcome(record.status, record.exit_code, run_end.get("error") or "", RunFolder(run.run_dir).metrics())
    else:
        status = backend.status(run)
        if status not in TERMINAL:
            if status != record.status:
                ledger.update(run.run_id, status=status)
            return Outcome(status)
        if status == COMPLETED and download:
            backend.download(run, RunFolder(run.run_dir).outputs)
        metrics = RunFolder(run.run_dir).metrics()
        exit_code = run_end.get("exit_code")
        if exit_code is None:
            exit_code = backend.exit_code(run)
        ledger.update(run.run_id, status=status, exit_code=exit_code,
                      metrics={k: metrics[k] for k in HEADLINE_METRICS if k in metrics} if metrics else {})
        error = run_end.get("error") or (backend.error(run) if status == FAILED else None) or ""
        outcome = Outcome(status, exit_code, error, metrics)
    _record_trials(ledger, record)
    return outcome


def fetch_outputs(backend, ledger, record):
    """Download a run's outputs into its folder (the commands that need them and find them missing);
    a search's trials become ledger runs from the search.json that comes with them."""
    backend.download(RunRef.of(record), record.output_dir)
    _record_trials(ledger, record)


def _record_trials(ledger, record):
    if "trials" in record.params:
        from .search import record_trials

        record_trials(ledger, record)
