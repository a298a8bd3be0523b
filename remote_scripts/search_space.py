"""The configurations a search tries (`orchestrate train --search`), declared once for the client,
the search job (search.py) and the Azure ML sweep job.

A space is a list of groups; each group maps training options (their names in the option table,
`lr`, `weight_decay` or `weight-decay`) to one value or a list of values, and stands for every
combination of them. Groups are tried in order, so the default space goes cheapest first: linear
mode on the backbone's cached features over a few learning rates and weight decays (seconds
each: one featurization serves them all), then head mode, then full fine-tuning, ResNet50 first
and a smaller backbone where the budget allows.

What shapes the data is not searchable (labels, sample fraction, split fractions, seed, image
size): every trial sees the same images and the same split, so their validation numbers compare.
Torch-free: the client imports it.
"""
import itertools
import json
import math

from .metrics import HEADLINE_METRICS
from .options import BY_DEST

# The number trials are ranked by, on every backend: the validation accuracy of the epoch a trial
# keeps (its lowest validation loss). train.py logs it to MLflow each epoch under this name, which
# is the Azure ML sweep job's primary metric.
PRIMARY_METRIC = "val_accuracy"
SEARCH_FILE = "search.json"  # in a search's outputs: every trial's summary, and which one is the best

DEFAULT_SPACE = (
    {"mode": "linear", "arch": "resnet50", "lr": [1e-3, 3e-3, 1e-2, 3e-2], "weight_decay": [1e-4, 1e-2]},
    {"mode": "linear", "arch": "resnet18", "lr": [3e-3, 1e-2]},
    {"mode": "head", "arch": "resnet50", "lr": [1e-3, 3e-3]},
    {"mode": "full", "arch": "resnet50", "lr": [1e-4, 3e-4, 1e-3]},
    {"mode": "full", "arch": "resnet18", "lr": [1e-3]},
)

# The options a trial may set. The others are the same for every trial of a search: those that
# shape the data and its split (labels, sample_fraction, val/test_fraction, seed, image_size), the
# machine's (device, workers, cache), and time_budget, which the search hands out itself.
SEARCHABLE = ("arch", "weights", "mode", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing",
              "balance", "no_hflip", "patience", "precision")


MAX_TRIALS = 1000  # combinations a space may describe: beyond any time budget, and each a ledger row


class SpaceError(ValueError):
    """A space file that cannot be used: one line naming the group and the option."""


def expand(space):
    """The trials of `space` (a list of groups), in order: one {dest: value} per combination,
    each option checked against the option table; duplicates dropped.

    A space file is a product of lists, so a few lines can ask for millions of trials: more than
    MAX_TRIALS combinations is refused before any is built."""
    if not isinstance(space, (list, tuple)) or not space:
        raise SpaceError("a search space is a non-empty list of groups (option: value or [values...])")
    trials, seen, combinations = [], set(), 0
    for number, group in enumerate(space, 1):
        if not isinstance(group, dict) or not group:
            raise SpaceError(f"group {number}: give a mapping of options to a value or a list of values")
        names, choices = [], []
        for name, values in group.items():
            dest = str(name).lstrip("-").replace("-", "_")
            if dest not in BY_DEST:
                raise SpaceError(f"group {number}: {name!r} is not a training option")
            if dest not in SEARCHABLE:
                raise SpaceError(f"group {number}: {name!r} is the same for every trial of a search (it shapes "
                                 "the data, the split or the machine): give it to `orchestrate train` instead")
            values = values if isinstance(values, list) else [values]
            if not values:
                raise SpaceError(f"group {number}: {name!r} has no values")
            names.append(dest)
            choices.append([_checked(number, dest, value) for value in values])
        combinations += math.prod(map(len, choices))
        if combinations > MAX_TRIALS:
            raise SpaceError(f"groups 1 to {number} already make {combinations:,} combinations; a search "
                             f"tries at most {MAX_TRIALS:,}: give fewer values")
        for combination in itertools.product(*choices):
            trial = dict(zip(names, combination))
            key = frozenset(trial.items())  # equal as dicts are, in any order of the options
            if key not in seen:
                seen.add(key)
                trials.append(trial)
    return trials


