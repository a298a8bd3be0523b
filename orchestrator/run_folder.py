"""The run folder (runs/<run-id>/): the one place that knows its file names.

    runs/<run-id>/
      spec.json          what the run was started with (JobSpec + the backend's name)
      logs/train.log     the job's output, every attempt of a resumed run
      checkpoints/       last.pt / best.pt, which train.py resumes from
      outputs/           the job's outputs (job contract, DESIGN.md 4.1): model.onnx, labels.json,
                         metrics.json, history.jsonl, predictions.csv; a search's search.json and trials/
      azure.json         an Azure ML run's job name, workspace and output paths (no secret)
      container.json     a Docker run's end: exit code, status, container id, OOM kill
      exit_code          a local run's end: the job's exit code (local_job writes it)
      cancel_requested   the marker of a cancel asked for, so an end after it counts as canceled
      report.html        `orchestrate report`

Backends, the SDK, the report and the comparison read and write these files through RunFolder,
so a file name changes in one place. Every write is durable and atomic (write_atomically): a
crash leaves the old file or the new one, never half of one.

Example:
    >>> folder = RunFolder("runs/digits-20261123-101500-ab12")
    >>> folder.metrics()["accuracy"]
    0.97
"""
import fcntl
import json
import os
from pathlib import Path

from remote_scripts.atomic import write_atomically
from remote_scripts.search_space import SEARCH_FILE

from .errors import UsageError
from .events import parse_line

SPEC = "spec.json"
LOGS = "logs"
LOG = "train.log"
CHECKPOINTS = "checkpoints"
OUTPUTS = "outputs"
BACKEND_STATE = "azure.json"
CONTAINER_STATE = "container.json"
EXIT_CODE = "exit_code"
CANCEL_REQUESTED = "cancel_requested"
REPORT = "report.html"
# the job's outputs, as the job contract names them
MODEL, LABELS, METRICS = "model.onnx", "labels.json", "metrics.json"
HISTORY, PREDICTIONS = "history.jsonl", "predictions.csv"
TRIALS = "trials"


class RunFolder:
    """One run's folder on this machine; nothing is created until something is written."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self):
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def containing(cls, path):
        """The run folder that `path` names: a run folder, or its outputs/ folder; None when `path`
        is neither (a bare folder of outputs, e.g. copied elsewhere, is a folder of outputs only)."""
        path = Path(path)
        if path.name == OUTPUTS and (path.parent / SPEC).is_file():
            return cls(path.parent)
        return cls(path) if (path / SPEC).is_file() else None

    # -- where things are ----------------------------------------------------------------------
    @property
    def spec_path(self):
        return self.path / SPEC

    @property
    def logs(self):
        return self.path / LOGS

    @property
    def log_path(self):
        return self.logs / LOG

    @property
    def checkpoints(self):
        return self.path / CHECKPOINTS

    @property
    def outputs(self):
        return self.path / OUTPUTS

    def output(self, name):
        """The path of the output file `name` (MODEL, LABELS, METRICS...)."""
        return self.outputs / name

    @property
    def report_path(self):
        return self.path / REPORT

    @property
    def backend_state_path(self):
        return self.path / BACKEND_STATE

    @property
    def container_state_path(self):
        return self.path / CONTAINER_STATE

    @property
    def exit_code_path(self):
        return self.path / EXIT_CODE

    @property
    def cancel_marker(self):
        return self.path / CANCEL_REQUESTED

    def trial(self, trial):
        """The run folder of a search's trial `trial` (t01...), which came with the search's outputs."""
        return RunFolder(self.outputs / TRIALS / trial)

    # -- writing -------------------------------------------------------------------------------
    def create(self):
        """Make the folder and the ones a job writes into (logs, outputs, checkpoints)."""
        for sub in (self.logs, self.outputs, self.checkpoints):
            sub.mkdir(parents=True, exist_ok=True)

    def write_spec(self, spec):
        """Record `spec` (a JSON-ready dict) as spec.json."""
        write_atomically(self.spec_path, json.dumps(spec, indent=2) + "\n")

    def write_backend_state(self, state):
        """Record the backend's state of the run (azure.json: job name, workspace, output paths)."""
        write_atomically(self.backend_state_path, json.dumps(state, indent=2) + "\n")

    def update_backend_state(self, **changes):
        """Set `changes` in the backend's state, keeping every other field as it is on disk now:
        the file is read again and written under a lock on the run folder, so two processes that
        each add a field (a submit its Studio URL, `runs show` a cached price, `register` its
        assets) do not drop each other's. Returns the state written."""
        descriptor = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            state = {**(self.backend_state() or {}), **changes}
            self.write_backend_state(state)
            return state
        finally:
            os.close(descriptor)  # and the lock with it

    # -- reading -------------------------------------------------------------------------------
    def spec(self, strict=True):
        """spec.json as a dict; None when missing; UsageError naming the file when it is damaged
        (with `strict`, else None)."""
        return read_json_object(self.spec_path, strict)

    def backend_state(self):
        """azure.json as a dict, None when it is missing or unreadable."""
        return read_json_object(self.backend_state_path)

    def metrics(self, strict=False):
        """outputs/metrics.json as a dict; None when it is missing, or unreadable or not a JSON object
        (with `strict`: a UsageError naming the file instead)."""
        return read_json_object(self.output(METRICS), strict)

    def search(self):
        """outputs/search.json of a search, or None when there is none (yet); UsageError when damaged."""
        return read_json_object(self.output(SEARCH_FILE), strict=True)

    def history(self):
        """outputs/history.jsonl's rows, one JSON object per epoch with its epoch number; [] when the
        file is missing. UsageError naming the file (and line) when it is damaged."""
        path = self.output(HISTORY)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path} is unreadable: {exc}") from None
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise UsageError(f"{path} is unreadable: line {number}: {exc}") from None
            epoch = row.get("epoch") if isinstance(row, dict) else None
            if not isinstance(epoch, int) or isinstance(epoch, bool):
                raise UsageError(f"{path} is damaged: line {number} is not an epoch's row (a JSON object with an "
                                 "integer \"epoch\")")
            rows.append(row)
        return rows

    def log_events(self):
        """The progress events of logs/train.log in order, every attempt of a resumed run; None when
        the run folder has no log (an Azure ML run's log stays in the workspace)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return [event for event in map(parse_line, log) if event]
        except OSError:
            return None

    def output_files(self):
        """{name: path} of the job's outputs that are here."""
        return {name: str(self.output(name)) for name in (MODEL, LABELS, METRICS, HISTORY, PREDICTIONS)
                if self.output(name).exists()}


def read_json_object(path, strict=False):
    """The JSON object in the file `path`; None when the file is missing, or unreadable or not an
    object (with `strict`: a UsageError naming the file instead)."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # a bad UTF-8 byte is a ValueError too
        if strict:
            raise UsageError(f"{path} is unreadable: {exc}") from None
        return None
    if not isinstance(value, dict):
        if strict:
            raise UsageError(f"{path} is damaged: it holds a JSON {type(value).__name__}, not an object")
        return None
    return value
