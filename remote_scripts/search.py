#!/usr/bin/env python3
"""The search job: several training configurations on one dataset, the best one's model out.

    python remote_scripts/search.py --data DIR --output DIR --trials JSON [--trial K] [train.py options]

The trials (search_space.py: cheapest first) run one after another in this one process, each as
train.py's run() with its options put over the shared ones, so that what they have in common is
done once: the images are decoded and split once (every trial sees the same split, so their
validation numbers compare), and linear-mode trials on the same backbone share one featurization
(ten of them cost one). `--time-budget` is the whole search's: each trial gets what is left, and a
trial is not started once nothing is. A trial whose validation loss trails the median of the
earlier trials of its mode at the same epoch is stopped there (median stopping, after
DELAY_EPOCHS), evaluated and ranked all the same.

Output, under --output:
  trials/tNN/outputs/   each trial's metrics.json, history.jsonl, predictions.csv, labels.json;
                        model.onnx only for the best trial (written when a trial takes the lead,
                        removed from the trial it took it from), so ten ResNet50 trials do not
                        leave ten 100 MB models behind
  trials/tNN/logs/train.log   the trial's own log, as train.py would have written it
  search.json           every trial's summary, written again after each one; "best" names the
                        leader (search_space.rank_key: validation accuracy of the kept epoch)
  model.onnx, labels.json, metrics.json, history.jsonl, predictions.csv
                        the best trial's, so that a search's outputs are a run's outputs
Events: the trials' events carry "trial"; see progress.py. With `--trial K` (an Azure ML sweep
trial, one job per trial) trial K alone runs, as train.py would run it, into --output.
"""
import gc
import os
import shutil
import signal
import statistics
import sys
import time

# As in train.py: a SIGTERM during the imports below (torch takes seconds) is kept for main(), which
# ends the search with its run_end event.
STARTUP_SIGNALS = []
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: STARTUP_SIGNALS.append(signum))
    gc.disable()  # as in train.py: no collection walks the objects the imports make

if not (__spec__ and __spec__.parent):  # started as a file: this folder becomes the package remote_scripts
    import job_package  # noqa: F401
from remote_scripts import options, progress, search_space, train
from remote_scripts.atomic import write_atomically
from remote_scripts.lifecycle import Canceled, RunEnd, UsageError, outcome_of, run_job
from remote_scripts.outputs import OUTPUT_FILES
from remote_scripts.reporting import Reporter

DELAY_EPOCHS = 2  # median stopping compares trials from this epoch on


def parse_args(argv):
    """(the search's own options, checked; the shared training arguments)."""
    parser = train.ArgumentParser(prog="search.py", add_help=False)
    parser.add_argument("--trials", required=True)
    parser.add_argument("--trial", type=int)
    own, shared = parser.parse_known_args(argv)
    try:
        own.trials = search_space.parse_trials_argument(own.trials)
    except search_space.SpaceError as exc:
        raise UsageError(str(exc)) from None
    if own.trial is not None and not 1 <= own.trial <= len(own.trials):
        raise UsageError(f"--trial {own.trial}: the search has trials 1 to {len(own.trials)}")
    return own, shared


def trial_args(shared, trial, output):
    """train.py's arguments of one trial: its options over the shared ones, into `output`."""
    args = train.parse_args([*shared, *options.to_arguments(trial)])
    vars(args).update(trial)  # a switch the trial turns off, too
    args.output, args.checkpoint_dir = output, None
    return args


