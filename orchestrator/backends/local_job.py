"""The supervisor of a local job: `python -m orchestrator.backends.local_job RUN_DIR -- CMD...`.

The local backend starts this module in a session of its own, so Ctrl-C or a crash of the
client never reaches the job (the same as a container or a cloud job). It runs the training
command, forwards SIGTERM to it, and records the exit code in RUN_DIR/exit_code: that file is
how any later client process learns that the run has ended and how.
"""
import signal
import subprocess
import sys

from remote_scripts.atomic import write_atomically

from ..run_folder import RunFolder



def write_exit_code(run_dir, code):
    """Atomically record the job's exit code (readers never see a half-written file)."""
    write_atomically(RunFolder(run_dir).exit_code_path, f"{code}\n")


def main(argv):
    run_dir, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit("usage: python -m orchestrator.backends.local_job RUN_DIR -- COMMAND...")
    child = subprocess.Popen(command)
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    write_exit_code(run_dir, child.wait())


if __name__ == "__main__":
    main(sys.argv[1:])
