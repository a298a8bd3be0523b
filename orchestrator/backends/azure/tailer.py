"""Follow an Azure ML job's log by byte offset, and map its status to ours.

Why not `ml.jobs.stream()`: it re-downloads whole log files on every poll, cannot resume (a
re-attach prints everything again), and raises on failure and Ctrl-C. Here the cursor is the byte
offset just past the last complete line handed out, so a client that re-attaches with it sees
nothing twice, and each poll fetches only the new bytes (HTTP Range via the seam).
"""
import re
import time

from ..base import CANCELED, COMPLETED, FAILED, QUEUED, RUNNING, TERMINAL, LogLine

# Only the service's own terminal states map to ours. CancelRequested is not one: the job may still
# write its checkpoint and even complete, so declaring it canceled would stop the follower and
# tell the ledger something false. NotResponding is transient (a node missed heartbeats).
STATUS = {
    "NotStarted": QUEUED, "Queued": QUEUED, "Preparing": QUEUED, "Starting": QUEUED,
    "Provisioning": QUEUED,
    "Running": RUNNING, "Finalizing": RUNNING, "CancelRequested": RUNNING, "NotResponding": RUNNING,
    "Completed": COMPLETED,
    "Failed": FAILED,
    "Canceled": CANCELED,
}
# rank 0's stdout, the file Azure ML's own streamer follows (std_log.txt, std_log_process_0.txt)
RANK0_LOG = re.compile(r"^user_logs/std_log[\D]*0*(?:_ps)?\.txt$")
MIN_POLL, MAX_POLL = 2.0, 30.0


def map_status(azure_status):
    """Our state for an Azure ML job status; unknown or transient ones (Paused, Unknown) count as
    queued, so a follower keeps waiting rather than declaring an end the service has not."""
    return STATUS.get(azure_status, QUEUED)


def rank0_log(log_urls):
    """The URL of rank 0's std_log among {name: url}, or None before the job writes one."""
    names = sorted(n for n in log_urls if RANK0_LOG.match(n))
    if "user_logs/std_log.txt" in names:
        return log_urls["user_logs/std_log.txt"]
    return log_urls[names[0]] if names else None


def tail(seam, job, cursor=0, follow=True, sleep=time.sleep, on_status=None):
    """Yield LogLine(text, cursor) from byte offset `cursor`; with follow, until the job ends.

    A trailing line without its newline is held back until it is complete or the job has ended
    (the status is read before the log, so the read after a terminal status is the last one).
    `on_status(azure_status)` is called on each change, so the minutes of Queued/Preparing
    (nodes starting, image building) before the first log line are not silent.
    """
    offset, delay, last = cursor, MIN_POLL, None
    while True:
        status = seam.job_status(job)
        if on_status and status != last:
            on_status(status)
        state, last = map_status(status), status
        url = rank0_log(seam.log_urls(job))
        data = seam.read_from(url, offset) if url else b""
        *lines, rest = data.split(b"\n")
        for raw in lines:
            offset += len(raw) + 1
            yield LogLine(raw.rstrip(b"\r").decode("utf-8", "replace"), offset)
        done = state in TERMINAL
        if done and rest:
            offset += len(rest)
            yield LogLine(rest.decode("utf-8", "replace"), offset)
        if done or not follow:
            return
        delay = MIN_POLL if lines else min(delay * 1.5, MAX_POLL)
        sleep(delay)
