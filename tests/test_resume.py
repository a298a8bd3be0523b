"""`orchestrate train --resume RUN`: a killed, canceled or stopped run continues in its own folder.

Real processes all the way: the CLI in a subprocess, train.py under the local backend's supervisor
(killed with SIGKILL of its whole process group, as a crash or a reboot does: no exit code is
written), and a real dockerd whose container is stopped and replaced by a new one. Every wait has
a deadline and every CLI call a timeout, so a hang fails the test instead of blocking the suite.
"""
import json
import os
import signal
import time
from collections import Counter

import pytest

from conftest import run_cli
from imagegen import make_dataset
from orchestrator.backends.base import COMPLETED, FAILED, RunRef
from orchestrator.backends.docker import EARLIER_LOG, RUN_LABEL, DockerBackend
from orchestrator.backends.local import LocalBackend, job_processes
from orchestrator.events import parse_line
from orchestrator.ledger import Ledger

pytestmark = pytest.mark.slow

EPOCHS = 2  # killed, canceled or stopped in epoch 2: the resumed attempt finishes it
# 15 steps an epoch (30 training images, batch 2), so that a kill or a SIGTERM sent once epoch 1's
# checkpoint is seen, or once epoch 2 has begun, lands between two steps of epoch 2
JOB = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--mode", "full", "--batch-size", "2",
       "--epochs", str(EPOCHS), "--patience", str(EPOCHS)]
CLI_TIMEOUT = 300


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A ledger, an image cache and a dataset of this module's own, passed to every CLI call."""
    root = tmp_path_factory.mktemp("resume")
    env = {"XDG_STATE_HOME": str(root / "state"), "XDG_CONFIG_HOME": str(root / "config"),
           "XDG_CACHE_HOME": str(root / "cache")}
    return {"root": root, "env": env, "data": make_dataset(root / "data", per_class=12, size=32),
            "ledger": Ledger(root / "state" / "orchestrate" / "ledger.db")}


def cli(home, *args):
    return run_cli(*args, env=home["env"], timeout=CLI_TIMEOUT)


