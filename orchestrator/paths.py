"""Where orchestrate keeps its files on the user's machine."""
import os
from pathlib import Path


def state_dir():
    """$XDG_STATE_HOME/orchestrate (default ~/.local/state/orchestrate): the ledger and caches."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "orchestrate"


def remote_scripts_dir():
    """The folder of train.py: run by the local backend, mounted by Docker, snapshotted by Azure ML."""
    import remote_scripts

    return Path(remote_scripts.__file__).resolve().parent
