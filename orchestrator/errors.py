"""The one exception hierarchy of orchestrate: what the SDK raises and the CLI turns into one line.

Every error a caller should handle is an OrchestrateError, so a notebook can write
`except orchestrator.OrchestrateError`. The CLI prints its message on one line (never a
traceback) and exits with its `exit_code`: 2 for what the user can fix (input, configuration, a
refused service call), 1 for a job that ran and failed.

Example:
    >>> import orchestrator
    >>> try:
    ...     orchestrator.train("./no-such-folder")
    ... except orchestrator.DatasetError as exc:
    ...     print(exc)
    data folder not found: ./no-such-folder
"""
from contextlib import contextmanager


class OrchestrateError(Exception):
    """Base of every error orchestrate raises on purpose."""

    exit_code = 2


class UsageError(OrchestrateError):
    """Bad input or configuration: an unknown or out-of-range option, a missing file (exit code 2)."""


class DatasetError(UsageError):
    """The dataset cannot be trained or scored on: missing, empty, one class, a broken index (exit 2).

    The job's torch-free scan raises remote_scripts.folder_dataset.DatasetError; the SDK
    translates it where it calls that code (dataset_errors below), so callers see this one.

    Example:
        >>> try:
        ...     orchestrator.data.pack("./one-class-only")
        ... except orchestrator.DatasetError as exc:
        ...     print(exc)
    """


class ServiceError(OrchestrateError):
    """Azure, Azure Storage, S3 or Docker refused or failed a call; the message names the service and
    what to do, never a secret (exit code 2)."""


class JobFailed(OrchestrateError):
    """The job ran and failed or was canceled (exit code 1). `run_id`, `status` and `reason` say which and why."""

    exit_code = 1

    def __init__(self, message, run_id=None, status=None, reason=None):
        super().__init__(message)
        self.run_id, self.status, self.reason = run_id, status, reason


@contextmanager
def dataset_errors():
    """Context in which the job's dataset code (remote_scripts.folder_dataset, packed_dataset)
    runs on the client: its DatasetError, raised for a missing folder, too few classes or a broken
    index, leaves as this module's DatasetError, with the same one-line message."""
    from remote_scripts.folder_dataset import DatasetError as JobDatasetError

    try:
        yield
    except JobDatasetError as exc:
        raise DatasetError(str(exc)) from None
