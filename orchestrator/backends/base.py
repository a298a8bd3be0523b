"""The backend interface (DESIGN.md 4.3), in the style of SkyPilot's Backend.

Lifecycle: prepare(spec) -> submit(spec) -> RunRef -> log_lines(run, cursor) -> status /
cancel / download. Backends differ only where the world differs: event parsing, rendering,
the ledger and the output layout are shared (orchestrator/runner.py).
"""
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Run states, the same words for every backend and in the ledger.
QUEUED, RUNNING, COMPLETED, FAILED, CANCELED = "queued", "running", "completed", "failed", "canceled"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELED})


@dataclass
class JobSpec:
    """Everything a backend needs to run one training job.

    `train_args` are the train.py flags (without --data/--output/--checkpoint-dir, which each
    backend maps to its own paths); `backend_options` holds backend-specific settings
    (docker: base_image, gpus, cpus, memory; azure: compute, nodes ...).
    """
    run_id: str
    data: Path
    run_dir: Path
    train_args: list
    backend_options: dict = field(default_factory=dict)

    @property
    def output_dir(self):
        return self.run_dir / "outputs"

    @property
    def log_path(self):
        return self.run_dir / "logs" / "train.log"

    def to_json(self):
        data = asdict(self)
        data["data"], data["run_dir"] = str(self.data), str(self.run_dir)
        return data


@dataclass
class RunRef:
    """A handle on a submitted run: enough to find it again from another process."""
    run_id: str
    backend: str
    run_dir: Path
    remote_id: str = ""  # pid, container id, Azure ML job name


@dataclass
class LogLine:
    """One line of the job's output and the cursor to resume right after it."""
    text: str
    cursor: int


class Backend(ABC):
    name = ""

    @abstractmethod
    def prepare(self, spec):
        """Make the backend ready for `spec`: idempotent (build image, provision, stage data).

        Raises UserError with a one-line reason when the backend cannot run here.
        """

    @abstractmethod
    def submit(self, spec):
        """Start the job and return its RunRef without waiting for it."""

    @abstractmethod
    def log_lines(self, run, cursor=0, follow=True):
        """Yield LogLine objects from `cursor` on; with follow, until the run is terminal.

        The cursor is opaque (bytes for a log file, lines for a container log): resuming from
        the cursor of the last line seen shows nothing twice.
        """

    @abstractmethod
    def status(self, run):
        """One of QUEUED, RUNNING, COMPLETED, FAILED, CANCELED."""

    def exit_code(self, run):
        """The job's exit code once it has ended, when the backend knows it; else None.

        The runner falls back on it when a job died without emitting its run_end event
        (killed by a signal, out of memory).
        """
        return None

    @abstractmethod
    def cancel(self, run):
        """Stop the run (graceful, then forced) and record it as canceled."""

    @abstractmethod
    def download(self, run, dest):
        """Put the job's outputs (job contract 4.1) into `dest`; no-op when already there."""
