"""The progress event protocol, client side (DESIGN.md 4.2).

One parser for every backend: a local log file, `docker logs` and Azure ML's std_log.txt all
carry the same lines. Unknown event types are passed through and ignored by the renderer, so
an older client can follow a newer script.
"""
import json

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
