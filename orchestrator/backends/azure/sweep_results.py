"""A search's sweep job after the submit: its trials' events while it runs, and, once it has
ended, the best trial's model and outputs/search.json (the shape the local search writes).

Where the facts come from (no MLflow client needed):
- The trials are the sweep's child runs (run history, runs/<sweep>/children): name, status, start
  and end times, a failure's error; why one was canceled follows from the statuses and times
  against the limits azure.json records (_why_canceled).
- Which trial a child ran: the service records each child's sampled values on the parent run as
  the tag "<parent>_<index>": '{"trial": K}' (the HyperDrive convention; azureml-train-core's
  HyperDriveRun.get_hyperparameters reads the same tags). A child without such a tag is taken for
  trial index + 1 from its "<parent>_<index>" name (grid order); one matching neither is skipped.
- The numbers: every trial writes metrics.json (test metrics, why it stopped) and history.jsonl
  (one row per epoch, the kept one marked "best") into its own model output,
  orchestrate/runs/<run>/trials/<trial job>/model/ (sweep_job.trial_prefix). val_accuracy and
  val_loss are the kept epoch's, as search.py ranks them (search_space.rank_key); an
  early-terminated trial has history.jsonl (written after each epoch) but no metrics.json.
The best trial is chosen by that same rank_key, so an Azure search and a local one pick alike;
the service's own pick (best_child_run_id, by the primary metric's best logged value) is kept in
search.json as "service_best" when it is known.

While the sweep runs, log_lines follows each started trial's std_log with the tailer (one poll per
trial per round, by byte offset), re-tagging its events with "trial" as search.py does (its
run_start becomes trial_start) and prefixing plain lines with "[tNN] "; a trial that ends gets a
trial_end event built from its files, and the search ends with run_end. The cursor of these
lines counts lines: a follower from 0 sees every line once; a resume from another cursor skips
that many lines of what the service's state gives then (the runner always follows from 0).
"""
import json
import time

from remote_scripts.atomic import write_atomically
from remote_scripts.search_space import (PRIMARY_METRIC, SEARCH_FILE, parse_history, parse_metrics, rank_key, trial_id,
                                         trial_row)

from ...events import PREFIX, notice, parse_line
from ...run_folder import HISTORY, METRICS, TRIALS, RunFolder
from ..base import CANCELED, COMPLETED, FAILED, QUEUED, TERMINAL, LogLine
from .sweep_job import trial_prefix
from .tailer import MAX_POLL, MIN_POLL, StatusNotices, map_status, tail

TRIAL_FILES = (METRICS, HISTORY)
BEST_CHILD_PROPERTY = "best_child_run_id"  # azure.ai.ml.constants SWEEP_JOB_BEST_CHILD_RUN_ID_PROPERTY_NAME
STATES = {COMPLETED: "completed", FAILED: "failed", CANCELED: "canceled"}


# --- which child ran which trial -------------------------------------------------------------
def trial_numbers(parent, tags, children, count):
    """{child name: trial number (1-based)} from the parent's tags, else the child's name."""
    numbers = {}
    prefix = f"{parent}_"
    for key, value in (tags or {}).items():
        if not (key.startswith(prefix) and key[len(prefix):].isdigit()):
            continue
        number = _sampled_trial(value)
        if number is not None and 1 <= number <= count:
            numbers[key] = number
    for child in children:
        name = child["name"]
        if name in numbers or not name.startswith(prefix) or not name[len(prefix):].isdigit():
            continue
        guess = int(name[len(prefix):]) + 1
        if 1 <= guess <= count and guess not in numbers.values():
            numbers[name] = guess
    return numbers


def _sampled_trial(value):
    """The `trial` value of one tag's JSON ({"trial": 3}; "search_space.trial" or "--trial" keys
    are read too), or None."""
    try:
        sampled = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return None
    if not isinstance(sampled, dict):
        return None
    for key, number in sampled.items():
        if str(key).lstrip("-").split(".")[-1] == "trial":
            try:
                return int(number)
            except (TypeError, ValueError):
                return None
    return None


