"""End to end on the local backend: `orchestrate train`, then predict, evaluate, logs, cancel.

Real processes all the way: the CLI in a subprocess, train.py detached in its own session,
ONNX Runtime for prediction.
"""
import json
import os
import signal
import subprocess
import time

import onnx
import pytest

from conftest import ORCHESTRATE, default_sigint
from imagegen import make_dataset
from orchestrator.events import parse_line
from remote_scripts import imaging

FAST = ["--backend", "local", "--arch", "resnet18", "--weights", "none", "--image-size", "32",
        "--batch-size", "16", "--workers", "0"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real training run shared by the tests of this module (its own ledger and runs dir)."""
    home = tmp_path_factory.mktemp("home")
    env = {"XDG_STATE_HOME": str(home / "state"), "XDG_CONFIG_HOME": str(home / "config")}
    data = make_dataset(home / "data", per_class=12, corrupt=1)
    from conftest import run_cli

    result = run_cli("train", data, *FAST, "--mode", "full", "--epochs", "2", "--runs-dir", home / "runs", "--json",
                     env=env)
    assert result.returncode == 0, result.stderr
    return {"env": env, "data": data, "home": home, "result": json.loads(result.stdout)}


def test_train_json_reports_the_run_and_its_outputs(trained):
    out = trained["result"]
    assert out["status"] == "completed" and out["backend"] == "local"
    assert set(out["outputs"]) == {"model.onnx", "labels.json", "metrics.json", "history.jsonl", "predictions.csv"}
    assert 0 <= out["metrics"]["accuracy"] <= 1
    assert len(open(out["outputs"]["history.jsonl"]).read().splitlines()) == 2


def test_model_is_self_describing(trained):
    model = onnx.load(trained["result"]["outputs"]["model.onnx"])
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta[imaging.LABELS_KEY]) == ["blue", "green", "red"]
    spec = json.loads(meta[imaging.PREPROCESS_KEY])
    assert spec["size"] == [32, 32] and spec["channel_order"] == "RGB"
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param, "the batch axis must be dynamic"


def test_corrupt_image_was_skipped_and_listed(trained):
    metrics = json.load(open(trained["result"]["outputs"]["metrics.json"]))
    assert len(metrics["skipped"]) == 1 and "corrupt" in metrics["skipped"][0]["path"]


def test_predict_by_run_id_with_json_and_a_bad_image(trained, cli, tmp_path):
    run_id = trained["result"]["run_id"]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    good = sorted((trained["data"] / "red").glob("*.png"))[0]
    result = cli("predict", run_id[:12], good, bad, "--top-k", "2", "--json", env=trained["env"])
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout)
    assert first["label"] in ("blue", "green", "red") and len(first["top_k"]) == 2
    assert first["top_k"][0]["score"] >= first["top_k"][1]["score"]
    assert "error" in second


def test_evaluate_matches_the_job_metrics_format(trained, cli):
    result = cli("evaluate", trained["result"]["outputs"]["model.onnx"], trained["data"], "--json",
                 env=trained["env"])
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["num_samples"] == 35 and len(metrics["skipped"]) == 1
    job_metrics = json.load(open(trained["result"]["outputs"]["metrics.json"]))
    assert set(job_metrics) >= set(metrics)


def test_runs_list_show_and_logs_rerender_each_epoch_once(trained, cli):
    env = trained["env"]
    run_id = trained["result"]["run_id"]
    listed = json.loads(cli("runs", "list", "--json", env=env).stdout)
    assert [r["run_id"] for r in listed] == [run_id] and listed[0]["status"] == "completed"
    shown = json.loads(cli("runs", "show", run_id, "--json", env=env).stdout)
    assert shown["test_metrics"]["accuracy"] == trained["result"]["metrics"]["accuracy"]
    logs = cli("logs", run_id, env=env)
    assert logs.returncode == 0, logs.stderr
    assert logs.stderr.count("epoch 1/2") == 1 and logs.stderr.count("epoch 2/2") == 1
    assert cli("status", run_id, env=env).stdout.strip() == "completed"


def wait_for_event(log, type_, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            for line in log.read_text().splitlines():
                event = parse_line(line)
                if event and event["type"] == type_:
                    return event
        time.sleep(0.3)
    raise AssertionError(f"no {type_} event within {timeout}s:\n{log.read_text() if log.exists() else ''}")


def test_detach_reattach_and_cancel(cli, tmp_path):
    data = make_dataset(tmp_path / "data", per_class=12)
    started = cli("train", data, *FAST, "--mode", "full", "--epochs", "200", "--patience", "200",
                  "--runs-dir", tmp_path / "runs", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    log = tmp_path / "runs" / run_id / "logs" / "train.log"
    wait_for_event(log, "epoch_end")
    assert cli("status", run_id).stdout.strip() == "running"
    snapshot = cli("logs", run_id, "--no-follow", timeout=30)  # returns at once, the job goes on
    assert snapshot.returncode == 0 and "epoch 1/200" in snapshot.stderr and "is running" in snapshot.stderr
    assert json.loads(cli("runs", "show", run_id, "--json").stdout)["status"] == "running"
    # A follower interrupted with Ctrl-C detaches (exit 130, how to re-attach) and the job goes on.
    # The Ctrl-C comes once it follows (it has shown the first epoch), not after a guessed time.
    follower_err = tmp_path / "follower.err"
    with open(follower_err, "wb") as err_file:
        follower = subprocess.Popen([str(ORCHESTRATE), "logs", run_id], stdout=subprocess.DEVNULL, stderr=err_file,
                                    preexec_fn=default_sigint)
        try:
            deadline = time.monotonic() + 120
            while "epoch 1/200" not in follower_err.read_text():
                assert follower.poll() is None and time.monotonic() < deadline, follower_err.read_text()
                time.sleep(0.1)
            follower.send_signal(signal.SIGINT)
            follower.wait(timeout=30)
        finally:
            follower.kill()
    err = follower_err.read_text()
    assert follower.returncode == 130 and f"orchestrate logs {run_id}" in err, err
    assert err.count("epoch 1/200") == 1
    assert cli("status", run_id).stdout.strip() == "running"
    canceled = cli("cancel", run_id)
    assert canceled.returncode == 0 and "canceled" in canceled.stdout
    assert cli("status", run_id).stdout.strip() == "canceled"
    ended = [parse_line(l) for l in log.read_text().splitlines()]
    assert [e["status"] for e in ended if e and e["type"] == "run_end"] == ["canceled"]
    # Re-rendering a canceled run shows its epochs and exits 1 (the job did not complete).
    logs = cli("logs", run_id)
    assert logs.returncode == 1 and "canceled" in logs.stderr


def test_a_late_cancel_or_a_moved_folder_leaves_the_completed_record_alone(trained, cli):
    env, run_id = trained["env"], trained["result"]["run_id"]
    late = cli("cancel", run_id, env=env)
    assert late.returncode == 0 and "already ended (completed)" in late.stdout
    run_dir = trained["home"] / "runs" / run_id
    moved = run_dir.with_name("moved-away")
    run_dir.rename(moved)
    try:
        assert cli("status", run_id, env=env).stdout.strip() == "completed"  # the ledger's record stands
        result = cli("logs", run_id, env=env)
        assert result.returncode == 2 and "folder of run" in result.stderr
    finally:
        moved.rename(run_dir)
    shown = json.loads(cli("runs", "show", run_id, "--json", env=env).stdout)
    assert shown["status"] == "completed" and shown["metrics"]["accuracy"] == trained["result"]["metrics"]["accuracy"]


def test_a_job_killed_with_its_supervisor_ends_the_follow_as_failed(cli, tmp_path):
    data = make_dataset(tmp_path / "data", per_class=12)
    started = cli("train", data, *FAST, "--mode", "full", "--epochs", "200", "--patience", "200",
                  "--runs-dir", tmp_path / "runs", "--detach", "--json")
    run_id = json.loads(started.stdout)["run_id"]
    wait_for_event(tmp_path / "runs" / run_id / "logs" / "train.log", "epoch_end")
    pgid = int(json.loads(cli("runs", "show", run_id, "--json").stdout)["remote_id"].split(":")[0])
    os.killpg(pgid, signal.SIGKILL)  # what the OOM killer or a reboot does: no exit code is written
    logs = cli("logs", run_id, timeout=60)
    assert logs.returncode == 1 and "stopped without reporting why" in logs.stderr
    assert cli("status", run_id).stdout.strip() == "failed"
