"""Execution backends behind one interface (base.Backend); `get_backend(name, on_event=...)` picks one.

Backend modules are imported lazily, so that the docker SDK or azure-ai-ml load only when
that backend is used.
"""
from importlib import import_module

from ..errors import UsageError
from .base import Backend

# In the order `--backend` and `orchestrate train --help` list them, from this machine outwards;
# "auto" tries them the other way round (auto_order).
BACKENDS = {
    "local": ("orchestrator.backends.local", "LocalBackend"),
    "docker": ("orchestrator.backends.docker", "DockerBackend"),
    "azure": ("orchestrator.backends.azure", "AzureBackend"),
}


def backend_class(name: str) -> type:
    """The class of the backend called `name`; UsageError for an unknown name."""
    try:
        module_name, class_name = BACKENDS[name]
    except KeyError:
        raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(sorted(BACKENDS))}") from None
    return getattr(import_module(module_name), class_name)


def backend_options() -> dict:
    """{option dest: (BackendOption, (names of the backends that declare it))} of every registered
    backend, in the order `orchestrate train --help` lists them (the backends' order, then each
    backend's): what train() checks and the CLI turns into flags."""
    table = {}
    for name in BACKENDS:
        for option in backend_class(name).options:
            declared, backends = table.get(option.dest, (option, ()))
            table[option.dest] = (declared, (*backends, name))
    return table


def setting_flags() -> dict:
    """{dest: (flag, backend name)} of what the backends read beside their options (each class's
    `setting_flags`: azure's workspace), strings each: train() accepts them."""
    return {dest: (flag, name) for name in BACKENDS for dest, flag in backend_class(name).setting_flags.items()}


def exclusive_options() -> dict:
    """{dest: (flag, backend name)} of what only one backend takes: the options no other backend
    declares, and its settings. Any of them given means that backend (a user who names a compute
    cluster wants the cloud, not a silent run on the laptop); with another backend, a mistake."""
    return {**{dest: (option.flag, backends[0]) for dest, (option, backends) in backend_options().items()
               if len(backends) == 1},
            **setting_flags()}


def auto_order() -> tuple:
    """The backends "auto" tries, in turn, until one's auto_choice takes the job: the registry's,
    last first (azure, then docker, then local, which takes any job)."""
    return tuple(reversed(BACKENDS))


def get_backend(name: str, **options) -> Backend:
    """An instance of the backend called `name`, made with `options` (every backend takes
    `on_event`, the callback its progress events go to, and `approve`: Backend.__init__).

    Example:
        >>> backend = get_backend("local", on_event=print)
        >>> backend.name
        'local'
    """
    return backend_class(name)(**options)
