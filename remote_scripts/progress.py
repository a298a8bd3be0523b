"""The progress event protocol, script side (DESIGN.md 4.2).

Each event is one line on stdout: the fixed PREFIX, then one JSON object with "v" and "type".
Ordinary log lines may be interleaved freely; the client's parser (orchestrator/events.py)
picks out only prefixed lines, so the same stream works from a local log file, `docker logs`
and Azure ML's std_log.txt.
"""
import json
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
    "metrics",     # the final test-split metrics (same dict as metrics.json)
    "artifact",    # name, bytes, sha256
    "run_end",     # status: completed | failed | canceled, seconds, exit_code, error
)


def emit(type_, **fields):
    """Print one event line and flush, so followers see it at once."""
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    payload = {"v": VERSION, "type": type_, "time": round(time.time(), 3)}
    payload.update(fields)
    sys.stdout.write(PREFIX + json.dumps(payload, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class ProgressThrottle:
    """Emits `progress` events at most every `interval` seconds (and always the last one).

    Keyword `fields` go into every event: the training phase adds epoch=, epochs=, which the
    client's renderer shows as "train epoch 3/10".
    """

    def __init__(self, phase, total, interval=0.5, **fields):
        self.phase = phase
        self.total = total
        self.interval = interval
        self.fields = fields
        self._last = 0.0

    def update(self, done):
        now = time.monotonic()
        if done >= self.total or now - self._last >= self.interval:
            self._last = now
            emit("progress", phase=self.phase, done=done, total=self.total, **self.fields)