def _checked(number, dest, value):
    option = BY_DEST[dest]
    if option.kind == "flag":
        if not isinstance(value, bool):
            raise SpaceError(f"group {number}: {dest} is a switch: true or false, not {value!r}")
        return value
    if option.kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                option.kind == "int" and not float(value).is_integer()):
            raise SpaceError(f"group {number}: {dest} takes {'whole ' if option.kind == 'int' else ''}numbers, "
                             f"not {value!r}")
        value = int(value) if option.kind == "int" else float(value)
    elif not isinstance(value, str):
        raise SpaceError(f"group {number}: {dest} takes text, not {value!r}")
    if option.kind == "choice" and value not in option.choices:
        raise SpaceError(f"group {number}: {dest} {value!r} is not one of {', '.join(option.choices)}")
    problem = option.check(value)
    if problem:
        raise SpaceError(f"group {number}: {problem}")
    return value


def with_fixed(trials, fixed):
    """The trials with the options the user fixed on the command line (`fixed`: {dest: value})
    put over what they set (what they leave alone comes from the shared options anyway);
    duplicates dropped, order kept. `--search --mode linear` searches linear mode only."""
    merged = []
    for trial in trials:
        trial = {dest: fixed.get(dest, value) for dest, value in trial.items()}
        if trial not in merged:
            merged.append(trial)
    return merged


def describe(trial):
    """'linear resnet50 lr 0.003 weight-decay 0.01': a trial's configuration in a table cell."""
    parts = [str(trial[key]) for key in ("mode", "arch") if key in trial]
    for dest, value in trial.items():
        if dest in ("mode", "arch"):
            continue
        flag = BY_DEST[dest].flag[2:]
        parts.append(flag if value is True else f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(parts)


def trials_argument(trials):
    """The search job's --trials argument: the trials as compact JSON."""
    return json.dumps(trials, separators=(",", ":"))


def parse_trials_argument(text):
    """The inverse of trials_argument, every trial checked again (the job trusts no client)."""
    try:
        trials = json.loads(text)
    except ValueError as exc:
        raise SpaceError(f"--trials is not JSON: {exc}") from None
    if not isinstance(trials, list) or not trials or not all(isinstance(t, dict) for t in trials):
        raise SpaceError("--trials must be a non-empty JSON list of objects")
    checked = []
    for number, trial in enumerate(trials, 1):
        for dest in trial:
            if dest not in SEARCHABLE:
                raise SpaceError(f"trial {number}: {dest!r} cannot vary between trials")
        checked.append({dest: _checked(number, dest, value) for dest, value in trial.items()})
    return checked


def trial_id(number):
    """The name of the search's trial `number` (from 1) in search.json, events and run ids: t01, t02..."""
    return f"t{int(number):02d}"


def parse_metrics(data):
    """A trial's metrics.json (bytes or text) as a dict; {} when empty or damaged (a trial that did
    not finish)."""
    value = _json_or_none(data)
    return value if isinstance(value, dict) else {}


def parse_history(data):
    """A trial's history.jsonl (bytes or text) as its rows; a line cut short (a trial canceled
    mid-write) is no row."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data or ""
    return [row for row in map(_json_or_none, text.splitlines()) if isinstance(row, dict)]


def _json_or_none(text):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def trial_row(trial, config, status, metrics=None, history=None, seconds=None, error=None):
    """A trial's row of search.json, the same on every backend: its configuration, status, why it
    stopped, the kept epoch's validation numbers (what it is ranked by), its test metrics. A
    number that is not finite is None (strict JSON)."""
    metrics, history = metrics or {}, history or []
    kept = kept_epoch(history)
    return {"trial": trial, "config": config, "status": status, "stopped": metrics.get("stopped"),
            PRIMARY_METRIC: _finite(kept.get("val_accuracy")), "val_loss": _finite(kept.get("val_loss")),
            "best_epoch": metrics.get("best_epoch"), "epochs": metrics.get("epochs_completed"),
            **{key: _finite(metrics.get(key)) for key in HEADLINE_METRICS}, "seconds": seconds, "error": error}


def _finite(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def kept_epoch(history):
    """The history row of the epoch a trial keeps: the last one marked best (its lowest validation
    loss), or the last epoch of a run without validation; {} without history."""
    best = [row for row in history if row.get("best")]
    return (best or history or [{}])[-1]


def rank_key(summary):
    """Sort key of trial summaries, best first: higher primary metric, then lower validation loss;
    a trial without the metric (failed, no validation split) last. Ties keep their order (sorted
    is stable): the earlier trial leads."""
    value = summary.get(PRIMARY_METRIC)
    loss = summary.get("val_loss")
    has = isinstance(value, (int, float)) and math.isfinite(value)
    return (0 if has else 1, -value if has else 0.0,
            loss if isinstance(loss, (int, float)) and math.isfinite(loss) else math.inf)