def start_detached(home, *args):
    """A new run of JOB with `args` (the backend's), started in the background; its id."""
    result = cli(home, "train", home["data"], *args, *JOB, "--runs-dir", home["root"] / "runs",
                 "--detach", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["run_id"]


def log_events(log_text):
    return [event for event in map(parse_line, log_text.splitlines()) if event]


def wait_for_event(read_log, predicate, what, timeout=240):
    """Poll the log until one of its events satisfies `predicate`."""
    deadline = time.monotonic() + timeout
    while not any(predicate(event) for event in log_events(read_log())):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def checkpoint_of_epoch(epoch):
    return lambda event: event["type"] == "checkpoint" and event["epoch"] == epoch and not event["partial"]


def epochs_ended(log_text):
    return Counter(event["epoch"] for event in log_events(log_text) if event["type"] == "epoch_end")


def history_epochs(run_dir):
    return [json.loads(line)["epoch"] for line in (run_dir / "outputs" / "history.jsonl").read_text().splitlines()]


def read_local_log(home, run_id):
    path = home["root"] / "runs" / run_id / "logs" / "train.log"
    return lambda: path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def crashed_and_resumed(home):
    """A local run killed with its whole process group after epoch 1's checkpoint, then resumed.

    Returns (run id, run folder, the resume command's result, a resume refused while it ran).
    """
    run_id = start_detached(home, "--backend", "local")
    run_dir = home["root"] / "runs" / run_id
    while_running = cli(home, "train", "--resume", run_id)
    wait_for_event(read_local_log(home, run_id), checkpoint_of_epoch(1), "epoch 1's checkpoint")
    record = home["ledger"].get(run_id)
    group = int(record.remote_id.partition(":")[0])  # the supervisor leads its own process group
    os.killpg(group, signal.SIGKILL)
    run = RunRef(run_id, "local", run_dir, record.remote_id)
    deadline = time.monotonic() + 30
    while LocalBackend().status(run) != FAILED or job_processes(run):  # SIGKILL is delivered, then processed
        assert time.monotonic() < deadline, "the killed run still looks alive"
        time.sleep(0.1)
    assert not (run_dir / "exit_code").exists()  # nobody was left to write it
    resumed = cli(home, "train", "--resume", run_id[:-2], "--json")  # a unique prefix, like every RUN
    return run_id, run_dir, resumed, while_running


def test_a_running_run_is_refused_in_one_line(crashed_and_resumed):
    *_, while_running = crashed_and_resumed
    assert while_running.returncode == 2
    assert while_running.stderr.strip().count("\n") == 0 and "still running" in while_running.stderr


def test_a_crashed_run_completes_in_its_own_folder_repeating_at_most_one_epoch(crashed_and_resumed):
    run_id, run_dir, resumed, _ = crashed_and_resumed
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["status"] == COMPLETED and result["run_id"] == run_id and result["run_dir"] == str(run_dir)
    assert set(result["outputs"]) == {"model.onnx", "labels.json", "metrics.json", "history.jsonl", "predictions.csv"}
    assert history_epochs(run_dir) == list(range(1, EPOCHS + 1))
    ended = epochs_ended((run_dir / "logs" / "train.log").read_text())
    assert set(ended) == set(range(1, EPOCHS + 1))
    assert sum(count - 1 for count in ended.values()) <= 1
    starts = [e for e in log_events((run_dir / "logs" / "train.log").read_text()) if e["type"] == "run_start"]
    assert [e["resumed_from_epoch"] for e in starts] == [None, 1]


def test_the_ledger_holds_one_completed_run_of_two_attempts(crashed_and_resumed, home):
    run_id, *_ = crashed_and_resumed
    records = [r for r in home["ledger"].list() if r.run_id == run_id]
    assert len(records) == 1
    assert (records[0].status, records[0].exit_code, records[0].attempts) == (COMPLETED, 0, 2)


def test_logs_show_every_epoch_once_across_attempts(crashed_and_resumed, home):
    run_id, *_ = crashed_and_resumed
    shown = cli(home, "logs", run_id, "--no-follow")
    assert shown.returncode == 0, shown.stderr
    for epoch in range(1, EPOCHS + 1):
        assert shown.stderr.count(f"epoch {epoch}/{EPOCHS}") == 1, shown.stderr
    assert "attempt 2" in shown.stderr and "resumed after epoch 1" in shown.stderr
    assert shown.stderr.count("job completed") == 1


def test_a_completed_run_is_refused_in_one_line(crashed_and_resumed, home):
    run_id, *_ = crashed_and_resumed
    refused = cli(home, "train", "--resume", run_id)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "has completed" in refused.stderr


def test_resume_takes_no_data_nor_other_settings(crashed_and_resumed, home):
    run_id, *_ = crashed_and_resumed
    refused = cli(home, "train", home["data"], "--resume", run_id, "--epochs", "5")
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"error: --resume continues run {run_id} with its recorded data and " \
                                     "settings: drop DATA, --epochs"


def test_a_canceled_run_resumes_mid_epoch(home):
    # the cancel's SIGTERM lands between two steps of epoch 2, where train.py saves its position
    run_id = start_detached(home, "--backend", "local")
    run_dir = home["root"] / "runs" / run_id
    wait_for_event(read_local_log(home, run_id),
                   lambda e: e["type"] == "progress" and e.get("phase") == "train" and e.get("epoch") == 2,
                   "a training step of epoch 2")
    canceled = cli(home, "cancel", run_id)
    assert canceled.returncode == 0 and canceled.stdout.strip().endswith("canceled"), canceled.stderr
    resumed = cli(home, "train", "--resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    log = (run_dir / "logs" / "train.log").read_text()
    assert [e["status"] for e in log_events(log) if e["type"] == "run_end"] == ["canceled", "completed"]
    assert history_epochs(run_dir) == list(range(1, EPOCHS + 1))
    assert sum(count - 1 for count in epochs_ended(log).values()) == 0
    assert any(e["type"] == "checkpoint" and e["partial"] for e in log_events(log))
    assert "resuming from" in log and "in epoch 2 at step" in log
    assert not (run_dir / "cancel_requested").exists()
    record = home["ledger"].get(run_id)
    assert (record.status, record.attempts) == (COMPLETED, 2)
    assert "job canceled" in resumed.stderr and "attempt 2" in resumed.stderr


def test_an_azure_run_is_refused_in_one_line_without_a_cloud_call(tmp_path, cli):
    from orchestrator.ledger import RunRecord

    Ledger().add(RunRecord(run_id="cloud-20260101-000000-abcd", name="cloud", backend="azure", status="failed",
                           dataset="azureml://datastores/x", run_dir=str(tmp_path / "cloud"), remote_id="job-1"))
    refused = cli("train", "--resume", "cloud-2026")
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith("error: --resume works for local and docker runs, not azure ones")


def test_a_ledger_from_before_resume_gains_the_attempts_column(tmp_path):
    """Users' existing ledgers have no attempts column: opening one adds it, older rows count 1."""
    import sqlite3

    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, name TEXT NOT NULL, backend TEXT NOT NULL, "
                   "remote_id TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, dataset TEXT NOT NULL, "
                   "params TEXT NOT NULL DEFAULT '{}', run_dir TEXT NOT NULL, created_at REAL NOT NULL, "
                   "updated_at REAL NOT NULL, exit_code INTEGER, metrics TEXT NOT NULL DEFAULT '{}')")
        db.execute("INSERT INTO runs (run_id, name, backend, status, dataset, run_dir, created_at, updated_at) "
                   "VALUES ('old-run', 'old', 'local', 'failed', '/data', '/runs/old-run', 0, 0)")
    ledger = Ledger(path)
    assert ledger.get("old-run").attempts == 1
    ledger.update("old-run", attempts=2)
    assert Ledger(path).get("old").attempts == 2


def test_a_stopped_container_resumes_in_a_new_container_keeping_its_log_once(home, docker_client, training_image,
                                                                           offline_base):
    run_id = start_detached(home, "--backend", "docker", "--base-image", offline_base, "--gpus", "none")
    run_dir = home["root"] / "runs" / run_id
    first = docker_client.containers.get(home["ledger"].get(run_id).remote_id)

    def container_log():
        return first.logs().decode(errors="replace")

    wait_for_event(container_log, checkpoint_of_epoch(1), "epoch 1's checkpoint in the container")
    first.stop(timeout=10)  # docker stop: SIGTERM, train.py saves and exits (not a cancel: failed)
    earlier_lines = container_log().splitlines()

    resumed = cli(home, "train", "--resume", run_id, "--detach", "--json")
    assert resumed.returncode == 0, resumed.stderr
    record = home["ledger"].get(run_id)
    assert record.remote_id != first.id and record.attempts == 2
    assert docker_client.containers.get(record.remote_id).name == f"orchestrate-{run_id}"
    assert (run_dir / "logs" / EARLIER_LOG).exists() and not (run_dir / "container.json").exists()

    backend, run = DockerBackend(), RunRef(run_id, "docker", run_dir, record.remote_id)
    followed = list(backend.log_lines(run, 0, follow=True))  # live: earlier attempt, then the new container
    assert backend.status(run) == COMPLETED
    persisted = (run_dir / "logs" / "train.log").read_text().splitlines()
    assert [line.text for line in followed] == persisted
    assert [line.cursor for line in followed] == list(range(1, len(persisted) + 1))
    assert persisted[:len(earlier_lines)] == earlier_lines  # the earlier attempt's lines, once, first
    ends = [e["status"] for e in log_events("\n".join(persisted)) if e["type"] == "run_end"]
    assert ends == ["canceled", "completed"]
    assert history_epochs(run_dir) == list(range(1, EPOCHS + 1))
    assert not (run_dir / "logs" / EARLIER_LOG).exists()
    assert docker_client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"}) == []
    shown = cli(home, "logs", run_id, "--no-follow")
    assert shown.returncode == 0, shown.stderr
    assert all(shown.stderr.count(f"epoch {epoch}/{EPOCHS}") == 1 for epoch in range(1, EPOCHS + 1)), shown.stderr
