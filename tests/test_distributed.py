"""All the processes of a machine: DDP through the local and Docker backends, on CPUs with gloo.

Real processes all the way: `orchestrate train --nproc 2` starts remote_scripts/launch.py, which
runs train.py in two processes under torch's elastic agent. Failures are injected from the test
side only, by a sitecustomize.py on PYTHONPATH that patches torch or numpy in the process whose
RANK is 1: the product has no hook for them.
"""
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from imagegen import make_dataset
from orchestrator.backends.base import COMPLETED, JobSpec
from orchestrator.backends.docker import DockerBackend
from orchestrator.events import parse_line
from remote_scripts import folder_dataset
from remote_scripts.options import BY_DEST
from remote_scripts.runtime import Dist
from remote_scripts.lifecycle import UsageError
from remote_scripts.schedule import epoch_batches

JOB = ["--mode", "full", "--arch", "resnet18", "--weights", "none", "--image-size", "32", "--workers", "1",
       "--val-fraction", "0.2", "--test-fraction", "0.25"]
SECONDS_TO_END_EVERY_RANK = 30

INJECT_MID_EPOCH = """
import os, time
if os.environ.get("RANK") == "1":
    import torch
    calls, step = [], torch.optim.AdamW.step
    def failing_step(self, *args, **kwargs):
        calls.append(None)
        if len(calls) == 2:  # the second training step of rank 1, while rank 0 trains on
            open(os.environ["INJECTED_AT"], "w").write(repr(time.time()))
            raise OSError("injected disk failure")
        return step(self, *args, **kwargs)
    torch.optim.AdamW.step = failing_step
"""

INJECT_IN_LOAD_DATA = """
import os, time
if os.environ.get("RANK") == "1":
    import numpy
    load = numpy.load
    def failing_load(*args, **kwargs):
        if kwargs.get("mmap_mode"):  # rank 1 maps the image cache its local rank 0 has filled
            open(os.environ["INJECTED_AT"], "w").write(repr(time.time()))
            raise OSError("injected read failure")
        return load(*args, **kwargs)
    numpy.load = failing_load
"""

