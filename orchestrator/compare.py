"""Runs side by side (`orchestrate runs compare`): the comparison of Azure ML Workbench's run history.

compare() takes ledger records, not ids, so whatever selects runs (a list of ids today, a search
over the ledger later) hands its selection straight in, two runs or twenty. It reads only what is
on this machine: the ledger row, the run folder's outputs and log. A remote run whose outputs were
never downloaded shows the ledger's summary metrics and says so; comparing ten Azure runs must
not fetch ten models.
"""
from dataclasses import dataclass

from remote_scripts.options import OPTIONS, from_arguments

from .backends.base import COMPLETED, TERMINAL
from .errors import OrchestrateError
from .events import job_seconds
from .run_folder import RunFolder

HIGHER, LOWER = "higher", "lower"
# Where a run's outputs are, as the comparison reports it.
OUTPUTS_HERE, OUTPUTS_NOT_DOWNLOADED = "here", "not downloaded"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str = None  # HIGHER, LOWER, or None where no value is better than another (epochs)
    digits: int = 4     # decimals shown


METRICS = (
    Metric("accuracy", "accuracy", HIGHER),
    Metric("macro_accuracy", "macro accuracy", HIGHER),
    Metric("macro_f1", "macro F1", HIGHER),
    Metric("log_loss", "log-loss", LOWER),
    Metric("log_loss_reduction", "log-loss reduction", HIGHER),
    Metric("best_val_accuracy", "best val accuracy", HIGHER),
    Metric("best_val_loss", "best val loss", LOWER),
    Metric("epochs", "epochs", digits=0),
    Metric("best_epoch", "best epoch", digits=0),
    Metric("seconds", "seconds", LOWER, digits=1),
    Metric("cost", "cost", LOWER, digits=2),
)
TEST_METRICS = ("accuracy", "macro_accuracy", "macro_f1", "log_loss", "log_loss_reduction")
OPTION_BY_NAME = {option.flag[2:]: option for option in OPTIONS}


def compare(records, cost_of=None):
    """The comparison of `records` as one JSON-ready dict:

    runs: [{run_id, name, backend, status, dataset, created_at, outputs}] in the order given;
    parameters: {name: {"values": {run_id: value}, "differs": bool}} for the backend, the dataset
      and every option some run set (a run that did not set an option shows the job's default;
      null: decided by the job at run time);
    metrics: {key: {"label", "better", "values": {run_id: value or null}}};
    best: {key: {"value", "runs": [run_id...]}} for each metric with a better direction that some
      run has (ties name every run holding the value).
    `cost_of(record)` gives a run's cost estimate ({"amount", "currency"}) where one is known.
    """
    measured = [_measurements(record, cost_of) for record in records]
    ids = [record.run_id for record in records]
    parameters = _parameters(records, [m["mode"] for m in measured])
    metrics = {metric.key: {"label": metric.label, "better": metric.better,
                            "values": {run_id: m["values"].get(metric.key) for run_id, m in zip(ids, measured)}}
               for metric in METRICS}
    currencies = {m["currency"] for m in measured if m["currency"]}
    if currencies:
        metrics["cost"]["unit"] = "/".join(sorted(currencies))
    return {
        "runs": [{"run_id": r.run_id, "name": r.name, "backend": r.backend, "status": r.status, "dataset": r.dataset,
                  "created_at": r.created_at, "outputs": m["outputs"]} for r, m in zip(records, measured)],
        "parameters": parameters,
        "metrics": metrics,
        "best": {key: best for key, entry in metrics.items()
                 if (best := _best(entry["values"], entry["better"])) is not None},
    }


def _best(values, better):
    """{"value", "runs"} of the best of `values` ({run_id: number or None}), None when there is none."""
    numbers = {run_id: v for run_id, v in values.items() if isinstance(v, (int, float))}
    if better is None or not numbers:
        return None
    value = (max if better == HIGHER else min)(numbers.values())
    return {"value": value, "runs": [run_id for run_id, v in numbers.items() if v == value]}


def _measurements(record, cost_of):
    """One run's metric values, where its outputs are, and the mode its job chose."""
    test = RunFolder(record.run_dir).metrics() or {}
    history = _history(record)
    if test:
        outputs, summary = OUTPUTS_HERE, test
    else:  # the ledger keeps the summary metrics of a finished run once they were seen
        outputs = OUTPUTS_NOT_DOWNLOADED if record.status == COMPLETED or record.metrics else None
        summary = record.metrics
    values = {key: summary.get(key) for key in TEST_METRICS}
    val_losses = [row["val_loss"] for row in history if isinstance(row.get("val_loss"), (int, float))]
    val_accuracies = [row["val_accuracy"] for row in history if isinstance(row.get("val_accuracy"), (int, float))]
    best_epochs = [row.get("epoch") for row in history if row.get("best")]
    values.update(
        best_val_loss=min(val_losses, default=None),
        best_val_accuracy=max(val_accuracies, default=None),
        epochs=test.get("epochs_completed") or len(history) or None,
        best_epoch=test.get("best_epoch") or (best_epochs[-1] if best_epochs else None),
        seconds=job_seconds(RunFolder(record.run_dir).log_events()) if record.status in TERMINAL else None,
    )
    cost = cost_of(record) if cost_of else None
    values["cost"] = (cost or {}).get("amount")
    return {"values": values, "outputs": outputs, "mode": test.get("mode"),
            "currency": (cost or {}).get("currency") if values["cost"] is not None else None}


def _history(record):
    """The rows of history.jsonl (one per epoch); none when the file is missing or damaged (one
    damaged run shows dashes, it does not stop the comparison of the others; `orchestrate report`
    names the damage)."""
    try:
        return RunFolder(record.run_dir).history()
    except OrchestrateError:
        return []


def _parameters(records, modes):
    """{name: {"values": {run_id: value}, "differs": bool}}: backend and dataset first, then the
    training options in the option table's order, then the backend's options, each only when
    some run set it."""
    given = [_given_options(record) for record in records]
    backend_given = [{key.replace("_", "-"): value for key, value in (record.params.get("backend_options") or {}).items()
                      if value not in (None, False)} for record in records]
    columns = {"backend": [r.backend for r in records], "dataset": [r.dataset for r in records]}
    names = [name for name in OPTION_BY_NAME if any(name in g for g in given) or (name == "mode" and any(modes))]
    names += sorted({name for g in given for name in g} - set(OPTION_BY_NAME))  # options this client does not know
    for name in names:
        option = OPTION_BY_NAME.get(name)
        default = option.default if option else None
        columns[name] = [g.get(name, mode if name == "mode" else default) for g, mode in zip(given, modes)]
    for name in sorted({name for g in backend_given for name in g}):
        columns.setdefault(name, [g.get(name) for g in backend_given])
    return {name: {"values": {r.run_id: v for r, v in zip(records, values)}, "differs": len(set(map(repr, values))) > 1}
            for name, values in columns.items()}


def _given_options(record):
    """{option name: value} of the train.py arguments a run was started with (options.from_arguments:
    numbers as numbers, so 0.01 and 1e-2 compare equal)."""
    return {dest.replace("_", "-"): value
            for dest, value in from_arguments(record.params.get("train_args") or []).items()}