# --- one trial's summary ---------------------------------------------------------------------
def read_trial_files(container, run_id, child):
    """(metrics dict, history rows) of a trial job's model output; empty where a file is missing."""
    from azure.core.exceptions import ResourceNotFoundError

    texts = {}
    for name in TRIAL_FILES:
        try:
            texts[name] = container.download_blob(f"{trial_prefix(run_id, child, 'model')}/{name}").readall()
        except ResourceNotFoundError:
            texts[name] = b""
    return parse_metrics(texts[METRICS]), parse_history(texts[HISTORY]), texts


def _state(child):
    return STATES.get(map_status(child["status"]))


def trial_summary(number, config, child=None, metrics=None, history=None, sweep=None):
    """A trial's row of search.json, in search.py's shape plus remote_id (the trial job);
    sweep: the sweep's sweep_facts, which tell why a canceled trial was."""
    if child is None:
        return {**trial_row(trial_id(number), config, "not_started"), "remote_id": None}
    metrics, history = metrics or {}, history or []
    status = _state(child) or ("running" if map_status(child["status"]) != QUEUED else "queued")
    seconds = None
    if child.get("start") is not None and child.get("end") is not None:
        seconds = round(child["end"] - child["start"], 3)
    elif history and all(isinstance(row.get("seconds"), (int, float)) for row in history):
        seconds = round(sum(row["seconds"] for row in history), 3)
    error = (child.get("error") or {}).get("message") if status == "failed" else None
    row = trial_row(trial_id(number), config, status, metrics, history, seconds, error or None)
    # what the service knows where the trial's files do not say: it stopped the trial, or the
    # trial was canceled before it wrote metrics.json
    row.update(stopped=row["stopped"] or _why_canceled(child, status, sweep or {}),
               epochs=metrics.get("epochs_completed", len(history) or None), remote_id=child["name"])
    return row


def sweep_facts(status, record, search):
    """What tells why the sweep canceled a trial: its status, its run's start and end (epoch
    seconds, None while it runs) and the limits it was submitted with (azure.json's search)."""
    return {"status": status, "start": record.get("start"), "end": record.get("end"),
            "timeout_seconds": search.get("timeout_seconds"),
            "trial_timeout_seconds": search.get("trial_timeout_seconds")}


def _why_canceled(child, status, sweep):
    """Why the service canceled a trial, from statuses and run times -- never from the free text
    of its cancelationReason, whose wording no documentation fixes. The service cancels a trial
    that runs past trialTimeout, and every trial of a sweep that runs past its timeout: those met
    the time budget. A trial canceled while its sweep goes on or after it completed was stopped
    by the early termination policy (a user's cancel of that one trial in Studio looks the same
    and is taken for it). With a sweep canceled before its timeout: a user's cancel (None)."""
    if status != "canceled":
        return None
    if _ran_for(child, sweep.get("trial_timeout_seconds")):
        return "time_budget"
    if sweep.get("status") in ("Canceled", "CancelRequested"):
        return "time_budget" if _ran_for(sweep, sweep.get("timeout_seconds")) else None
    return "early_termination"


def _ran_for(run, seconds):
    """Whether a run with start and end (epoch seconds) lasted `seconds` or more (False when any is unknown)."""
    if seconds is None or run.get("start") is None or run.get("end") is None:
        return False
    return run["end"] - run["start"] >= seconds


# --- the whole search ----------------------------------------------------------------------
def collect(seam, container, state, run_id):
    """(summaries in trial order, {trial id: {name: bytes}} of the trials' files, the service's
    best trial id or None, the sweep's status) of the search recorded in `state` (azure.json)."""
    parent, search = state["job"], state["search"]
    trials = search["trials"]
    record = seam.run_record(parent)
    children = seam.child_runs(parent)
    numbers = trial_numbers(parent, record["tags"], children, len(trials))
    by_number = {}
    for child in children:
        number = numbers.get(child["name"])
        if number is not None:
            by_number[number] = child
    status = seam.job_status(parent)
    summaries, files = [], {}
    for number, config in enumerate(trials, 1):
        child = by_number.get(number)
        if child is None:
            summaries.append(trial_summary(number, config))
            continue
        metrics, history, texts = read_trial_files(container, run_id, child["name"])
        summaries.append(trial_summary(number, config, child, metrics, history, sweep_facts(status, record, search)))
        files[trial_id(number)] = texts
    service_best = (record["properties"] or {}).get(BEST_CHILD_PROPERTY)
    service_best = next((trial_id(n) for name, n in numbers.items() if name == service_best), None)
    return summaries, files, service_best, status