# Rank 0 is then inside init_process_group, blocked in C++ where no signal handler runs: only
# Dist's watcher thread can end it with rank 1's message.
INJECT_AT_START = """
import os, time
if os.environ.get("RANK") == "1":
    import argparse
    def failing_parse_args(self, *args, **kwargs):
        open(os.environ["INJECTED_AT"], "w").write(repr(time.time()))
        raise OSError("injected start failure")
    argparse.ArgumentParser.parse_args = failing_parse_args
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ddp") / "images", per_class=12)


def log_events(run_dir):
    return [e for e in map(parse_line, (Path(run_dir) / "logs" / "train.log").read_text().splitlines()) if e]


def of_type(events, type_):
    return [e for e in events if e["type"] == type_]


def job_processes(run_dir):
    """Live processes that name the run folder on their command line: the launcher and its workers."""
    marker, found = str(Path(run_dir).resolve()).encode(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rpartition(")")[2].split()[0] == "Z":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if marker in cmdline.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_two_processes_on_the_local_backend_train_one_model_that_evaluates_as_reported(data, cli, tmp_path):
    result = cli("train", data, "--backend", "local", "--nproc", "2", *JOB, "--epochs", "2", "--batch-size", "8",
                 "--runs-dir", tmp_path / "runs", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == COMPLETED
    events = log_events(summary["run_dir"])
    assert len(of_type(events, "run_start")) == 1  # rank 0 alone reports
    assert of_type(events, "run_start")[0]["config"]["world_size"] == 2
    assert [e["epoch"] for e in of_type(events, "epoch_end")] == [1, 2]

    # The test split, as the job splits it, scored by `orchestrate evaluate` with the exported model.
    scan = folder_dataset.scan(str(data))
    _, _, test = folder_dataset.stratified_split(scan.samples, scan.classes, 0.2, 0.25, BY_DEST["seed"].default)
    holdout = tmp_path / "holdout"
    for relpath, _ in test:
        (holdout / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / relpath, holdout / relpath)
    evaluated = cli("evaluate", summary["run_id"], holdout, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    ours, theirs = json.loads(Path(summary["outputs"]["metrics.json"]).read_text()), json.loads(evaluated.stdout)
    assert ours["evaluated_on"] == "test" and ours["split"]["test"] == len(test)
    assert ours["confusion_matrix"] == theirs["confusion_matrix"]
    assert ours["accuracy"] == pytest.approx(theirs["accuracy"])
    assert ours["log_loss"] == pytest.approx(theirs["log_loss"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("inject, message", [(INJECT_MID_EPOCH, "OSError: injected disk failure"),
                                             (INJECT_IN_LOAD_DATA, "OSError: injected read failure"),
                                             (INJECT_AT_START, "OSError: injected start failure")],
                         ids=["mid-epoch", "in-load-data", "at-start"])
def test_a_failure_on_rank_1_ends_both_ranks_within_seconds_with_its_message(data, cli, tmp_path, inject, message):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(inject)
    injected_at = tmp_path / "injected_at"
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "INJECTED_AT": str(injected_at)}
    result = cli("train", data, "--backend", "local", "--nproc", "2", *JOB, "--epochs", "3", "--batch-size", "4",
                 "--runs-dir", tmp_path / "runs", "--json", env=env)
    assert result.returncode == 1, result.stderr
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    ended_after = (run_dir / "exit_code").stat().st_mtime - float(injected_at.read_text())
    assert ended_after < SECONDS_TO_END_EVERY_RANK, f"the job ended {ended_after:.1f}s after the failure"
    deadline = time.monotonic() + 10  # the launcher has exited; a rank stopped by its watcher may take a moment
    while job_processes(run_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job_processes(run_dir) == []  # no rank outlives the job
    [run_end] = of_type(log_events(run_dir), "run_end")
    assert (run_end["status"], run_end["exit_code"], run_end["error"]) == ("failed", 1, f"rank 1: {message}")
    assert f"rank 1: {message}" in result.stderr  # what `orchestrate train` says
    assert int((run_dir / "exit_code").read_text()) == 1


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [2, 3, 4, 8])
def test_no_process_trains_on_a_batch_of_one_and_all_take_as_many_steps(world, batch_size):
    for n in range(1, 30):
        train = np.arange(100, 100 + n)
        ranks = [Dist(world, rank) for rank in range(world)]
        if n <= world:  # a share of one image would be a batch of one
            with pytest.raises(UsageError, match="BatchNorm needs at least 2 per process"):
                epoch_batches(train, 0, 1, ranks[0], batch_size, drop_single=True)
            continue
        shares = [epoch_batches(train, 0, 1, dist, batch_size, drop_single=True) for dist in ranks]
        assert len({tuple(map(len, share)) for share in shares}) == 1, "every process takes the same steps"
        assert all(len(batch) >= 2 for share in shares for batch in share)
        seen = {int(i) for share in shares for batch in share for i in batch}
        assert len(seen) >= n - world  # at most one left-out image per process and epoch


@pytest.fixture
def docker_job(tmp_path, docker_client, offline_base, training_image, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # the mounted image cache
    data = make_dataset(tmp_path / "data", per_class=12)
    run_id = f"ddp-{uuid.uuid4().hex[:8]}"
    return JobSpec(run_id=run_id, data=data, run_dir=tmp_path / "runs" / run_id,
                   train_args=[*JOB, "--epochs", "1", "--batch-size", "8"],
                   backend_options={"base_image": offline_base, "gpus": "none", "nproc": 2})


@pytest.mark.slow
def test_two_processes_in_a_docker_container_on_debian_torch_1_13(docker_job):
    backend = DockerBackend()
    backend.prepare(docker_job)
    run = backend.submit(docker_job)
    started = time.monotonic()
    events = [e for e in (parse_line(line.text) for line in backend.log_lines(run)) if e]
    assert time.monotonic() - started < 300
    assert backend.status(run) == COMPLETED, [e for e in events if e["type"] == "run_end"]
    assert of_type(events, "run_start")[0]["config"]["world_size"] == 2
    assert of_type(events, "run_end")[0]["status"] == COMPLETED
