"""Errors the CLI turns into one line on stderr and an exit code, never a traceback."""


class UserError(Exception):
    """Bad input or configuration: exit code 2."""

    exit_code = 2


class JobFailed(Exception):
    """The job ran and failed: exit code 1."""

    exit_code = 1