def best_trial(summaries):
    """The completed trial that ranks first (search_space.rank_key), or None."""
    completed = [s for s in summaries if s["status"] == "completed"]
    return min(completed, key=rank_key) if completed else None


def recorded_best(run_dir, run_id):
    """(trial id, Azure job name) of the best trial of search `run_id`, as the search.json that
    its download wrote in run_dir/outputs records it. The job name is what the best model is
    addressed by: its blobs are under sweep_job.trial_prefix, and azureml://jobs/<name>/outputs/model
    is its output; the sweep job's own outputs are templates (`${{name}}`) that hold nothing.
    A UsageError saying what to run when it is not known: the search has not ended and been
    downloaded, or none of its trials completed."""
    from ...errors import UsageError

    folder = RunFolder(run_dir)
    path = folder.output(SEARCH_FILE)
    doc = folder.search()
    if doc is None:
        raise UsageError(f"the best trial of search {run_id} is not known yet: once the search has ended, "
                         f"run `orchestrate download {run_id}`")
    best = doc.get("best")
    row = next((t for t in doc.get("trials") or [] if isinstance(t, dict) and t.get("trial") == best),
               None) if best else None
    if not row or not row.get("remote_id"):
        raise UsageError(f"no trial of search {run_id} completed: it has no model (see {path})")
    return best, row["remote_id"]


def search_document(run_id, budget, summaries, service_best=None):
    """outputs/search.json: the local search's document, with search_id and the service's pick."""
    best = best_trial(summaries)
    doc = {"search_id": run_id, "primary_metric": PRIMARY_METRIC, "budget_seconds": budget,
           "best": best["trial"] if best else None, "trials": summaries}
    if service_best is not None:
        doc["service_best"] = service_best
    return doc


