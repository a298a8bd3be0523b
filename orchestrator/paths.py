"""Where orchestrate keeps its files on the user's machine."""
import os
from pathlib import Path


def state_dir():
    """$XDG_STATE_HOME/orchestrate (default ~/.local/state/orchestrate): the ledger and caches."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "orchestrate"


def private_state_dir():
    """state_dir(), created if missing, readable by its owner alone (0700).

    It holds the run history (data paths, parameters, remote job ids and workspace names) and the
    hash cache (the paths of the user's files): nothing another user of the machine should read.
    A folder an earlier version created with the umask's mode (0755) is closed up too.
    Raises OSError when it cannot be created.
    """
    path = state_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != 0o700:
        path.chmod(0o700)
    return path


def image_cache_dir():
    """$XDG_CACHE_HOME/orchestrate/images (default ~/.cache/orchestrate/images): the decoded-image cache.

    The cache directory, not the state directory: everything in it can be rebuilt from the
    datasets, so the user (or a cleaner) may delete it at any time and lose only decoding time.
    """
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "orchestrate" / "images"


def docker_context_dir():
    """The one image definition of Docker and Azure ML jobs (Dockerfile and its files).

    In a source checkout (or an editable install) it is infra/docker beside remote_scripts/; an
    installed wheel carries the same files as the package data of `orchestrator.infra_docker`
    (pyproject.toml maps that package to infra/docker, so there is one copy of the Dockerfile).
    """
    from .errors import UsageError

    source = remote_scripts_dir().parent / "infra" / "docker"
    installed = Path(__file__).resolve().parent / "infra_docker"
    for path in (source, installed):
        if (path / "Dockerfile").is_file():
            return path
    raise UsageError(f"the training image definition is missing ({source}/Dockerfile, "
                    f"{installed}/Dockerfile): reinstall orchestrate")


def remote_scripts_dir():
    """The folder of train.py: run by the local backend, mounted by Docker, snapshotted by Azure ML."""
    import remote_scripts

    return Path(remote_scripts.__file__).resolve().parent
