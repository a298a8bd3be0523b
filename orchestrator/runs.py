"""The runs this machine knows: find one, list them, compare them.

Every run any backend started is a row of the ledger (orchestrator.ledger), so a run is found
again from any directory, after the process that started it has gone.

Example:
    >>> from orchestrator import runs
    >>> run = runs.get("digits-2026")          # an id, or a unique prefix of one
    >>> [r.id for r in runs.list(limit=3)]
    ['digits-20261207-101500-ab12', ...]
    >>> runs.compare(["digits-20261207-101500-ab12", "digits-20261207-103000-cd34"])["best"]
    {'accuracy': 'digits-20261207-103000-cd34', ...}
"""
import builtins
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from .errors import UsageError
from .run_folder import METRICS
from .run_lookup import folder_for

if TYPE_CHECKING:
    from .run import Run


def get(run_id: str) -> "Run":
    """The run with this id, or the only run whose id starts with it.

    Raises UsageError for an unknown or ambiguous id.

    Example:
        >>> runs.get("digits-2026").status
        'completed'
    """
    from .ledger import Ledger
    from .run import Run

    return Run(Ledger().get(run_id))


def list(limit: int = 50) -> "builtins.list[Run]":
    """The most recent runs, newest first, at most `limit` of them (trials of a search included).

    Example:
        >>> for run in runs.list(5):
        ...     print(run.id, run.status, run.metrics.get("accuracy"))
    """
    from .ledger import Ledger
    from .run import Run

    return [Run(record) for record in Ledger().list(limit)]


def compare(run_ids: "builtins.list[str]") -> dict:
    """Runs side by side (orchestrator.compare.compare): {"runs": [...], "parameters": {name:
    {"values": {run_id: value}, "differs"}}, "metrics": {key: {"label", "better", "values"}},
    "best": {key: {"value", "runs": [run_id...]}}}. A search's id stands for all its trials. Only
    what is on this machine is read: outputs are not downloaded for this.

    Raises UsageError for fewer than two runs, an unknown id, or a run named twice.

    Example:
        >>> runs.compare(["digits-20261207-101500-ab12", "digits-20261207-103000-cd34"])["best"]["accuracy"]
        {'value': 0.97, 'runs': ['digits-20261207-103000-cd34']}
    """
    from .backends import get_backend
    from .compare import compare as side_by_side
    from .ledger import Ledger
    from .search import expand_ids

    ledger = Ledger()
    records = [ledger.get(run_id) for run_id in expand_ids(ledger, run_ids)]
    ids = [record.run_id for record in records]
    repeated = sorted({run_id for run_id in ids if ids.count(run_id) > 1})
    if repeated:
        raise UsageError(f"run {repeated[0]} is named more than once")
    if len(records) < 2:
        raise UsageError("compare needs at least two runs (see 'orchestrate runs list')")
    return side_by_side(records, cost_of=lambda record: get_backend(record.backend).cost(record))


def attach(job_name: str, *, runs_dir: "str | os.PathLike" = "runs", subscription_id: Optional[str] = None,
           resource_group: Optional[str] = None, workspace_name: Optional[str] = None, profile: Optional[str] = None,
           settings=None, on_event: Optional[Callable[[dict], None]] = None) -> "Run":
    """Adopt an Azure ML job started elsewhere (another machine, Studio) as a run of this machine,
    so that logs, status, download and predict work on it. The workspace is given as arguments or
    found as `orchestrate init` saved it (or `settings`, already resolved: backends.azure.settings).

    Example:
        >>> runs.attach("eurosat-20261123-101500-ab12").status
        'completed'
    """
    from .backends.azure.assets import attach_job
    from .backends.azure.seam import azure_errors
    from .backends.azure.settings import load_settings
    from .events import ignore
    from .ledger import Ledger
    from .run import Run
    from .workspace import seam_for

    if settings is None:
        settings = load_settings({"subscription_id": subscription_id, "resource_group": resource_group,
                                  "workspace_name": workspace_name}, profile=profile)
    ledger = Ledger()
    with azure_errors():
        record = attach_job(seam_for(settings), ledger, job_name, Path(runs_dir), on_event=on_event or ignore)
    return Run(record, ledger)


def report(run: "str | os.PathLike | Run", path: "str | os.PathLike | None" = None) -> Path:
    """Write the HTML report of `run` (a run id or unique prefix, a Run, or a run folder): learning
    curves, confusion matrix, per-class precision/recall/F1, the most confidently wrong images,
    skipped files, configuration and timing, in one self-contained file. Written to `path`, by
    default report.html in the run folder; returns the path. UsageError when the run has no
    outputs (yet) or they are damaged.

    Example:
        >>> runs.report("digits-2026")
        PosixPath('runs/digits-20261207-101500-ab12/report.html')
    """
    from .report import write_report

    return Path(write_report(folder_for(getattr(run, "id", run), wanted=METRICS), path))
