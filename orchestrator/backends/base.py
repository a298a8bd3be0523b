"""The backend interface (DESIGN.md 4.3), in the style of SkyPilot's Backend.

Lifecycle: prepare(spec) -> submit(spec) -> RunRef -> log_lines(run, cursor) -> status /
cancel / download, and resume(spec, run) where a backend can start an ended run again.
Backends differ only where the world differs: event parsing, rendering, the ledger and the
output layout are shared (orchestrator/runner.py). Each backend declares its options (`options`,
BackendOption each): train() checks them and the CLI generates its flags from them. It also says
itself when `--backend auto` takes it (auto_choice) and whether it has a dry run (plan), so the
SDK's one caller names no backend.
"""
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path

from remote_scripts.options import Option
from remote_scripts.search_space import trials_argument

from ..errors import UsageError
from ..events import ignore
from ..run_folder import RunFolder

# Run states, the same words for every backend and in the ledger.
QUEUED, RUNNING, COMPLETED, FAILED, CANCELED = "queued", "running", "completed", "failed", "canceled"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELED})


# The kinds of job, each with what it submits and what its outputs are: a training run (a search:
# a training run with trials) writes the job contract's outputs (DESIGN.md 4.1: model.onnx,
# labels.json, metrics...); a score job scores images with a model and writes prediction rows.
TRAIN, SCORE = "train", "score"


@dataclass
class JobSpec:
    """Everything a backend needs to run one job, of kind TRAIN or SCORE.

    `train_args` are the train.py flags (without --data/--output/--checkpoint-dir, which each
    backend maps to its own paths); `backend_options` holds backend-specific settings
    (docker: base_image, gpus, cpus, memory; azure: compute, nodes ...). A score job's settings
    are `score` (the backend's plan of it, as JSON); its data may be a URI rather than a folder.
    """
    run_id: str
    data: Path
    run_dir: Path
    train_args: list
    backend_options: dict = field(default_factory=dict)
    # A search (`train --search`): the configurations to try, {option dest: value} each, in order
    # (remote_scripts/search_space.py); train_args are then what every trial shares and
    # --time-budget is the whole search's. None: one training run.
    trials: list = None
    kind: str = TRAIN
    score: dict = None
    # A setting of the client, no backend's: "int8" has Run.wait write the run's int8 model on this
    # machine once the run completes (orchestrator.quantize); None: no quantizing.
    quantize: str = None

    @property
    def output_dir(self):
        return RunFolder(self.run_dir).outputs

    @property
    def log_path(self):
        return RunFolder(self.run_dir).log_path

    def to_json(self):
        data = asdict(self)
        data["data"], data["run_dir"] = str(self.data), str(self.run_dir)
        return data

    @classmethod
    def from_json(cls, data):
        """The spec that runs/<id>/spec.json records (the inverse of to_json; other keys ignored).
        Runs started before quantize had a field of its own kept it among their backend_options."""
        backend_options = dict(data.get("backend_options") or {})
        quantize = data.get("quantize") or backend_options.pop("quantize", None)
        return cls(run_id=data["run_id"], data=data["data"] if "://" in data["data"] else Path(data["data"]),
                   run_dir=Path(data["run_dir"]), train_args=list(data["train_args"]),
                   backend_options=backend_options, trials=data.get("trials"),
                   kind=data.get("kind", TRAIN), score=data.get("score"), quantize=quantize)


@dataclass(frozen=True)
class BackendOption(Option):
    """One option of a backend's jobs, declared by the backend that takes it (docker: --cpus).

    The job's options (remote_scripts/options.py) go to train.py; these stay with the backend, in
    JobSpec.backend_options. A str option may give its form as a regular expression (`pattern`,
    matched against the lower-cased text) and in words (`form`) for the message.
    """
    pattern: str = None
    form: str = None

    def check(self, value):
        if self.pattern and value is not None and not re.fullmatch(self.pattern, str(value).lower()):
            return f"{self.flag} must be {self.form}, not {value!r}"
        return super().check(value)

    def problem(self, value):
        """As Option.problem; a text option with a form takes a number as its text too (gpus=2)."""
        if self.pattern and isinstance(value, int) and not isinstance(value, bool):
            return self.check(value)
        return super().problem(value)


