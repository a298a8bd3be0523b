"""orchestrate: train an image classifier on Azure ML or locally and get an ONNX model back.

The Python API (the `orchestrate` CLI is a shell over it):

    import orchestrator

    run = orchestrator.train("./EuroSAT", backend="local", epochs=5)   # -> Run, once submitted
    run.wait(progress=True)                                            # raises JobFailed if it fails
    print(run.metrics["accuracy"])
    model = run.model()                                                # or orchestrator.Model("model.onnx")
    print(model.predict("photo.jpg", top_k=3)[0].top_k)
    print(orchestrator.quantize(run).message)                          # model.int8.onnx, if it agrees

    plan = orchestrator.train("./EuroSAT", compute="gpu-nc12", dry_run=True, export="job.yml")

Modules: orchestrator.runs (get, list, compare, report, attach), orchestrator.data (pack, upload...),
orchestrator.compute (sizes, create...), orchestrator.workspace (create, show, delete). Every error
raised on purpose is an OrchestrateError. Names are imported on first use, so `import orchestrator`
loads neither torch, onnxruntime nor azure.ai.ml.
"""
from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "train": "training", "Plan": "plan",
    "Run": "run",
    "Model": "model", "Prediction": "model",
    "score": "scoring",
    "quantize": "quantizing", "QuantizeResult": "quantizing",
    "OrchestrateError": "errors", "UsageError": "errors", "DatasetError": "errors",
    "ServiceError": "errors", "JobFailed": "errors",
}
_MODULES = ("runs", "data", "compute", "workspace")

__all__ = ["train", "Plan", "Run", "Model", "Prediction", "score", "quantize", "QuantizeResult", "OrchestrateError",
           "UsageError", "DatasetError", "ServiceError", "JobFailed", "runs", "data", "compute", "workspace"]

if TYPE_CHECKING:
    from . import compute, data, runs, workspace
    from .errors import DatasetError, JobFailed, OrchestrateError, ServiceError, UsageError
    from .model import Model, Prediction
    from .run import Run
    from .scoring import score
    from .quantizing import QuantizeResult, quantize
    from .plan import Plan
    from .training import train


def __getattr__(name):
    """Import a public name's module when the name is first used (PEP 562)."""
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in _MODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