def download_search(seam, container, state, run_id, dest, on_event=None):
    """The best trial's model output into `dest` (model.onnx, labels.json, metrics.json,
    history.jsonl, predictions.csv: a search's outputs are a run's outputs), each trial's
    metrics.json and history.jsonl under dest/trials/tNN/outputs/ (the local search's layout), and
    dest/search.json. Returns the search document; raises UsageError when no trial completed
    (search.json is written first, so what the trials did stays readable). The best trial's line
    goes to `on_event` as a notice."""
    from pathlib import Path

    from ...errors import UsageError
    from ...storage.blob import download_prefix

    dest = Path(dest)
    summaries, files, service_best, _ = collect(seam, container, state, run_id)
    doc = search_document(run_id, state["search"].get("budget_seconds"), summaries, service_best)
    for trial, texts in files.items():
        folder = RunFolder(dest / TRIALS / trial).outputs
        for name, data in texts.items():
            if data:
                folder.mkdir(parents=True, exist_ok=True)
                write_atomically(folder / name, data)
    dest.mkdir(parents=True, exist_ok=True)
    write_atomically(dest / SEARCH_FILE, (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode())
    best = best_trial(summaries)
    if best is None:
        raise UsageError(f"no trial of search {run_id} completed: there is no model to download "
                        f"(see {dest / SEARCH_FILE})")
    download_prefix(container, trial_prefix(run_id, best["remote_id"], "model"), dest)
    if on_event:
        on_event(notice(f"best trial {best['trial']} ({best['remote_id']}): {PRIMARY_METRIC} "
                        f"{_text(best[PRIMARY_METRIC])}; its model is in {dest}"))
    return doc


def _text(value):
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# --- following a running sweep ---------------------------------------------------------------
class _TrialView:
    """What the tailer asks of a seam, for one trial job: its status from the last children
    poll (no GET per trial), its log files and bytes from the real seam."""

    def __init__(self, seam, status):
        self.seam, self.status = seam, status

    def job_status(self, name):
        return self.status

    def log_urls(self, name):
        return self.seam.log_urls(name)

    def read_from(self, url, offset):
        return self.seam.read_from(url, offset)


def _event_text(event):
    return PREFIX + json.dumps(event, separators=(",", ":"), allow_nan=False)


def retag(text, trial, config):
    """One line of a trial's log as a search's log has it (search.py's TrialReporter): events
    carry "trial", run_start becomes trial_start (its config as "settings", the trial's options as
    "config"), run_end is dropped (the follower's trial_end says how the trial ended), and plain
    lines are prefixed "[tNN] ". None for a dropped line."""
    event = parse_line(text)
    if event is None:
        return f"[{trial}] {text}"
    kind = event.get("type")
    if kind == "run_end":
        return None
    if kind == "run_start":
        settings = event.pop("config", None)
        event.update(type="trial_start", trial=trial, settings=settings, config=config)
        return _event_text(event)
    event["trial"] = trial
    return _event_text(event)


def follow_sweep(seam, container, state, run_id, cursor=0, follow=True, sleep=time.sleep, clock=time.monotonic,
                 on_status=None, on_wait=None, stop=frozenset(), failure=None):
    """Yield LogLine(text, cursor) of a running sweep, from line `cursor` on (see the module
    docstring); with follow, until the sweep ends (our terminal states or a status in `stop`).
    on_status / on_wait: as tailer.tail, for the sweep job. failure(): the sweep's error text
    for its run_end when it failed."""
    produced = 0
    for text in _sweep_lines(seam, container, state, run_id, follow, sleep, clock, on_status, on_wait, stop,
                             failure):
        produced += 1
        if produced > cursor:
            yield LogLine(text, produced)


def _sweep_lines(seam, container, state, run_id, follow, sleep, clock, on_status, on_wait, stop, failure):
    parent, search = state["job"], state["search"]
    trials = search["trials"]
    yield _event_text({"v": 1, "type": "run_start", "search": {"trials": trials,
                                                              "budget_seconds": search.get("budget_seconds")}})
    offsets, ended, numbers, known, tagged = {}, set(), {}, set(), set()
    delay, notices = MIN_POLL, StatusNotices(on_status, on_wait, clock)
    while True:
        status = seam.job_status(parent)
        notices.see(status)
        done = map_status(status) in TERMINAL or status in stop
        record = seam.run_record(parent) if done else {}  # its end: why trials were canceled, how long it ran
        children = seam.child_runs(parent)
        names = {c["name"] for c in children}
        if names != known or names - tagged:  # a new trial job, or one whose tag was not there yet
            tags = seam.run_record(parent)["tags"]
            known, tagged = names, names & set(tags)
            numbers = trial_numbers(parent, tags, children, len(trials))
        emitted = False
        for child in sorted(children, key=lambda c: numbers.get(c["name"], 0)):
            number, name = numbers.get(child["name"]), child["name"]
            if number is None or name in ended:
                continue
            trial = trial_id(number)
            child_state = map_status(child["status"])
            if child_state != QUEUED or name in offsets:
                for line in tail(_TrialView(seam, child["status"]), name, offsets.get(name, 0), follow=False):
                    offsets[name] = line.cursor
                    text = retag(line.text, trial, trials[number - 1])
                    if text is not None:
                        emitted = True
                        yield text
            if child_state in TERMINAL or (done and child_state != QUEUED):
                metrics, history, _ = read_trial_files(container, run_id, name)
                summary = trial_summary(number, trials[number - 1], child, metrics, history,
                                        sweep_facts(status, record, search))
                ended.add(name)
                emitted = True
                yield _event_text({"v": 1, "type": "trial_end", **summary})
        if done:
            end = {"v": 1, "type": "run_end", "status": STATES.get(map_status(status), status.lower())}
            if record.get("start") is not None and record.get("end") is not None:
                end["seconds"] = round(record["end"] - record["start"], 3)
            if map_status(status) == FAILED and failure:
                end["error"] = failure()
            yield _event_text(end)
            return
        if not follow:
            return
        delay = MIN_POLL if emitted else min(delay * 1.5, MAX_POLL)
        sleep(delay)
