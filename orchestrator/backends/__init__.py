"""Execution backends behind one interface (base.Backend); `get_backend(name)` picks one.

Backend modules are imported lazily, so that the docker SDK or azure-ai-ml load only when
that backend is used.
"""
from importlib import import_module

from ..errors import UserError

BACKENDS = {
    "local": ("orchestrator.backends.local", "LocalBackend"),
    "docker": ("orchestrator.backends.docker", "DockerBackend"),
    "azure": ("orchestrator.backends.azure", "AzureBackend"),
}


def get_backend(name):
    """An instance of the backend called `name`."""
    try:
        module_name, class_name = BACKENDS[name]
    except KeyError:
        raise UserError(f"unknown backend {name!r}; choose one of: {', '.join(sorted(BACKENDS))}")
    return getattr(import_module(module_name), class_name)()
