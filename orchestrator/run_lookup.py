"""Finding a run and its files from what a user types: a run id, a unique prefix, or a folder.

Below the SDK's Run and runs (which build on it) and above the ledger, the backends and the run
folder: what predict, report, register and the Run methods share to reach a run's job and outputs.
"""
from pathlib import Path

from .backends.base import COMPLETED, RunRef
from .errors import UsageError
from .run_folder import MODEL, OUTPUTS, RunFolder


def find(run_id, job=True):
    """(ledger, record, backend, RunRef) for a run id or unique prefix.

    A trial of a search ran inside its search's job and has no job of its own: what talks to a
    run's job (`job`: logs, status, cancel, download, register) refuses it, naming the search to
    use instead."""
    from .backends import get_backend
    from .ledger import Ledger

    ledger = Ledger()
    record = ledger.get(run_id)
    if job:
        refuse_trial(record)
    return ledger, record, get_backend(record.backend), RunRef.of(record)


def refuse_trial(record):
    """UsageError for a trial of a search, which ran inside its search's job and has no job of its
    own to ask, cancel or download: the message names the search to use instead."""
    if record.search_id:
        raise UsageError(f"run {record.run_id} is a trial of the search {record.search_id}, which ran as one job: "
                         f"use {record.search_id} (it stands for its best trial)")


def folder_for(run, wanted):
    """The folder of `run`, for what reads a run's outputs (report, predict...).

    `run` is a folder path (a run's outputs/ folder stands for its run folder), or a run id or
    unique prefix: then the folder the ledger records, with the outputs of a completed run
    downloaded first when outputs/`wanted` (a file name) is not there yet. UsageError when a
    run id's folder is missing or its run has no `wanted` (yet).
    """
    path = Path(run)
    if path.is_dir():
        found = RunFolder.containing(path)
        return found.path if found else path
    ledger, record, backend, ref = find(run, job=False)
    folder = RunFolder(record.run_dir)
    if record.search_id:  # a trial: its folder came with its search's outputs
        if not folder.output(wanted).is_file():
            why = (f"a search keeps the model of its best trial only, use {record.search_id}" if wanted == MODEL
                   else f"the trial {record.status} without it")
            raise UsageError(f"run {record.run_id} has no {wanted}: {why}")
        return folder.path
    if not folder.output(wanted).is_file() and backend.status(ref) == COMPLETED:
        from .runner import fetch_outputs

        fetch_outputs(backend, ledger, record)
    if not folder.path.is_dir():
        raise UsageError(f"the folder of run {record.run_id} is missing: {record.run_dir}")
    if not folder.output(wanted).is_file():
        raise UsageError(f"run {record.run_id} has no {wanted} yet (status: {record.status})")
    return folder.path


def model_path(model_or_run, fp32=False) -> Path:
    """The model of a file path (as it is), a run folder, a run's outputs folder, or a run id (whose
    outputs are downloaded first when needed). UsageError when there is none.

    A run's int8 model (model.int8.onnx, which `quantize` leaves only when it passed its gate) is
    chosen over its model.onnx unless `fp32`: the caller can tell by the name and say so, and
    checks, with the metadata it loads anyway, that it was made from that model.onnx
    (inference.quantize.stale_reason)."""
    from .inference.quantize import int8_path

    path = Path(model_or_run)
    if path.is_file():
        return path
    folder = folder_for(model_or_run, wanted=MODEL)
    for candidate in (folder / MODEL, folder / OUTPUTS / MODEL):
        if candidate.is_file():
            return candidate if fp32 or not int8_path(candidate).is_file() else int8_path(candidate)
    raise UsageError(f"no {MODEL} in {path}")
