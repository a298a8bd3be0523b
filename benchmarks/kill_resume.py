"""Benchmark: kill -9 a local training run at 10 random moments, resume it each time, compare.

An uninterrupted reference run first measures the run's timeline. Then the same job is started
again and killed with SIGKILL of its whole process group -- what a crash or a reboot does: no exit
code, no checkpoint on the way out -- at `--kills` moments drawn (seeded) uniformly over the
reference run's duration, and resumed right after each kill with `orchestrate train --resume RUN`;
after the last kill it runs to its end.

A moment is a position in the run, not a wall-clock time: a resumed attempt starts the process,
scans and loads the data again, then goes on from its checkpoint, so "12.5 s into the reference"
becomes the point the reference had reached then -- "startup + 3.1 s", "epoch 4 + 0.6 s",
"evaluate + 0.2 s" -- and the attempt is killed when it gets there. So the kills spread over every
phase of the run instead of all landing in the start-up that each attempt repeats.

Reports: runs completed; for each kill where it hit, how many epochs the next attempt repeated
(epochs whose epoch_end had been logged before the kill and is logged again after it) and how long
the next attempt took to train again (process start, imports, scan, model, checkpoint); the total
time against the reference's (the overhead ratio); the ledger's record; and whether the final model
has the format of the reference's: the same output files, an ONNX model that loads in onnxruntime
with the same metadata keys, labels and input shape (and how far its outputs are from the
reference's on the same input).

Run: .venv/bin/python benchmarks/kill_resume.py [--kills 10] [--seed 0] [--epochs 6] [--runs 1] [--json]
A tiny job (resnet18, 32 px, full mode, 48 generated images): a few minutes on 2 CPU cores.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

ORCHESTRATE = Path(sys.executable).with_name("orchestrate")
POLL_SECONDS = 0.05


def job_args(epochs):
    return ["--backend", "local", "--arch", "resnet18", "--weights", "none", "--image-size", "32",
            "--mode", "full", "--epochs", str(epochs), "--patience", str(epochs), "--batch-size", "8"]


def orchestrate(*args):
    result = subprocess.run([str(ORCHESTRATE), *map(str, args)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        command = " ".join(map(str, args))
        raise SystemExit(f"orchestrate {command} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def events_of(text):
    from orchestrator.events import parse_line

    return [event for event in map(parse_line, text.splitlines()) if event]


class Run:
    """A run started through the CLI, seen through the ledger and its log file."""

    def __init__(self, run_id):
        from orchestrator.ledger import Ledger

        self.run_id, self.ledger = run_id, Ledger()
        self.log = Path(self.ledger.get(run_id).run_dir) / "logs" / "train.log"

    @classmethod
    def start(cls, data, runs_dir, epochs):
        return cls(json.loads(orchestrate("train", data, *job_args(epochs), "--runs-dir", runs_dir,
                                          "--detach", "--json"))["run_id"])

    def ref(self):
        from orchestrator.runner import run_ref

        return run_ref(self.ledger.get(self.run_id))

    def status(self):
        from orchestrator.backends.local import LocalBackend

        return LocalBackend().status(self.ref())

    def log_bytes(self):
        return self.log.read_bytes() if self.log.exists() else b""

    def wait_end(self):
        from orchestrator.backends.base import TERMINAL

        while (status := self.status()) not in TERMINAL:
            time.sleep(POLL_SECONDS)
        return status

    def kill(self):
        """SIGKILL to the whole process group (the supervisor leads it), then wait until it is gone."""
        from orchestrator.backends.local import job_processes

        run = self.ref()
        try:
            os.killpg(int(run.remote_id.partition(":")[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass
        while job_processes(run):
            time.sleep(POLL_SECONDS)


def anchors(events, started):
    """{anchor: seconds after `started`} for the points of one attempt's log that a resumed attempt
    passes again: its start, each phase, the start of each epoch it trains."""
    found = {"startup": 0.0}
    resumed = 0
    for event in events:
        at = event["time"] - started
        if event["type"] == "phase":
            found.setdefault(f"phase {event['name']}", at)
            if event["name"] == "train":
                found.setdefault(f"epoch {resumed + 1}", at)
        elif event["type"] == "run_start":
            resumed = event.get("resumed_from_epoch") or 0
        elif event["type"] == "epoch_end":
            found.setdefault(f"epoch {event['epoch'] + 1}", at)
    return found


def position(reference, moment):
    """The (anchor, offset) the reference run had reached `moment` seconds after its start."""
    anchor = max((name for name, at in reference.items() if at <= moment), key=reference.get)
    return anchor, moment - reference[anchor]


def kill_at(run, anchor, offset, attempt_started, log_offset):
    """Wait until the attempt (its log from `log_offset` on) reaches `anchor`, then `offset` more
    seconds, and kill it. An attempt that resumed past the anchor's epoch is killed once it trains.
    Returns where the kill hit, or None when the run completed first."""
    from orchestrator.backends.base import TERMINAL

    while True:
        events = events_of(run.log_bytes()[log_offset:].decode("utf-8", "replace"))
        reached = anchors(events, attempt_started)
        start = next((e for e in events if e["type"] == "run_start"), None)
        if anchor.startswith("epoch ") and start and (start.get("resumed_from_epoch") or 0) >= int(anchor.split()[1]):
            anchor, offset = "phase train", 0.0  # that epoch is behind this attempt already
        if anchor in reached:
            break
        if run.status() in TERMINAL:
            return None
        time.sleep(POLL_SECONDS)
    time.sleep(max(0.0, attempt_started + reached[anchor] + offset - time.time()))
    if run.status() in TERMINAL:
        return None
    run.kill()
    return f"{anchor} + {offset:.2f}s"


def attempt_events(log, boundaries):
    """The events of each attempt, the log cut at the attempts' byte offsets."""
    cuts = [*boundaries, len(log)]
    return [events_of(log[a:b].decode("utf-8", "replace")) for a, b in zip(cuts, cuts[1:])]


