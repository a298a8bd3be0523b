"""Execution backends behind one interface (base.Backend); `get_backend(name, on_event=...)` picks one.

Backend modules are imported lazily, so that the docker SDK or azure-ai-ml load only when
that backend is used.
"""
from importlib import import_module

from ..errors import UsageError
from .base import Backend

BACKENDS = {
    "local": ("orchestrator.backends.local", "LocalBackend"),
    "docker": ("orchestrator.backends.docker", "DockerBackend"),
    "azure": ("orchestrator.backends.azure", "AzureBackend"),
}


def get_backend(name: str, **options) -> Backend:
    """An instance of the backend called `name`, made with `options` (every backend takes
    `on_event`, the callback its progress events go to; azure also `approve`...).

    Example:
        >>> backend = get_backend("local", on_event=print)
        >>> backend.name
        'local'
    """
    try:
        module_name, class_name = BACKENDS[name]
    except KeyError:
        raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(sorted(BACKENDS))}")
    return getattr(import_module(module_name), class_name)(**options)
