"""The progress event protocol (DESIGN.md 4.2): the job's events, and the client's own.

One parser for every backend: a local log file, `docker logs` and Azure ML's std_log.txt all
carry the same lines. Unknown event types are passed through and ignored by the renderer, so
an older client can follow a newer script.
"""
import json
from typing import Callable

PREFIX = "@@orchestrate "

# The types this client understands (remote_scripts/progress.py EVENT_TYPES must be a subset;
# tests/test_contract.py checks it).
KNOWN_TYPES = frozenset({
    "run_start", "phase", "progress", "epoch_end", "checkpoint", "skipped",
    "warning", "metrics", "artifact", "run_end", "trial_start", "trial_end",
})


def parse_line(line):
    """The event dict carried by one log line, or None for an ordinary log line."""
    start = line.find(PREFIX)
    if start < 0:
        return None
    try:
        event = json.loads(line[start + len(PREFIX):])
    except ValueError:
        return None
    if not isinstance(event, dict) or "type" not in event:
        return None
    return event


# Client-side events: what the SDK itself does (uploads, downloads, waiting on a service), in the
# same dict shape as the job's events, so one on_event callback and one renderer serve both.
# The callbacks of the SDK: progress goes to an OnEvent; a question whose answer decides whether to
# go on (create a compute cluster, delete a workspace) goes to an Approve: a false answer stops,
# and None in its place means "go on".
OnEvent = Callable[[dict], None]
Approve = Callable[[str], bool]


def notice(message):
    """A line for the user: what is being done or was left out ("uploading 3 shards", a warning)."""
    return {"type": "notice", "message": message}


def transfer(what, done, total=None, unit="bytes"):
    """Progress of a transfer or a pass over files: `done` of `total` (None: not known yet) `unit`s
    (bytes, files, images) of `what` ("upload", "hashing", "resnet50 ImageNet weights")."""
    return {"type": "transfer", "what": what, "done": done, "total": total, "unit": unit}


def build_output(line):
    """One line of an image build's output (docker build, a pull, debootstrap): shown as it comes,
    most of it only in passing."""
    return {"type": "build", "line": line}


def ignore(event):
    """The default on_event: progress is optional."""


def job_seconds(events):
    """How long the job ran, in seconds: the run_end events' seconds of every attempt of a resumed
    run together (the time the job was given, not the wall clock from the first start to the last
    end); None when no attempt reported its end."""
    seconds = [event["seconds"] for event in events or () if event.get("type") == "run_end"
               and isinstance(event.get("seconds"), (int, float)) and not isinstance(event["seconds"], bool)]
    return round(sum(seconds), 3) if seconds else None
