"""Started as a file, a job script makes its own folder the package `remote_scripts`.

Every backend starts the job's entry points as files: `python train.py` in an Azure ML code
snapshot, `python3 /code/launch.py` in a container, `remote_scripts/launch.py` in a local process,
and Azure ML's parallel runtime loads score_entry.py by its path. None is started as a module, so
each entry point (train.py, search.py, launch.py, score_entry.py) imports this module first: it
lies beside them, where a script's own folder makes it importable. From then on every module of the
job is imported one way, as `remote_scripts.<name>` with relative imports between them, exactly as
the client and the tests import them; the folder's own name (/code in a container) does not matter.
"""
import importlib.util
import os
import sys

PACKAGE = "remote_scripts"

_folder = os.path.dirname(os.path.abspath(__file__))
if PACKAGE in sys.modules:  # another copy (an installed client's) would mix two versions of the job
    if _folder not in [os.path.abspath(path) for path in getattr(sys.modules[PACKAGE], "__path__", ())]:
        raise ImportError(f"{PACKAGE} is already imported from {sys.modules[PACKAGE].__path__}, not {_folder}")
else:
    _spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(_folder, "__init__.py"),
                                                   submodule_search_locations=[_folder])
    _package = importlib.util.module_from_spec(_spec)
    sys.modules[PACKAGE] = _package
    _spec.loader.exec_module(_package)
