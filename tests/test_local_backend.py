"""The local backend's view of a run from its folder and its supervisor process."""
import os

from orchestrator.backends.base import COMPLETED, FAILED, RUNNING, RunRef
from orchestrator.backends.local import LocalBackend, _start_time
from orchestrator.backends.local_job import write_exit_code


def run_in(tmp_path, remote_id):
    (tmp_path / "logs").mkdir(exist_ok=True)
    (tmp_path / "logs" / "train.log").write_text("one\ntwo\n")
    return RunRef("r1", "local", tmp_path, remote_id)


def test_a_live_supervisor_means_running_and_a_reused_pid_does_not(tmp_path):
    me = os.getpid()
    assert LocalBackend().status(run_in(tmp_path, f"{me}:{_start_time(me)}")) == RUNNING
    assert LocalBackend().status(run_in(tmp_path, f"{me}:1")) == FAILED  # same pid, another process


def test_log_lines_resume_from_a_byte_cursor_and_stop_once_the_job_ended(tmp_path):
    run = run_in(tmp_path, f"{os.getpid()}:{_start_time(os.getpid())}")
    write_exit_code(tmp_path, 0)
    lines = list(LocalBackend().log_lines(run))
    assert [line.text for line in lines] == ["one", "two"]
    assert [line.text for line in LocalBackend().log_lines(run, cursor=lines[0].cursor)] == ["two"]
    assert LocalBackend().status(run) == COMPLETED
