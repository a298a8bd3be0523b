"""Run: one training run (or search) on any backend, from Python.

A Run is a handle on a ledger row: cheap to make, valid in another process or another day. What
it knows comes from the run folder (orchestrator.run_folder) and, for what only the job's
backend can tell (status, logs, outputs of a remote run), from the backend.

Example:
    >>> import orchestrator
    >>> run = orchestrator.train("./digits", backend="local", epochs=3, weights="none", image_size=32)
    >>> run.wait(progress=True).metrics["accuracy"]
    0.91
    >>> run.model().predict("seven.png")[0].label
    '7'
"""
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from .backends.base import CANCELED, COMPLETED, SCORE, TERMINAL, TRAIN, JobSpec, RunRef
from .errors import JobFailed, UsageError
from .events import OnEvent, ignore, parse_line
from .run_folder import LABELS, METRICS, MODEL, RunFolder

if TYPE_CHECKING:
    from .model import Model

OnLine = Callable[[str], None]


class Run:
    """A run recorded in the ledger: get one from orchestrator.train, orchestrator.runs.get or
    orchestrator.runs.list. Its repr shows the status as last recorded; `status` asks.

    Attributes: `id`, `name`, `backend` ("local", "docker" or "azure"), `folder` (the run folder on
    this machine), `dataset`, `params` (the job's arguments and backend options), `search_id` (a
    trial's search, "" for other runs), `exit_code` and `error` (once it has ended).

    Example:
        >>> run = orchestrator.runs.get("digits-2026")
        >>> run.id, run.backend, run.folder
        ('digits-20261207-101500-ab12', 'local', PosixPath('runs/digits-20261207-101500-ab12'))
    """

    def __init__(self, record, ledger=None):
        from .ledger import Ledger

        self._ledger = ledger or Ledger()
        self._record = record
        self.error = ""
        self.registered = None  # the Azure ML assets wait() registered (register=True), else None
        self.quantized = None  # the QuantizeResult of wait() for a run started with quantize="int8", else None

    def __repr__(self):
        return f"Run({self.id!r}, backend={self.backend!r}, status={self._record.status!r})"

    @property
    def id(self) -> str:
        """The run id, e.g. digits-20261207-101500-ab12."""
        return self._record.run_id

    @property
    def name(self) -> str:
        """The run's name (the id starts with it)."""
        return self._record.name

    @property
    def backend(self) -> str:
        """"local", "docker" or "azure"."""
        return self._record.backend

    @property
    def folder(self) -> Path:
        """The run folder on this machine (orchestrator.run_folder.RunFolder names its files)."""
        return Path(self._record.run_dir)

    @property
    def dataset(self) -> str:
        """The dataset folder (or its packed copy, or a score job's az:// data)."""
        return self._record.dataset

    @property
    def params(self) -> dict:
        """train_args and backend_options (a search's trials; a score job's score)."""
        return dict(self._record.params)

    @property
    def search_id(self) -> str:
        """A trial's search id; "" for other runs."""
        return self._record.search_id

    @property
    def attempts(self) -> int:
        """1 + how many times the run was resumed."""
        return self._record.attempts

    @property
    def exit_code(self) -> Optional[int]:
        """The job's exit code once it ended (else None)."""
        return self._record.exit_code

    @property
    def kind(self) -> str:
        """"train" (a search too) or "score" (an Azure ML score job): what the job did."""
        return SCORE if "score" in self._record.params else TRAIN

    @property
    def is_search(self) -> bool:
        """Whether this run is a search (train(search=True))."""
        return "trials" in self._record.params

    @property
    def status(self) -> str:
        """"queued", "running", "completed", "failed" or "canceled": asked of the backend until the
        run has ended (then it is the ledger's), so it is current, not what the last call saw. A
        trial of a search has the status its search recorded.

        Example:
            >>> run.status
            'running'
        """
        if self._record.status not in TERMINAL and not self.search_id:
            self.refresh()
        return self._record.status

    def refresh(self) -> "Run":
        """Ask the job's backend for the run's status now, recording an end in the ledger; returns
        the run. UsageError for a trial of a search, which has no job of its own.

        Example:
            >>> run.refresh().status
            'completed'
        """
        from .runner import finish

        backend, ref = self._job()
        finish(backend, ref, self._ledger, download=False)
        self._reload()
        return self

    @property
    def metrics(self) -> dict:
        """The test metrics the job wrote (outputs/metrics.json), or the ledger's headline metrics
        of a remote run whose outputs are not downloaded; {} before the run has any.

        Example:
            >>> run.metrics["accuracy"], run.metrics["macro_f1"]
            (0.97, 0.968)
        """
        return RunFolder(self.folder).metrics(strict=True) or dict(self._record.metrics)

    @property
    def history(self) -> list:
        """One dict per epoch (outputs/history.jsonl): epoch, train_loss, val_loss, val_accuracy, lr...

        Example:
            >>> [row["val_accuracy"] for row in run.history]
            [0.71, 0.86, 0.91]
        """
        return RunFolder(self.folder).history()

    def wait(self, timeout: Optional[float] = None, on_event: Optional[OnEvent] = None,
             on_line: Optional[OnLine] = None, progress: bool = False) -> "Run":
        """Follow the run to its end and return it; its events go to `on_event` as they come.

        Every event of the log is passed on from its start, each once (a resumed run's attempts in
        order); `on_line` receives the job's ordinary log lines. `progress=True` shows a progress
        bar that needs no terminal (tqdm.auto: a widget in a notebook). With `timeout` (seconds),
        TimeoutError is raised if the run has not ended by then (`timeout=0`: what is logged now);
        the job goes on either way, as it does on KeyboardInterrupt.

        Raises JobFailed (with `.reason`) for a failed or canceled run, UsageError when the job
        refused its input (exit code 2). A run started with register=True is registered once it
        completes (the assets: `run.registered`); one started with quantize="int8" gets its int8
        model here, on the client, unless its metrics.json already has the figures (the result:
        `run.quantized`; orchestrator.quantize).

        Example:
            >>> run.wait(on_event=lambda e: e["type"] == "epoch_end" and print(e["epoch"], e["val_accuracy"]))
            Run('digits-20261207-101500-ab12', backend='local', status='completed')
        """
        from .runner import follow

        backend, ref = self._job()
        bar = _Progress() if progress else None
        callbacks = [c for c in (on_event, bar and bar.event) if c]
        try:
            outcome = follow(backend, ref, self._ledger, on_event=lambda e: [c(e) for c in callbacks],
                             on_line=on_line or ignore, timeout=timeout)
        finally:
            if bar:
                bar.close()
        self._reload()
        self.error = outcome.error
        if outcome.status not in TERMINAL:
            raise TimeoutError(f"run {self.id} is {outcome.status} after {timeout} s")
        if outcome.status == COMPLETED:
            options = self._record.params.get("backend_options", {})
            if options.get("register"):
                self.registered = self.register()
            started = RunFolder(self.folder).spec(strict=False)  # spec.json: what the run was started with
            if started and JobSpec.from_json(started).quantize and "int8" not in self.metrics:
                from .quantizing import quantize

                self.quantized = quantize(self.id, on_event=on_event)
            return self
        if outcome.status == CANCELED:
            raise JobFailed(f"run {self.id} was canceled", self.id, CANCELED, "canceled")
        if outcome.exit_code == 2 and outcome.error:
            raise UsageError(outcome.error)
        reason = outcome.error or (f"exit code {outcome.exit_code}" if outcome.exit_code is not None else
                                   "the job stopped without reporting why (killed, or out of memory?)")
        raise JobFailed(f"run {self.id} {outcome.status}: {reason} (full log: orchestrate logs {self.id} -v)",
                        self.id, outcome.status, reason)

    def events(self, cursor: int = 0, follow: bool = True) -> Iterator[dict]:
        """The job's progress events (DESIGN.md 4.2) from `cursor` on, parsed; with `follow`, until
        the run ends. Each event carries "cursor": pass it back to resume right after that event.

        Example:
            >>> for event in run.events(follow=False):
            ...     if event["type"] == "epoch_end":
            ...         print(event["epoch"], event["val_accuracy"])
        """
        backend, ref = self._job()
        for line in backend.log_lines(ref, cursor, follow=follow):
            event = parse_line(line.text)
            if event is not None:
                yield {**event, "cursor": line.cursor}

    def logs(self, cursor: int = 0, follow: bool = False) -> Iterator[str]:
        """The job's log lines (its events included, as written) from `cursor` on.

        Example:
            >>> print("\\n".join(run.logs()))
        """
        backend, ref = self._job()
        for line in backend.log_lines(ref, cursor, follow=follow):
            yield line.text

    def cancel(self) -> "Run":
        """Stop the job (gracefully, then forced) and record it as canceled; an ended run is left as it is.

        Example:
            >>> run.cancel().status
            'canceled'
        """
        from .runner import finish

        backend, ref = self._job()
        if backend.status(ref) not in TERMINAL:
            backend.cancel(ref)
            finish(backend, ref, self._ledger)
        self._reload()
        return self

    def resume(self, on_event: Optional[OnEvent] = None) -> "Run":
        """Start a killed, canceled or failed local or docker run again in its folder, from its last
        checkpoint, with its recorded data and settings; returns it (follow it with wait()).

        Raises UsageError for a completed or live run, an Azure run (Azure ML restarts preempted jobs
        itself), or a search.

        Example:
            >>> orchestrator.runs.get("digits-2026").resume().wait()
        """
        from .runner import read_spec, resume
        from .weights import fetch_imagenet_weights

        backend, _ = self._job(on_event=on_event)
        if backend.resumable and self._record.status != COMPLETED:
            # train.py loads the ImageNet weights again before its checkpoint; a container has no network
            fetch_imagenet_weights(read_spec(self.folder, self.id).train_args, on_event or ignore)
        resume(backend, self._ledger, self._record)
        self._reload()
        return self

    def download(self) -> Path:
        """Fetch the outputs of a completed run into its folder's outputs/ (no-op when there) and
        return that folder. UsageError when the run has no outputs.

        Example:
            >>> sorted(p.name for p in run.download().iterdir())
            ['history.jsonl', 'labels.json', 'metrics.json', 'model.onnx', 'predictions.csv']
        """
        from .runner import fetch_outputs

        backend, ref = self._job()
        fetch_outputs(backend, self._ledger, self._record)
        folder = RunFolder(self.folder)
        # a training run's outputs are the job contract's, model.onnx first; a score job's, its rows
        there = folder.output(MODEL).is_file() if self.kind == TRAIN else folder.outputs.is_dir() and any(
            folder.outputs.iterdir())
        if not there:
            raise UsageError(f"run {self.id} has no outputs to download (status: {backend.status(ref)})")
        return folder.outputs

    def model(self) -> "Model":
        """The run's ONNX model (downloaded first when needed), ready to predict.

        Example:
            >>> run.model().predict("seven.png", top_k=3)[0].top_k
            [('7', 0.93), ('1', 0.04), ('9', 0.01)]
        """
        from .model import Model

        return Model(self.id)

    def report(self, path: "str | os.PathLike | None" = None) -> Path:
        """Write the run's HTML report (curves, confusion matrix, worst mistakes) to `path`
        (default: report.html in the run folder) and return its path.

        Example:
            >>> run.report()
            PosixPath('runs/digits-20261207-101500-ab12/report.html')
        """
        from .report import write_report

        if self._record.status == COMPLETED and not RunFolder(self.folder).output(METRICS).is_file():
            self.download()  # a remote run's outputs come to this machine first
        return Path(write_report(self.folder, path))

    def register(self, model_name: Optional[str] = None, data_name: Optional[str] = None) -> dict:
        """Register a completed Azure run's ONNX model (labels and test metrics as tags) and its
        dataset as Azure ML assets; returns {"model": {name, version, path}, "data": {...}}.

        Example:
            >>> run.register(model_name="eurosat-resnet50")["model"]["version"]
            '1'
        """
        from .runner import fetch_outputs

        backend, _ = self._job()  # a trial has no job to register
        if self.backend == "azure" and not RunFolder(self.folder).output(LABELS).is_file():
            fetch_outputs(backend, self._ledger, self._record)
        return backend.register(self._record, model_name, data_name)

    def cost(self) -> Optional[dict]:
        """An Azure run's estimated cost: the nodes of its own record x the time Azure ML's run records say
        they ran (+ 10 idle minutes before scale-down) x the size's hourly price in the
        workspace's region ({"amount", "currency", ...}, or {"error": why} when it cannot be told);
        None for a local or docker run.

        Example:
            >>> run.cost()["amount"]
            1.84
        """
        from .backends import get_backend

        return get_backend(self.backend).cost(self._record)

    def search(self) -> Optional[dict]:
        """A search's result: {"search_id", "primary_metric", "best": {run_id, metrics...}, "trials":
        [...] best first}; None for a run that is no search.

        Example:
            >>> run.search()["best"]["run_id"]
            'digits-20261207-101500-ab12-t03'
        """
        if not self.is_search:
            return None
        from .search import result

        return result(self._record)

    def to_json(self) -> dict:
        """The ledger row as JSON (what `orchestrate runs show --json` starts from)."""
        return self._record.to_json()

    def _job(self, on_event=None):
        """(backend, RunRef) of the run's job; UsageError for a trial, which has none of its own."""
        from .backends import get_backend
        from .run_lookup import refuse_trial

        refuse_trial(self._record)
        return get_backend(self.backend, on_event=on_event or ignore), RunRef.of(self._record)

    def _reload(self):
        self._record = self._ledger.get(self.id)


class _Progress:
    """wait(progress=True): one tqdm.auto bar per phase of the job (a widget in a notebook, a line elsewhere)."""

    def __init__(self):
        from tqdm.auto import tqdm

        self.tqdm, self.bar, self.phase = tqdm, None, None

    def event(self, event):
        kind = event.get("type")
        if kind == "progress":
            phase = event.get("phase")
            if phase != self.phase or self.bar is None:
                self.close()
                self.phase = phase
                self.bar = self.tqdm(total=event.get("total"), desc=str(phase), unit=str(event.get("unit", "")),
                                     leave=False)
            self.bar.update((event.get("done") or 0) - self.bar.n)
            self.bar.set_postfix_str(f"epoch {event['epoch']}" if "epoch" in event else "", refresh=False)
            self.bar.refresh()
        elif kind == "epoch_end":
            self.close()
            self.tqdm.write(f"epoch {event.get('epoch')}: " + ", ".join(
                f"{key.replace('_', ' ')} {event[key]:.4f}" for key in ("train_loss", "val_loss", "val_accuracy")
                if isinstance(event.get(key), (int, float))))
        elif kind == "run_end":
            self.close()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