class TrialReporter(Reporter):
    """A trial's events on stdout with its id ("trial": "t03"; its run_start is trial_start), and
    all of its events and lines, untagged, in its own log: a trial's folder is a run's folder."""

    def __init__(self, trial_id, config, log_path):
        super().__init__(main=True)
        self.trial_id, self.config = trial_id, config
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        self.log_file = open(log_path, "a", encoding="utf-8")

    def event(self, type_, **fields):
        self.log_file.write(progress.event_line(type_, **fields))
        self.log_file.flush()
        if type_ == "run_start":  # its "config" (every option's value) is the trial's "settings"
            settings = {key: value for key, value in fields.items() if key != "config"}
            progress.emit("trial_start", trial=self.trial_id, **settings, settings=fields.get("config"),
                          config=self.config)
        elif type_ != "run_end":  # the search reports it, as trial_end
            progress.emit(type_, trial=self.trial_id, **fields)

    def throttle(self, phase, total, last=True, **fields):
        """Progress events go to stdout only (a trial's log keeps its phases and epochs)."""
        return super().throttle(phase, total, last=last, trial=self.trial_id, **fields)

    def log(self, text):
        self.log_file.write(text + "\n")
        print(f"[{self.trial_id}] {text}", flush=True)

    def start_mlflow(self, params):
        """Nothing: trials in one process would be one MLflow run, whose parameters cannot change
        from trial to trial (search.json has them all). An Azure ML sweep's trials are jobs of
        their own and log to MLflow as runs do."""

    def close(self):
        self.log_file.close()


class Search(train.OneRun):
    """The trials of one search, run one after another in this process, sharing what they can."""

    def __init__(self, output, trials, budget, started):
        self.output, self.trials, self.budget, self.started = output, trials, budget, started
        self.datasets, self.featurized = {}, {}
        self.summaries = []
        self.current = None  # the running trial's config
        self.best = None     # the leading trial's summary

    # -- what the trials share (train.OneRun) ------------------------------------------------
    def dataset(self, args, load):
        key = (args.image_size,)  # the options that shape the data are the same for every trial
        if key not in self.datasets:
            self.datasets[key] = load()
        return self.datasets[key]

    def features(self, key, compute):
        if key not in self.featurized:
            self.featurized[key] = compute()
        return self.featurized[key]

    def falls_behind(self, history):
        """Median stopping: the trial's lowest validation loss so far is above the median of the
        lowest the earlier trials of its mode had by the same epoch (at least two of them)."""
        epoch = len(history)
        mine = _lowest_val_loss(history)
        if epoch < DELAY_EPOCHS or mine is None:
            return False
        theirs = [loss for summary in self.summaries if summary["config"].get("mode") == self.current.get("mode")
                  and len(summary["history"]) >= epoch
                  and (loss := _lowest_val_loss(summary["history"][:epoch])) is not None]
        return len(theirs) >= 2 and mine > statistics.median(theirs)

    def exports_model(self, history):
        return self.best is None or search_space.rank_key(search_space.kept_epoch(history)) < search_space.rank_key(self.best)

    # -- the search ---------------------------------------------------------------------------
    def time_left(self):
        return None if self.budget is None else self.budget - (time.time() - self.started)

    def run(self, shared, dist, stop):
        """Every trial in order while the budget lasts; the number of the trials that completed.

        However it ends (canceled too), search.json then lists every trial, those that never
        started as not_started, and the best trial so far is the search's outputs."""
        try:
            for number, config in enumerate(self.trials, 1):
                left = self.time_left()
                if left is not None and left <= 0:
                    self.summaries.append(_summary(search_space.trial_id(number), config, "not_started"))
                    continue
                self.run_trial(search_space.trial_id(number), config, shared, dist, stop, left)
                self.write()
        finally:
            for number in range(len(self.summaries) + 1, len(self.trials) + 1):
                self.summaries.append(_summary(search_space.trial_id(number), self.trials[number - 1], "not_started"))
            self.write()
            if self.best is not None:
                stop.deferred = True  # a SIGTERM now waits until the outputs are whole
                self.publish_best()
        return sum(1 for s in self.summaries if s["status"] == "completed")

    def run_trial(self, trial_id, config, shared, dist, stop, left):
        """One trial, as a training run into trials/<trial_id>: its failure is its own (the search
        goes on with the next), a cancel is the search's (recorded, then raised)."""
        folder = os.path.join(self.output, "trials", trial_id)
        report = TrialReporter(trial_id, config, os.path.join(folder, "logs", "train.log"))
        end = RunEnd(report, time.time())
        self.current = config
        status = error = None
        try:
            args = trial_args(shared, config, os.path.join(folder, "outputs"))
            if left is not None:
                left = round(left, 1)
                args.time_budget = left if args.time_budget is None else min(args.time_budget, left)
            train.run(args, dist, report, end.started, stop, job=self)
            status = "completed"
            end(status, 0)
        except Canceled as exc:
            status, error = "canceled", str(exc)
            end(status, 128 + exc.signum, error)
            raise
        except Exception as exc:
            status, code, error = outcome_of(exc, dist, report)
            end(status, code, error)
        finally:
            report.close()
            if status is not None:
                self.conclude(trial_id, config, status, error, time.time() - end.started, folder)

    def conclude(self, trial_id, config, status, error, seconds, folder):
        """The trial's summary, and the lead: its model is kept if it leads, else removed (a trial
        that failed after its export does not keep one either)."""
        summary = _summary(trial_id, config, status, error=error, seconds=round(seconds, 3),
                           outputs=os.path.join(folder, "outputs"))
        self.summaries.append(summary)
        if status == "completed" and self.exports_model(summary["history"]):
            if self.best is not None:
                _remove(os.path.join(self.output, "trials", self.best["trial"], "outputs", "model.onnx"))
            self.best = summary
        else:
            _remove(os.path.join(folder, "outputs", "model.onnx"))
        progress.emit("trial_end", **_public(summary))

    def write(self):
        """search.json, again after each trial: a search stopped midway still tells what it found."""
        doc = {"primary_metric": search_space.PRIMARY_METRIC, "budget_seconds": self.budget,
               "best": self.best["trial"] if self.best else None,
               "trials": [_public(summary) for summary in self.summaries]}
        write_atomically(os.path.join(self.output, search_space.SEARCH_FILE), (progress.dumps(doc, indent=2) + "\n").encode())

    def publish_best(self):
        """The best trial's files as the search's own outputs (hard links where the disk allows)."""
        source = os.path.join(self.output, "trials", self.best["trial"], "outputs")
        for name in OUTPUT_FILES:
            target = os.path.join(self.output, name)
            _remove(target)
            try:
                os.link(os.path.join(source, name), target)
            except OSError:
                shutil.copy2(os.path.join(source, name), target)