def model_format(outputs):
    """What an output folder's model looks like from outside: files, ONNX metadata, labels, input."""
    import onnxruntime

    from remote_scripts.imaging import LABELS_KEY

    session = onnxruntime.InferenceSession(str(outputs / "model.onnx"), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    first = session.get_inputs()[0]
    return session, {"files": sorted(os.listdir(outputs)), "metadata_keys": sorted(metadata),
                     "labels": json.loads(metadata[LABELS_KEY]), "input_shape": first.shape,
                     "history_epochs": [json.loads(line)["epoch"] for line in
                                        (outputs / "history.jsonl").read_text().splitlines()]}


def killed_run(data, runs_dir, epochs, reference_anchors, duration, kills, seed):
    """One run killed at `kills` seeded moments and resumed after each; its measurements."""
    rng = np.random.default_rng(seed)
    moments = np.sort(rng.uniform(0, duration, kills))
    started = time.time()
    run = Run.start(data, runs_dir, epochs)
    attempt_started, boundaries, hits, starts = started, [0], [], [started]
    for moment in moments:
        anchor, offset = position(reference_anchors, moment)
        where = kill_at(run, anchor, offset, attempt_started, boundaries[-1])
        if where is None:
            break
        hits.append({"moment": round(float(moment), 2), "hit": where})
        boundaries.append(len(run.log_bytes()))
        attempt_started = time.time()
        starts.append(attempt_started)
        orchestrate("train", "--resume", run.run_id, "--detach")
    status = run.wait_end()
    seconds = time.time() - started
    orchestrate("status", run.run_id)  # records the outcome in the ledger, as any follower does
    record = run.ledger.get(run.run_id)
    per_attempt = attempt_events(run.log_bytes(), boundaries)
    ended = [[e["epoch"] for e in events if e["type"] == "epoch_end"] for events in per_attempt]
    for i, hit in enumerate(hits):
        later = {epoch for epochs_ in ended[i + 1:] for epoch in epochs_}
        hit["epochs_repeated"] = sum(1 for epoch in ended[i] if epoch in later)
        # what the next attempt spent before training again: process, imports, scan, model, checkpoint
        restart = anchors(per_attempt[i + 1], starts[i + 1]).get("phase train")
        hit["restart_seconds"] = None if restart is None else round(restart, 2)
    return {"run_id": run.run_id, "status": status, "seconds": round(seconds, 1), "kills": hits,
            "ledger": {"status": record.status, "attempts": record.attempts, "exit_code": record.exit_code,
                       "rows": sum(1 for r in run.ledger.list(1000) if r.run_id == run.run_id)},
            "outputs": Path(record.run_dir) / "outputs"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--runs", type=int, default=1, help="killed runs, seeds seed, seed+1, ...")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()

    from imagegen import make_dataset

    root = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    for name in ("XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):  # a ledger and caches of its own
        os.environ[name] = str(root / name.lower())
    data = make_dataset(root / "data", per_class=16, size=32)

    started = time.time()
    reference = Run.start(data, root / "runs", args.epochs)
    if reference.wait_end() != "completed":
        raise SystemExit(f"the reference run did not complete: see {reference.log}")
    events = events_of(reference.log.read_text())
    reference_anchors = anchors(events, started)
    duration = next(e["time"] for e in events if e["type"] == "run_end") - started
    reference_seconds = round(time.time() - started, 1)
    reference_session, reference_format = model_format(Path(reference.ledger.get(reference.run_id).run_dir) / "outputs")

    runs = [killed_run(data, root / "runs", args.epochs, reference_anchors, duration, args.kills, args.seed + i)
            for i in range(args.runs)]
    probe = np.random.default_rng(0).standard_normal([4, *reference_format["input_shape"][1:]]).astype(np.float32)
    expected = reference_session.run(None, {reference_session.get_inputs()[0].name: probe})[0]
    for result in runs:
        session, found = model_format(result.pop("outputs"))
        result["same_format"] = found == reference_format
        result["format_differences"] = {key: (value, reference_format[key]) for key, value in found.items()
                                        if value != reference_format[key]}
        outputs = session.run(None, {session.get_inputs()[0].name: probe})[0]
        result["max_output_difference"] = float(np.abs(outputs - expected).max())
        result["overhead"] = round(result["seconds"] / reference_seconds, 2)

    repeated = [hit["epochs_repeated"] for result in runs for hit in result["kills"]]
    report = {"reference": {"seconds": reference_seconds, "epochs": args.epochs, "format": reference_format},
              "runs": runs, "runs_completed": sum(r["status"] == "completed" for r in runs),
              "runs_started": len(runs),
              "kills": len(repeated), "epochs_repeated_total": sum(repeated),
              "epochs_repeated_max_per_kill": max(repeated, default=0)}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


def print_report(report):
    reference = report["reference"]
    print(f"reference (uninterrupted): {reference['seconds']} s, {reference['epochs']} epochs, "
          f"outputs {reference['format']['files']}")
    for result in report["runs"]:
        kills = result["kills"]
        per_kill = (result["seconds"] - reference["seconds"]) / max(1, len(kills))
        print(f"\nrun {result['run_id']}: {result['status']} after {len(kills)} kills, {result['seconds']} s = "
              f"{result['overhead']}x the reference (+{per_kill:.1f} s per kill)")
        print(f"  {'kill':>4}  {'moment':>7}  {'hit':<28} {'epochs repeated':>15}  next attempt trains after")
        for i, hit in enumerate(kills, 1):
            restart = "-" if hit["restart_seconds"] is None else f"{hit['restart_seconds']:.1f}s"
            print(f"  {i:>4}  {hit['moment']:>6.2f}s  {hit['hit']:<28} {hit['epochs_repeated']:>15}  {restart}")
        print(f"  ledger: {result['ledger']}")
        differences = "" if result["same_format"] else f" {result['format_differences']}"
        print(f"  final model has the reference's format (files, ONNX metadata keys, labels, input shape, "
              f"history epochs): {result['same_format']}{differences}")
        print(f"  max |output - reference output| on one probe batch: {result['max_output_difference']:.2e}")
    print(f"\nruns completed: {report['runs_completed']}/{report['runs_started']}; kills: {report['kills']}; "
          f"epochs repeated: {report['epochs_repeated_total']} in all, "
          f"at most {report['epochs_repeated_max_per_kill']} per kill")

if __name__ == "__main__":
    main()
