"""The progress event protocol, script side (DESIGN.md 4.2).

Each event is one line on stdout: the fixed PREFIX, then one JSON object with "v" and "type".
Ordinary log lines may be interleaved freely; the client's parser (orchestrator/events.py)
picks out only prefixed lines, so the same stream works from a local log file, `docker logs`
and Azure ML's std_log.txt.
"""
import json
import math
import sys
import time

PREFIX = "@@orchestrate "
VERSION = 1

# Every type this script may emit. The contract test checks that the client knows each one.
EVENT_TYPES = (
    "run_start",   # classes, split sizes, device, config
    "phase",       # name: scan | featurize | train | evaluate | export
    "progress",    # phase, done, total (throttled to ~2/s)
    "epoch_end",   # epoch, epochs, train_loss, train_accuracy, val_loss, val_accuracy, seconds
    "checkpoint",  # epoch, path
    "skipped",     # files: [{path, reason}], count
    "warning",     # message
    "metrics",     # the final test-split metrics (metrics.json without the confusion matrix)
    "artifact",    # name, bytes, sha256
    "run_end",     # status: completed | failed | canceled, seconds, exit_code, error
    # A search (search.py): its trials' events carry "trial" (t01, t02...); their run_start is
    # trial_start, and each ends with trial_end, its summary (search_space.py ranks them).
    "trial_start",  # trial, config, and what run_start says
    "trial_end",    # trial, config, status, stopped, val_accuracy, val_loss, test metrics, seconds, error
)


def strict(obj):
    """`obj` with NaN and infinities as None.

    Python's json writes them as NaN / Infinity, which is not JSON: strict parsers (the client's
    other languages, jq, browsers) reject the whole line or file.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: strict(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(value) for value in obj]
    return obj


def dumps(obj, **kwargs):
    """Strict JSON text of `obj` (non-finite numbers as null): events, metrics.json, history.jsonl."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)


def event_line(type_, **fields):
    """The log line of one event, newline included."""
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    payload = {"v": VERSION, "type": type_, "time": round(time.time(), 3)}
    payload.update(fields)
    return PREFIX + dumps(payload, separators=(",", ":")) + "\n"


def emit(type_, **fields):
    """Print one event line and flush, so followers see it at once."""
    sys.stdout.write(event_line(type_, **fields))
    sys.stdout.flush()


class ProgressThrottle:
    """Emits `progress` events at most every `interval` seconds.

    Keyword `fields` go into every event; update() may change them (the training phase's
    epoch=, which the client's renderer shows as "train epoch 3/10"). One throttle serves a
    whole phase, epochs included, so that short epochs do not each emit at once. The update that
    reaches `total` is always emitted when `last` is true; the training phase turns that off,
    since its epoch_end events already mark each epoch's end.
    """

    def __init__(self, phase, total, interval=0.5, last=True, **fields):
        self.phase = phase
        self.total = total
        self.interval = interval
        self.last = last
        self.fields = fields
        self._last = 0.0

    def update(self, done, **fields):
        self.fields.update(fields)
        now = time.monotonic()
        if (self.last and done >= self.total) or now - self._last >= self.interval:
            self._last = now
            emit("progress", phase=self.phase, done=done, total=self.total, **self.fields)


class NoProgress:
    """What the processes other than rank 0 get instead of a ProgressThrottle: they report nothing."""

    def update(self, done, **fields):
        pass