def _lowest_val_loss(history):
    losses = [row["val_loss"] for row in history if isinstance(row.get("val_loss"), (int, float))]
    return min(losses, default=None)


def _summary(trial_id, config, status, error=None, seconds=None, outputs=None):
    """A trial's row of search.json (and its history, kept for median stopping)."""
    history = search_space.parse_history(_read(os.path.join(outputs, "history.jsonl"))) if outputs else []
    metrics = search_space.parse_metrics(_read(os.path.join(outputs, "metrics.json"))) if outputs else {}
    return {**search_space.trial_row(trial_id, config, status, metrics, history, seconds, error), "history": history}


def _public(summary):
    return {key: value for key, value in summary.items() if key != "history"}


def _read(path):
    """A trial file's bytes; b"" when it is missing (a trial that did not get that far)."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return b""


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def main(argv=None):
    return run_job(lambda dist, report, started, stop: run_search(sys.argv[1:] if argv is None else argv,
                                                                  dist, report, started, stop), STARTUP_SIGNALS)


def run_search(argv, dist, report, started, stop):
    """The job's work: every trial in turn, or the one --trial names (an Azure ML sweep's trial)."""
    own, shared = parse_args(argv)
    base = train.parse_args(shared)
    if own.trial is not None:  # one trial of an Azure ML sweep: a training run
        args = trial_args(shared, own.trials[own.trial - 1], base.output)
        args.checkpoint_dir = base.checkpoint_dir
        train.run(args, dist, report, started, stop)
        return
    search = Search(base.output, own.trials, base.time_budget, started)
    report.event("run_start", search={"trials": own.trials, "budget_seconds": base.time_budget})
    if not search.run(shared, dist, stop):
        failures = [s for s in search.summaries if s["status"] == "failed"]
        raise UsageError("no trial completed within the time budget" if not failures else
                         f"no trial completed; {failures[0]['trial']}: {failures[0]['error']}")


if __name__ == "__main__":
    gc.freeze()  # as train.py does: the imports' objects are never garbage
    gc.enable()
    sys.exit(main())