# The options of a job that launch_command starts (the local and docker backends).
GPUS = BackendOption("--gpus", "str", None, "all, N or none; one training process per GPU when more than one "
                     "[default: all (docker: when a GPU runtime is present)]", pattern=r"auto|all|none|[1-9]\d*",
                     form="all, none or a positive count")
NPROC = BackendOption("--nproc", "int", None, "training processes (DDP; on CPUs too) [default: one per GPU, at "
                      "least one]", low=1)
LAUNCH_OPTIONS = (GPUS, NPROC)


@dataclass
class RunRef:
    """A handle on a submitted run: enough to find it again from another process."""
    run_id: str
    backend: str
    run_dir: Path
    remote_id: str = ""  # pid, container id, Azure ML job name

    @classmethod
    def of(cls, record):
        """The RunRef of a ledger row (orchestrator.ledger.RunRecord)."""
        return cls(record.run_id, record.backend, Path(record.run_dir), record.remote_id)


@dataclass
class LogLine:
    """One line of the job's output and the cursor to resume right after it."""
    text: str
    cursor: int


class Backend(ABC):
    name = ""
    title = ""  # how messages name the backend ("Azure ML option(s)"); its name when empty
    # Whether resume() can start an ended run again in its own folder (`orchestrate train --resume`),
    # and, where it cannot, why not (or what does it instead).
    resumable = False
    not_resumable = "its runs cannot be started again"
    # The backend's options (BackendOption each), in the order `orchestrate train --help` lists them
    # (a backend that runs score jobs declares theirs beside them: azure/score_job.SCORE_OPTIONS).
    options = ()
    # What the backend reads from a job's options beside its `options`, {dest: flag}, each a string
    # declared where it is resolved (azure: the workspace, its settings module): train() accepts them,
    # and, like an option no other backend declares, any of them given means this backend.
    setting_flags = {}
    # How often a caller that follows a run with a deadline (Run.wait(timeout=...)) reads log_lines again.
    poll_seconds = 1.0
    # A dry run, where the backend can describe a job without starting it: a classmethod
    # plan(spec, export=None, on_event=ignore) -> orchestrator.plan.Plan that creates nothing (export:
    # also write the job to that file). None: `--dry-run` and `--export` are refused for this backend.
    plan = None

    def __init__(self, on_event=None, approve=None):
        """on_event: receives the backend's progress as event dicts (orchestrator.events); approve:
        asked approve(question) before the backend creates something that costs (a compute cluster):
        False or an exception stops it; None creates without asking. Every backend takes both, so
        one caller makes any of them (backends.get_backend)."""
        self.on_event = on_event or ignore
        self.approve = approve

    @classmethod
    def auto_choice(cls, options, named=False):
        """Whether `--backend auto` takes this backend for a job with `options` (JobSpec.backend_options,
        the given ones): the line to tell the user ("" for none), or None to try the next backend
        (backends.auto_order). With `named` the backend is taken anyway (the user named it, or gave an
        option only it has): the line, or None, or UsageError when it cannot run the job here (a
        missing setting), before anything is created. Asks no service beyond a local check."""
        return "" if named else None

    @classmethod
    def settings(cls, backend_options):
        """{dest: value} of every option of this backend: the value given in `backend_options` (a
        JobSpec's, a recorded spec.json's), checked, else the option's default. UsageError naming
        the first bad value."""
        settings = {}
        for option in cls.options:
            value = backend_options.get(option.dest)
            problem = option.problem(value)
            if problem:
                raise UsageError(problem)
            settings[option.dest] = option.default if value is None else value
        return settings

    def needs_client_weights(self, spec):
        """Whether the client fetches the ImageNet weights the job loads into its torch hub cache
        before the submit: the job reads that cache (a local process, a container that has no
        network), or the weights travel with the job."""
        return True

    @abstractmethod
    def prepare(self, spec):
        """Make the backend ready for `spec`: idempotent (build image, provision, stage data).

        Raises UsageError with a one-line reason when the backend cannot run here.
        """

    @abstractmethod
    def submit(self, spec):
        """Start the job and return its RunRef without waiting for it."""

    kinds = frozenset({TRAIN})  # the kinds of job this backend runs

    def planned_remote_id(self, spec):
        """The remote id the submit of `spec` will use, when it is known beforehand (else None):
        the ledger records it before the submit, so an interrupted submit leaves a findable job."""
        return None

    @abstractmethod
    def log_lines(self, run, cursor=0, follow=True):
        """Yield LogLine objects from `cursor` on; with follow, until the run is terminal.

        The cursor is opaque (bytes for a log file, lines for a container log): resuming from
        the cursor of the last line seen shows nothing twice.
        """

    @abstractmethod
    def status(self, run):
        """One of QUEUED, RUNNING, COMPLETED, FAILED, CANCELED."""

    def error(self, run):
        """Why a failed run failed, as the backend's service tells it ("code: message"), when the
        job itself could not say it (no run_end event); else None."""
        return None

    def exit_code(self, run):
        """The job's exit code once it has ended, when the backend knows it; else None.

        The runner falls back on it when a job died without emitting its run_end event
        (killed by a signal, out of memory).
        """
        return None

    @abstractmethod
    def cancel(self, run):
        """Stop the run (graceful, then forced) and record it as canceled."""

    def resume(self, spec, run):
        """Start the job of `run`, which has ended without completing, again in its run folder.

        train.py finds its last checkpoint in the run's checkpoints folder and continues from it.
        Whatever marks the earlier attempt as ended (an exit code, a cancel marker) is cleared
        first, so the new attempt is not taken for ended, and log_lines yields the earlier
        attempts' lines before the new ones, cursors continuing. Returns the new attempt's RunRef.
        Called by runner.resume only where `resumable`, after it checked that the run has ended.
        """
        raise NotImplementedError(f"the {self.name} backend cannot resume runs")

    def cost(self, record):
        """The estimated cost of the run of ledger row `record`: {"amount", "currency", ...}, or
        {"error": why} when it cannot be told; None where a run costs nothing to estimate (a local
        process, a local container)."""
        return None

    def register(self, record, model_name=None, data_name=None):
        """Register the completed run's model (and dataset) in the backend's model registry and
        return what was registered; UsageError for a backend that has none."""
        raise UsageError(f"run {record.run_id} ran on the {self.name} backend: only Azure runs can be "
                         "registered as Azure ML assets")

    @abstractmethod
    def download(self, run, dest):
        """Put the job's outputs (job contract 4.1) into `dest`; no-op when already there."""


def launch_command(python, scripts_dir, job_args, nproc=None, gpus=None, trials=None):
    """The command of a local or Docker job: remote_scripts/launch.py in `scripts_dir`, which runs
    train.py with `job_args` in one process, or in one per GPU (or `nproc`) under torch's elastic
    agent. The job decides, not this client: only it can count the GPUs it was given.
    With `trials` (a search, JobSpec.trials) it runs search.py instead, in one process."""
    command = [python, "-u", f"{str(scripts_dir).rstrip('/')}/launch.py"]
    if nproc is not None:
        command += ["--nproc", str(nproc)]
    if gpus is not None:
        command += ["--gpus", str(gpus)]
    if trials is not None:
        return [*command, "--entry", "search", "--", *job_args, "--trials", trials_argument(trials)]
    return [*command, "--", *job_args]
