"""How a job process ends: signals, the one run_end event, exit codes.

Every job (train.py, search.py) is one process per rank that must end the same way however it
ends -- completed, canceled by a signal, failed by bad input, failed by a bug, or stopped because
another rank failed -- with exactly one run_end event and an exit code the backends read: 0 done;
2 bad data or arguments (one line on stderr); 128 + N stopped by signal N (143 SIGTERM, 130
SIGINT); 1 any other failure (a diverged loss: one line, no traceback). run_job holds that
protocol once, so each entry point is only its work.
"""
import os
import signal
import sys
import threading
import time
import traceback

from .folder_dataset import DatasetError
from .models import WeightsError
from .reporting import Reporter
from .runtime import DeviceError, Dist, PeerFailed, PrecisionError


class UsageError(Exception):
    """Bad arguments or unusable input: exit 2 with this message on stderr."""


class Diverged(Exception):
    """The loss became NaN or infinite: exit 1 without exporting a model that predicts nothing."""

    def __init__(self, epoch):
        super().__init__(f"loss diverged at epoch {epoch}; lower --lr")


class Canceled(Exception):
    """SIGTERM or SIGINT arrived: report `canceled`, exit 128 + the signal number."""

    def __init__(self, signum):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


class Stop:
    """SIGTERM / SIGINT: raise Canceled at once, or, inside a training epoch, at the next step.

    Between two steps the model, optimizer and RNGs are consistent, so the checkpoint written then
    (within the backends' 10-second grace) lets a resumed run lose no completed step.
    """

    def __init__(self):
        self.deferred = False
        self.requested = None
        self.on_stop = None  # called once, with the signal number, before Canceled is raised

    def handle(self, signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the cleanup run
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.requested = signum
        if not self.deferred:
            raise Canceled(signum)

    def at_safe_point(self):
        if self.requested is not None:
            if self.on_stop:
                self.on_stop(self.requested)
            raise Canceled(self.requested)

    def undefer(self):
        """Back to stopping at once; a signal that came after the last safe point stops now."""
        self.deferred, self.on_stop = False, None
        if self.requested is not None:
            raise Canceled(self.requested)


class RunEnd:
    """Reports the run_end event once, from whichever thread ends the run first: the main thread,
    or Dist's watcher thread ending a process that a failure elsewhere left blocked."""

    def __init__(self, report, started):
        self.report, self.started = report, started
        self.lock = threading.Lock()
        self.code = None

    def __call__(self, status, code, error=None):
        """Report the end unless it has been reported; the exit code that was reported."""
        with self.lock:
            if self.code is None:
                self.code = code
                self.report.event("run_end", status=status, seconds=round(time.time() - self.started, 3),
                                  exit_code=code, error=error)
        return self.code


def outcome_of(exc, dist, report):
    """(status, exit code, error) of the run_end event for the exception that ends this process.

    Distributed, a failure is the first one any process posted (Dist.fail): the one that made the
    others fail or stop. Bad data or arguments exit 2 and a diverged loss 1, with one line on
    stderr; anything else (a bug, the machine) exits 1 with its traceback.
    """
    if isinstance(exc, Canceled):
        failure = dist.failure()  # torchrun's agent stops every process once one has failed
        if failure is None:
            report.log(f"canceled by signal {exc.signum}")
            return "canceled", 128 + exc.signum, str(exc)
    elif isinstance(exc, PeerFailed):
        failure = exc.failure
        print(f"error: {exc}", file=sys.stderr, flush=True)
    else:
        expected = isinstance(exc, (UsageError, DeviceError, PrecisionError, WeightsError, DatasetError, Diverged))
        code = 1 if not expected or isinstance(exc, Diverged) else 2
        message = str(exc) if expected else f"{type(exc).__name__}: {exc}"
        failure = dist.fail(code, message)
        if failure.message != message:  # e.g. a collective broken by the failed process's exit
            print(f"error: {failure.error} (then here: {message})", file=sys.stderr, flush=True)
        elif expected:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        else:
            traceback.print_exc()
            sys.stderr.flush()
    return "failed", failure.code, failure.error


def run_job(work, startup_signals=()):
    """Run work(dist, report, started, stop) as a job process; its exit code (see the module).

    startup_signals: the SIGTERMs an entry point caught during its imports (torch takes seconds,
    and torchrun's agent stops every process that early when one fails at once): honoured first.
    A failure posted by another rank ends this one too, from Dist's watcher thread if need be.
    """
    started = time.time()
    dist = Dist.from_env()
    report = Reporter(dist.main)
    end = RunEnd(report, started)
    dist.watch(lambda failure: os._exit(end("failed", failure.code, failure.error)))
    stop = Stop()
    previous = {s: signal.signal(s, stop.handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if startup_signals:
            stop.handle(startup_signals[0], None)
        work(dist, report, started, stop)
        return end("completed", 0)
    except Exception as exc:
        stop.deferred = True  # a SIGTERM now (torchrun stopping every process) must not cut the report short
        return end(*outcome_of(exc, dist, report))
    finally:
        dist.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
