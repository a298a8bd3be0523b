"""`orchestrate train --search`, client side: which trials to run, and what a finished search found.

The trials themselves run in the job (remote_scripts/search.py, or an Azure ML sweep job), which
writes outputs/search.json. From it every trial becomes a run of its own in the ledger, under the
search's id (its folder is the search's outputs/trials/tNN), so `runs compare SEARCH`, `report`
and `predict` treat trials as runs; the search's own outputs are its best trial's.
"""
from pathlib import Path

from remote_scripts import search_space
from remote_scripts.metrics import HEADLINE_METRICS
from remote_scripts.options import problems, to_arguments

from .backends.base import CANCELED, COMPLETED, FAILED
from .errors import UsageError
from .ledger import RunRecord
from .run_folder import RunFolder

TRIAL_STATUS = {"completed": COMPLETED, "failed": FAILED, "canceled": CANCELED}  # not_started: no run
TOP = 5  # trials in the final table


def plan_trials(values, space_file=None, max_trials=None):
    """The trials of a search, in order, at most `max_trials` of them: those of the --space file
    as written (the options given on the command line are what its trials share), or the
    default space narrowed by the options given (`values`: {dest: value}, None when not given:
    `--search --mode linear` tries linear mode only). UsageError naming a space file's problem."""
    try:
        if space_file is not None:
            trials = search_space.expand(read_space(space_file))
        else:
            fixed = {dest: value for dest, value in values.items() if value is not None and value is not False}
            trials = search_space.with_fixed(search_space.expand(search_space.DEFAULT_SPACE), fixed)
    except search_space.SpaceError as exc:
        raise UsageError(f"--space {space_file}: {exc}" if space_file else str(exc)) from None
    trials = trials[:max_trials] if max_trials else trials
    for number, trial in enumerate(trials, 1):  # each value is checked; here, the rules across options
        found = problems({**values, **trial})
        if found:
            raise UsageError(f"{f'--space {space_file}: ' if space_file else ''}trial {number} "
                            f"({search_space.describe(trial)}): {'; '.join(found)}")
    return trials


def read_space(path):
    """The groups of a --space file: YAML (or JSON, which YAML reads too), a list of groups or a
    mapping with a `space:` list."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--space {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"--space {path} is not YAML: {' '.join(str(exc).split())}") from None
    if isinstance(doc, dict) and set(doc) == {"space"}:
        doc = doc["space"]
    return doc


def trial_run_id(search_id, trial):
    return f"{search_id}-{trial}"


def record_trials(ledger, record):
    """Add a ledger row for each trial of the search `record` that ran (once: rows already there
    are left alone). The trial's parameters are the search's shared ones with its own on top."""
    doc = RunFolder(record.run_dir).search()
    if doc is None:
        return
    present = {child.run_id for child in ledger.children(record.run_id)}
    shared = list(record.params.get("train_args") or [])
    for trial in doc.get("trials") or []:
        status = TRIAL_STATUS.get(trial.get("status"))
        run_id = trial_run_id(record.run_id, trial.get("trial"))
        if status is None or run_id in present:
            continue
        ledger.add(RunRecord(
            run_id=run_id, name=f"{record.name} {trial['trial']}", backend=record.backend, status=status,
            dataset=record.dataset, run_dir=str(RunFolder(record.run_dir).trial(trial["trial"]).path),
            remote_id=trial.get("remote_id") or "", search_id=record.run_id,
            params={"train_args": shared + to_arguments(trial.get("config") or {}),
                    "backend_options": record.params.get("backend_options") or {}},
            exit_code=0 if status == COMPLETED else None,
            metrics={key: trial[key] for key in HEADLINE_METRICS if trial.get(key) is not None}))


def result(record):
    """The search's result as JSON: {"search_id", "best": {"run_id", metrics...} or None,
    "trials": [...]}, trials ranked by the primary metric (best first), each with its run id."""
    doc = RunFolder(record.run_dir).search() or {}
    trials = [dict(trial, run_id=trial_run_id(record.run_id, trial.get("trial")))
              for trial in doc.get("trials") or []]
    ranked = sorted(trials, key=search_space.rank_key)
    best = next((trial for trial in ranked if trial.get("trial") == doc.get("best")), None)
    return {"search_id": record.run_id, "primary_metric": doc.get("primary_metric", search_space.PRIMARY_METRIC),
            "budget_seconds": doc.get("budget_seconds"), "best": best, "trials": ranked}


def expand_ids(ledger, run_ids):
    """`runs compare` ids with each search's id replaced by its trials' ids (a search and its best
    trial are the same run twice)."""
    expanded = []
    for run_id in run_ids:
        record = ledger.get(run_id)
        children = ledger.children(record.run_id)
        expanded += [child.run_id for child in children] if children else [record.run_id]
    if not expanded:
        raise UsageError("no runs to compare")
    return expanded
