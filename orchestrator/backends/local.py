"""The local process backend: train.py runs with this interpreter, detached from the client.

The job writes everything to runs/<id>/logs/train.log and its outputs straight into
runs/<id>/outputs; the client follows the log file, so a client can die and another one can
re-attach from a byte offset without showing anything twice. A resumed run's new attempt appends
to the same log file, so the byte cursor spans every attempt.
"""
import importlib.util
import os
import signal
import subprocess
import sys
import time

from ..errors import UsageError
from ..paths import remote_scripts_dir
from ..run_folder import RunFolder
from .base import CANCELED, COMPLETED, FAILED, LAUNCH_OPTIONS, RUNNING, Backend, LogLine, RunRef, launch_command
from .local_job import write_exit_code

POLL_SECONDS = 0.2
CANCEL_GRACE_SECONDS = 10


class LocalBackend(Backend):
    name = "local"
    resumable = True
    options = LAUNCH_OPTIONS

    @classmethod
    def auto_choice(cls, options, named=False):
        """This process runs any job: "auto" ends here when no other backend took it."""
        return ""

    def prepare(self, spec):
        missing = [m for m in ("torch", "torchvision", "onnx") if importlib.util.find_spec(m) is None]
        if missing:
            raise UsageError(
                f"{', '.join(missing)} not installed in {sys.executable}: the local backend trains in this "
                "Python; run pip install 'orchestrator[local]', or use --backend docker")

    def submit(self, spec):
        folder = RunFolder(spec.run_dir)
        folder.create()
        command = launch_command(sys.executable, remote_scripts_dir(), [
            "--data", str(spec.data.resolve()),
            "--output", str(spec.output_dir.resolve()),
            "--checkpoint-dir", str(folder.checkpoints.resolve()),
            *spec.train_args,
        ], nproc=spec.backend_options.get("nproc"), gpus=spec.backend_options.get("gpus"), trials=spec.trials)
        with open(spec.log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.backends.local_job", str(spec.run_dir.resolve()), "--",
                 *command],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return RunRef(spec.run_id, self.name, spec.run_dir,
                      remote_id=f"{process.pid}:{_start_time(process.pid) or ''}")

    def log_lines(self, run, cursor=0, follow=True):
        self._require_run_dir(run)
        path = RunFolder(run.run_dir).log_path
        if not path.is_file():
            raise UsageError(f"the log of run {run.run_id} is missing: {path}")
        with open(path, "rb") as log:
            log.seek(cursor)
            pending = b""
            while True:
                chunk = log.readline()
                if chunk:
                    pending += chunk
                    if pending.endswith(b"\n"):
                        cursor += len(pending)
                        yield LogLine(pending.decode("utf-8", "replace").rstrip("\r\n"), cursor)
                        pending = b""
                    continue
                if not follow or self._exit_code(run) is not None or not self._alive(run):
                    # The job has ended: drain what it wrote last, then stop.
                    rest = pending + log.read()
                    for raw in rest.splitlines(keepends=True):
                        cursor += len(raw)
                        yield LogLine(raw.decode("utf-8", "replace").rstrip("\r\n"), cursor)
                    return
                time.sleep(POLL_SECONDS)

    def status(self, run):
        self._require_run_dir(run)
        code = self._exit_code(run)
        if code is None:
            return RUNNING if self._alive(run) else FAILED
        if code == 0:
            return COMPLETED
        return CANCELED if RunFolder(run.run_dir).cancel_marker.exists() else FAILED

    def exit_code(self, run):
        return self._exit_code(run)

    def cancel(self, run):
        self._require_run_dir(run)
        if self._exit_code(run) is not None:
            return  # already ended: a late cancel changes nothing
        RunFolder(run.run_dir).cancel_marker.touch()
        if not self._alive(run):
            return
        pgid = _pid(run)
        # The supervisor forwards SIGTERM to train.py, which saves and exits as canceled.
        self._send_signal(pgid, signal.SIGTERM, group=False)
        deadline = time.monotonic() + CANCEL_GRACE_SECONDS
        while time.monotonic() < deadline and self._exit_code(run) is None:
            time.sleep(POLL_SECONDS)
        if self._exit_code(run) is None:
            self._send_signal(pgid, signal.SIGKILL)
            for pid in job_processes(run):  # ranks in sessions of their own (see job_processes)
                self._send_signal(pid, signal.SIGKILL, group=False)
            write_exit_code(run.run_dir, -signal.SIGKILL)

    def resume(self, spec, run):
        """A new supervisor and train.py in the same folder, appending to the same log file.

        A supervisor killed alone (not with its process group) leaves train.py running, unseen by
        status(): a second job on the same checkpoints would corrupt the run, so that is refused.
        A killed job may have left half a line at the end of the log: it is closed with a newline,
        so the new attempt's first line is not glued to it and lost to the event parser.
        """
        self._require_run_dir(run)
        leftovers = job_processes(run)
        if leftovers:
            raise UsageError(f"the earlier job of run {run.run_id} still runs without its supervisor "
                            f"(pid {', '.join(map(str, leftovers))}): stop it (kill -- -{_pid(run)}), then resume")
        folder = RunFolder(run.run_dir)
        for marker in (folder.exit_code_path, folder.cancel_marker):
            marker.unlink(missing_ok=True)
        if spec.log_path.is_file() and spec.log_path.stat().st_size:
            with open(spec.log_path, "rb+") as log:
                log.seek(-1, os.SEEK_END)
                if log.read(1) != b"\n":
                    log.write(b"\n")
        return self.submit(spec)

    def download(self, run, dest):
        """Outputs are written in place by the job: nothing to fetch."""

    @staticmethod
    def _require_run_dir(run):
        if not run.run_dir.is_dir():
            raise UsageError(f"the folder of run {run.run_id} is missing: {run.run_dir}")

    @staticmethod
    def _exit_code(run):
        try:
            return int(RunFolder(run.run_dir).exit_code_path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    @staticmethod
    def _alive(run):
        """Whether the run's supervisor still runs: not gone, not a zombie, not a reused pid."""
        pid = _pid(run)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        started = run.remote_id.partition(":")[2]
        stat = _proc_stat(pid)
        if stat is None:  # no /proc: trust the pid
            return True
        return stat[0] != "Z" and (not started or stat[19] == started)

    @staticmethod
    def _send_signal(pgid, sig, group=True):
        try:
            (os.killpg if group else os.kill)(pgid, sig)
        except ProcessLookupError:
            pass


def _pid(run):
    return int(run.remote_id.partition(":")[0])


def _proc_stat(pid):
    """Fields of /proc/PID/stat after the command name (state first), or None without /proc."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()
    except OSError:
        return None


def job_processes(run):
    """Live processes (not zombies) of the run's job, whatever their process group: every one
    names the run folder on its command line (the supervisor, the launcher, train.py's ranks),
    and that absolute path, with the run id in it, names one run only.

    Why not the supervisor's process group: torch's elastic launcher (several processes) starts
    each rank in a session of its own, out of the group's reach."""
    found = []
    marker = str(run.run_dir.resolve()).encode()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        stat = _proc_stat(int(entry))
        if stat is None or stat[0] == "Z":
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if marker in cmdline.read():
                    found.append(int(entry))
        except OSError:  # ended meanwhile
            continue
    return found


def _start_time(pid):
    """When the process started (clock ticks since boot): with the pid, it names one process."""
    stat = _proc_stat(pid)
    return stat[19] if stat else None
