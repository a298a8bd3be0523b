"""Where orchestrate keeps its files on the user's machine."""
import os
from pathlib import Path


def state_dir():
    """$XDG_STATE_HOME/orchestrate (default ~/.local/state/orchestrate): the ledger and caches."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "orchestrate"


def image_cache_dir():
    """$XDG_CACHE_HOME/orchestrate/images (default ~/.cache/orchestrate/images): the decoded-image cache.

    The cache directory, not the state directory: everything in it can be rebuilt from the
    datasets, so the user (or a cleaner) may delete it at any time and lose only decoding time.
    """
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "orchestrate" / "images"


def docker_context_dir():
    """infra/docker beside remote_scripts/: the one image definition of Docker and Azure ML jobs.

    It lives in the source tree, not in the package, so a non-editable install cannot find it.
    """
    from .errors import UserError

    path = remote_scripts_dir().parent / "infra" / "docker"
    if not (path / "Dockerfile").is_file():
        raise UserError(f"the training image definition {path}/Dockerfile is missing; "
                        "install orchestrate from a source checkout (pip install -e .)")
    return path


def remote_scripts_dir():
    """The folder of train.py: run by the local backend, mounted by Docker, snapshotted by Azure ML."""
    import remote_scripts

    return Path(remote_scripts.__file__).resolve().parent
