"""Follow an Azure ML job's log by byte offset, and map its status to ours.

Why not `ml.jobs.stream()`: it re-downloads whole log files on every poll, cannot resume (a
re-attach prints everything again), and raises on failure and Ctrl-C. Here the cursor is the byte
offset just past the last complete line handed out, so a client that re-attaches with it sees
nothing twice, and each poll fetches only the new bytes (HTTP Range via the seam).

A restarted attempt (a preempted low-priority node, a service retry) starts a fresh std_log.txt:
shorter than the offset, or different bytes before it. Each read therefore starts a few bytes
before the offset and checks that they are the bytes seen there; when they are not, the old
attempt's held-back partial line is handed out whole, and the new file is read from its start.
Cursors keep growing across attempts (bytes of earlier attempts + offset in the current file).
"""
import re
import time

from ..base import CANCELED, COMPLETED, FAILED, QUEUED, RUNNING, TERMINAL, LogLine

# Only the service's own end states map to ours. CancelRequested is not one: the job may still
# write its checkpoint and even complete, so declaring it canceled would stop the follower and
# tell the ledger something false. NotResponding (a node missed heartbeats) and Paused can still
# recover: azure-ai-ml counts them as terminal (its stream() stops there, and so does the
# follower, saying why: tail's `stop`), but the ledger is not told the run has ended.
STATUS = {
    "NotStarted": QUEUED, "Queued": QUEUED, "Preparing": QUEUED, "Starting": QUEUED,
    "Provisioning": QUEUED, "Paused": QUEUED,
    "Running": RUNNING, "Finalizing": RUNNING, "CancelRequested": RUNNING, "NotResponding": RUNNING,
    "Completed": COMPLETED,
    "Failed": FAILED,
    "Canceled": CANCELED,
}
# What a job waits for in each waiting status, in the words of the service's JobStatus enum
# (azure-rest-api-specs, machinelearningservices mfe.json; azure-ai-ml 1.35.2
# _restclient/arm_ml_service/models/_enums.py JobStatus; https://learn.microsoft.com/dotnet/api/
# azure.resourcemanager.machinelearning.models.machinelearningjobstatus): only Queued waits for
# the cluster's nodes ("queued in the compute target ... waiting for all required nodes to be
# ready"); Preparing is "the run environment is being prepared" (azure-ai-ml's Job.status: "Docker
# image build, conda environment setup"), so neither nodes nor quota are what it waits for.
WAITING = {
    "NotStarted": "the service has not started the job yet",
    "Starting": "the service has taken the job and is starting it",
    "Provisioning": "the service is creating the job's compute target",
    "Preparing": "the run environment is being prepared (its image is built and set up)",
    "Queued": "queued on the cluster, waiting for its nodes",
}
# rank 0's stdout, the file Azure ML's own streamer follows (std_log.txt, std_log_process_0.txt)
RANK0_LOG = re.compile(r"^user_logs/std_log[\D]*0*(?:_ps)?\.txt$")
MIN_POLL, MAX_POLL = 2.0, 30.0
WAIT_NOTICE = 60.0  # seconds in one waiting status before the follower says why
FINGERPRINT = 64    # bytes before the offset that must match for a read to continue a file


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


def _line(raw, cursor):
    return LogLine(raw.rstrip(b"\r").decode("utf-8", "replace"), cursor)


class StatusNotices:
    """What a follower says of a job's service status while it polls: on_status(status) at each
    change, on_wait(status, seconds) every WAIT_NOTICE seconds that a queued status lasts."""

    def __init__(self, on_status, on_wait, clock):
        self.on_status, self.on_wait, self.clock = on_status, on_wait, clock
        self.last, self.changed, self.noticed = None, clock(), None

    def see(self, status):
        now = self.clock()
        if status != self.last:
            self.changed = self.noticed = now
            if self.on_status:
                self.on_status(status)
        elif self.on_wait and map_status(status) == QUEUED and now - self.noticed >= WAIT_NOTICE:
            self.noticed = now
            self.on_wait(status, now - self.changed)
        self.last = status


def tail(seam, job, cursor=0, follow=True, sleep=time.sleep, on_status=None, on_wait=None,
         on_restart=None, stop=frozenset(), clock=time.monotonic):
    """Yield LogLine(text, cursor) from byte offset `cursor`; with follow, until the job ends.

    The job ends for the follower at our terminal states and at the service statuses in `stop`
    (the SDK's terminal ones: NotResponding, Paused). A trailing line without its newline is held
    back until it is complete, the file restarts, or the job has ended (the status is read before
    the log, so the read after a terminal status is the last one).
    `on_status(azure_status)` is called on each change; `on_wait(azure_status, seconds)` every
    WAIT_NOTICE seconds that a waiting (queued) status lasts unchanged; `on_restart()` when a new
    attempt's log replaces the one being read.
    """
    base, offset, seen, pending = 0, cursor, b"", b""
    delay, notices = MIN_POLL, StatusNotices(on_status, on_wait, clock)
    while True:
        status = seam.job_status(job)
        notices.see(status)
        state = map_status(status)
        url = rank0_log(seam.log_urls(job))
        data = b""
        if url:
            back = min(len(seen), offset)
            got = seam.read_from(url, offset - back)
            if back and got[:back] != seen[-back:]:  # a new attempt's file
                if pending:
                    yield _line(pending, base + offset + len(pending))
                base, offset, seen, pending = base + offset + len(pending), 0, b"", b""
                if on_restart:
                    on_restart()
                got, back = seam.read_from(url, 0), 0
            data = got[back:]
        *lines, rest = data.split(b"\n")
        for raw in lines:
            offset += len(raw) + 1
            yield _line(raw, base + offset)
        seen = (seen + data[:len(data) - len(rest)])[-FINGERPRINT:]
        pending = rest
        done = state in TERMINAL or status in stop
        if done and rest:
            offset += len(rest)
            yield _line(rest, base + offset)
        if done or not follow:
            return
        delay = MIN_POLL if lines else min(delay * 1.5, MAX_POLL)
        sleep(delay)
